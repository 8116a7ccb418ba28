-- The expiry sweep's look at one bucket. KEYS: the scopes with keys due. ARGV: how many
-- scopes at most. Returns {the server's time in ms, the scopes whose earliest due time has
-- come, the next due time or false}.
local due_scopes = KEYS[1]
local limit = tonumber(ARGV[1])
--!include lib_clock

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', due_scopes, '-inf', now, 'LIMIT', 0, limit)
local first = redis.call('ZRANGE', due_scopes, 0, 0, 'WITHSCORES')
return {now, due, first[2] or false}
