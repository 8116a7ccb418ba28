-- Removes a trigger. KEYS: the triggers hash, their version counter. ARGV: id.
-- Returns {1 if it existed, the new version}.
local triggers, trigger_version = KEYS[1], KEYS[2]
local removed = redis.call('HDEL', triggers, ARGV[1])
return {removed, redis.call('INCR', trigger_version)}
