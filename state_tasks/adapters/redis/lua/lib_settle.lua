-- Library: settling operation records (see state_tasks.adapters.records).
-- A whole record is a hash: 'o' old text, 'n' new text, 'v' version; a batch's 'c' count
-- and 'o<i>', 'n<i>', 'v<i>' for its operation i. Settled, it is a string marker: 'v' and
-- the versions of its sets and updates as runs ('v12', 'v12-15,20'), or '1' for none.

local function settled_marker(record)
  local count = redis.call('HGET', record, 'c')
  if not count then
    if redis.call('HEXISTS', record, 'n') == 0 then return '1' end
    local version = redis.call('HGET', record, 'v')
    if not version or tonumber(version) <= 0 then return '1' end
    return 'v' .. string.format('%d', tonumber(version))
  end
  local written = {}
  for _, field in ipairs(redis.call('HKEYS', record)) do written[field] = true end
  local runs, first, last = {}, nil, nil
  local function close()
    if not first then return end
    if first == last then runs[#runs + 1] = string.format('%d', first)
    else runs[#runs + 1] = string.format('%d-%d', first, last) end
  end
  for i = 1, tonumber(count) do
    if written['n' .. i] then
      local v = tonumber(redis.call('HGET', record, 'v' .. i) or '0')
      if last and v == last + 1 then last = v else
        close()
        first, last = v, v
      end
    end
  end
  close()
  if #runs == 0 then return '1' end
  return 'v' .. table.concat(runs, ',')
end

-- Shrinks a whole record to its marker, keeping its time to live; 1 if it did.
local function settle(record)
  if redis.call('TYPE', record).ok == 'hash' then
    local ttl = redis.call('PTTL', record)
    if ttl > 0 then
      redis.call('SET', record, settled_marker(record), 'PX', ttl)
      return 1
    end
  end
  return 0
end
