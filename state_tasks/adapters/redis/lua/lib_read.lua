-- Library: reads that hide expired keys. Expects the locals scope_hash, versions and
-- due_index (KEYS[1..3] of every read script) and lib_clock.

-- (whether the key is live, its due time or nil)
local function live(key, now)
  local due = redis.call('ZSCORE', due_index, key)
  return not (due and tonumber(due) <= now), due
end
