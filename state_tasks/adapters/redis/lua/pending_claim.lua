-- Claims pending expiries (see lib_mutation's take_expired) handed over at least ARGV[1] ms
-- ago, oldest first, at most ARGV[2]: each is claimed again now (its age starts over, so
-- another sweeper does not take it too). KEYS: the pending expiries (hash), their claim
-- times (sorted set). Returns {the server's time in ms, then pending id, JSON text,
-- previous claim time, ... for each}. A claim time without its text (only by hand) is
-- dropped.
local pending, pending_at = KEYS[1], KEYS[2]
local age, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
--!include lib_clock

local now = now_ms()
local found = redis.call('ZRANGEBYSCORE', pending_at, '-inf', now - age,
  'WITHSCORES', 'LIMIT', 0, limit)
local out = {now}
for i = 1, #found, 2 do
  local text = redis.call('HGET', pending, found[i])
  if text then
    redis.call('ZADD', pending_at, now, found[i])
    out[#out + 1] = found[i]
    out[#out + 1] = text
    out[#out + 1] = found[i + 1]
  else
    redis.call('ZREM', pending_at, found[i])
  end
end
return out
