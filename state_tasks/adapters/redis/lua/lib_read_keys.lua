-- KEYS of a read of one scope: its hash, its versions, its due index.
local scope_hash, versions, due_index = KEYS[1], KEYS[2], KEYS[3]
