-- state::batch: every operation of a batch in one step. KEYS: the mutation keys, then
-- records to settle. ARGV: scope, op ttl or '', n, then n checks (key, '1' if expected
-- absent else '0', expected text), then one write per operation, in order (kind 's', 'u'
-- or 'd', key, new text or '', if_version or '', ttl_ms or '').
-- Returns {WRITTEN, trigger version, {old text or false per operation}, {version per
-- operation}, {{key, text, version} of each key found expired}}; {MOVED_ON, {current text
-- or false per checked key}} (nothing written); {APPLIED, the record as HGETALL: 'c' count,
-- 'o<i>'/'n<i>'/'v<i>' of operation i}; {SETTLED, marker}; or {VERSION_CONFLICT, operation
-- index (from 0), expected, current version} (nothing written).
--!include lib_mutation_keys
local scope, op_ttl, checks = ARGV[1], ARGV[2], tonumber(ARGV[3])
--!include lib_clock
--!include lib_mutation

-- The scope's version counter as next_version starts from it (a scope from before
-- versions has no counter: its keys are at 1).
local function counter_base()
  local c = tonumber(redis.call('HGET', versions, '') or '0')
  if c == 0 and redis.call('EXISTS', scope_hash) == 1 then c = 1 end
  return c
end
if #KEYS > 11 then  -- records to settle ride along (their functions made only then)
--!include lib_settle
  for i = 12, #KEYS do settle(KEYS[i]) end
end

if op_ttl ~= '' then
  local kind = redis.call('TYPE', op_record).ok
  if kind == 'hash' then return {APPLIED, redis.call('HGETALL', op_record)} end
  if kind == 'string' then return {SETTLED, redis.call('GET', op_record)} end
end
local at, moved, currents = 4, false, {}
for i = 1, checks do
  local current_text = current(ARGV[at])
  currents[i] = current_text
  local absent = ARGV[at + 1] == '1'
  if (absent and current_text) or (not absent and current_text ~= ARGV[at + 2]) then
    moved = true
  end
  at = at + 3
end
if moved then return {MOVED_ON, currents} end
-- versions first, on a simulation: a conflict must leave everything untouched
local first_write = at
local simulated, expired, counter, index = {}, {}, counter_base(), 0
while at <= last_arg do
  local kind, key, if_version = ARGV[at], ARGV[at + 1], ARGV[at + 3]
  if simulated[key] == nil then
    local _, version, is_expired = current(key)
    simulated[key] = version
    if is_expired then expired[#expired + 1] = key end
  end
  if if_version ~= '' and tonumber(if_version) ~= simulated[key] then
    return {VERSION_CONFLICT, index, tonumber(if_version), simulated[key]}
  end
  if kind == 'd' then simulated[key] = 0 else
    counter = counter + 1
    simulated[key] = counter
  end
  index = index + 1
  at = at + 5
end
local gone = {}
for _, key in ipairs(expired) do gone[#gone + 1] = take_expired(key, scope) end
local recording = op_ttl ~= ''
-- the event id of operation i (from 1) of the batch: '<op id>:<index from 0>'
local function batch_event(i)
  if log_event == '' then return '' end
  return log_event .. ':' .. (i - 1)
end
local olds, new_versions, i = {}, {}, 0
at = first_write
while at <= last_arg do
  i = i + 1
  local kind, key, text, ttl = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 4]
  local old = redis.call('HGET', scope_hash, key)
  local version
  if kind == 'd' then
    version = 0
    if old then
      version = tonumber(redis.call('HGET', versions, key) or '1')
      drop(key, scope)
      log_change('d', scope, key, old, false, version, batch_event(i))
    end
  else
    version = next_version()
    put(key, text, scope, old ~= false)
    redis.call('HSET', versions, key, version)
    set_due(key, ttl, kind == 'u' and old ~= false, scope)
    log_change(old and 'u' or 'c', scope, key, old, text, version, batch_event(i))
    if recording then redis.call('HSET', op_record, 'n' .. i, text) end
  end
  if recording then
    if old then redis.call('HSET', op_record, 'o' .. i, old) end
    redis.call('HSET', op_record, 'v' .. i, version)
  end
  olds[i] = old or false
  new_versions[i] = version
  at = at + 5
end
if recording then
  redis.call('HSET', op_record, 'c', i)
  redis.call('EXPIRE', op_record, op_ttl)
end
return {WRITTEN, trigger_version_now(), olds, new_versions, gone}
