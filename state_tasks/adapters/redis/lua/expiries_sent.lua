-- The events of these expiries were sent: drops them. KEYS: the pending expiries (hash),
-- their claim times. ARGV: their pending ids.
local pending, pending_at = KEYS[1], KEYS[2]
for first = 1, #ARGV, 1000 do
  local ids = {unpack(ARGV, first, math.min(first + 999, #ARGV))}
  redis.call('HDEL', pending, unpack(ids))
  redis.call('ZREM', pending_at, unpack(ids))
end
return 0
