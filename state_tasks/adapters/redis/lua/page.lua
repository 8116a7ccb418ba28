-- A page of state::list. KEYS: the scope's hash, its key index, its due index. ARGV:
-- prefix ('' for every key), the key to continue after, '1' if there is one, how many keys
-- at most. Returns {keys, their JSON texts (false for a key that expired)} in key order.
-- A scope without an index (written by an older release) gets its whole index first.
local scope_hash, key_index, due_index = KEYS[1], KEYS[2], KEYS[3]
local prefix, after, has_after, limit = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
--!include lib_clock

local function chunks(list, size, each)
  for first = 1, #list, size do
    each({unpack(list, first, math.min(first + size - 1, #list))})
  end
end
if redis.call('EXISTS', key_index) == 0 and redis.call('EXISTS', scope_hash) == 1 then
  chunks(redis.call('HKEYS', scope_hash), 1000, function(keys)
    local args = {}
    for _, key in ipairs(keys) do
      args[#args + 1] = 0
      args[#args + 1] = key
    end
    redis.call('ZADD', key_index, unpack(args))
  end)
end
local low = '[' .. prefix
if has_after then low = '(' .. after end
local high = '+'
if prefix ~= '' then high = '[' .. prefix .. '\255' end
local keys = redis.call('ZRANGEBYLEX', key_index, low, high, 'LIMIT', 0, limit)
local values = {}
chunks(keys, 1000, function(part)
  for _, value in ipairs(redis.call('HMGET', scope_hash, unpack(part))) do
    values[#values + 1] = value
  end
end)
if redis.call('EXISTS', due_index) == 1 then
  local now = now_ms()
  for i, key in ipairs(keys) do
    local due = redis.call('ZSCORE', due_index, key)
    if due and tonumber(due) <= now then values[i] = false end
  end
end
return {keys, values}
