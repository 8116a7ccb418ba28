-- state::list without paging. KEYS: lib_read_keys. No ARGV. Returns the scope's live
-- texts (HVALS, without the expired ones).
--!include lib_read_keys
--!include lib_clock

local expired = redis.call('ZRANGEBYSCORE', due_index, '-inf', now_ms())
if #expired == 0 then return redis.call('HVALS', scope_hash) end
local gone = {}
for _, key in ipairs(expired) do gone[key] = true end
local all, texts = redis.call('HGETALL', scope_hash), {}
for i = 1, #all, 2 do
  if not gone[all[i]] then texts[#texts + 1] = all[i + 1] end
end
return texts
