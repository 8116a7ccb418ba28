-- Gives back claims of pending expiries (more than a sweep's limit, on a cluster) still at
-- the claim time pending_claim set: as if never claimed. KEYS: the claim times. ARGV: that
-- claim time, then pairs of pending id and its previous claim time.
local pending_at = KEYS[1]
local claimed = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', pending_at, ARGV[i]) or '-1') == claimed then
    redis.call('ZADD', pending_at, 'XX', ARGV[i + 1], ARGV[i])
  end
end
return 0
