-- state::get_many. KEYS: lib_read_keys. ARGV: the keys. Returns their texts (false where
-- absent or expired), in their order.
--!include lib_read_keys
--!include lib_clock
--!include lib_read

local texts = {}
for first = 1, #ARGV, 1000 do  -- unpack takes at most ~8,000 values: chunks of 1,000
  local part = redis.call('HMGET', scope_hash, unpack(ARGV, first, math.min(first + 999, #ARGV)))
  for _, text in ipairs(part) do texts[#texts + 1] = text end
end
if redis.call('EXISTS', due_index) == 1 then
  local now = now_ms()
  for i, key in ipairs(ARGV) do
    if texts[i] and not live(key, now) then texts[i] = false end
  end
end
return texts
