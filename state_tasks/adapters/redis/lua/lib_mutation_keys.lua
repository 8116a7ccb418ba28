-- KEYS of a script that changes a scope: named for lib_mutation; KEYS[11] onwards are
-- records to settle, which ride along so that settling costs no round trip of its own.
local scope_hash, groups, trigger_version, op_record = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local key_index, versions, due_index, due_scopes = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local pending, pending_at = KEYS[9], KEYS[10]
