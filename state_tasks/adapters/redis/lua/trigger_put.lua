-- Stores a trigger. KEYS: the triggers hash, their version counter. ARGV: id, JSON.
-- Returns {1 if new, the new version}.
local triggers, trigger_version = KEYS[1], KEYS[2]
local added = redis.call('HSET', triggers, ARGV[1], ARGV[2])
return {added, redis.call('INCR', trigger_version)}
