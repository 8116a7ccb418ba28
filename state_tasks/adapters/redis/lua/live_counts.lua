-- For list_groups: the live keys of scopes of one bucket. KEYS: the bucket's scopes with
-- keys due, then each scope's hash and due index. ARGV: the scopes (at most 1,000).
-- Returns one number per scope: -1 for a scope not filed as due (all its keys are live,
-- and it has at least one), else its live keys (HLEN less the keys due, not yet swept).
local due_scopes = KEYS[1]
--!include lib_clock

local now = now_ms()
local dues = redis.call('ZMSCORE', due_scopes, unpack(ARGV))
local counts = {}
for i = 1, #ARGV do
  local count = -1
  if dues[i] and tonumber(dues[i]) <= now then
    local scope_hash, due_index = KEYS[2 * i], KEYS[2 * i + 1]
    count = redis.call('HLEN', scope_hash) - redis.call('ZCOUNT', due_index, '-inf', now)
  end
  counts[i] = count
end
return counts
