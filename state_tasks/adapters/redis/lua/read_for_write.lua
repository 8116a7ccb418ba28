-- What a write that computes its values in Python (an update, a batch with updates)
-- starts from, in the order every write checks: the operation record first, then the
-- keys' texts and versions. KEYS: the scope's hash, versions and due index, the op record,
-- then records to settle (first: a repeat that comes after its record was settled is
-- answered as settled). ARGV: '' (no operation id) or '1', then the keys.
-- Returns {APPLIED, the whole record as HGETALL} or {SETTLED, marker} when the operation
-- was applied; else {FOUND, {live text or false per key}, {version per key (0: absent)},
-- the scope's version counter (as next_version starts from it)}. Changes nothing else.
local scope_hash, versions, due_index, op_record = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local has_op_id = ARGV[1] ~= ''
--!include lib_clock
if #KEYS > 4 then  -- records to settle ride along (their functions made only then)
--!include lib_settle
  for i = 5, #KEYS do settle(KEYS[i]) end
end

if has_op_id then
  local kind = redis.call('TYPE', op_record).ok
  if kind == 'hash' then return {APPLIED, redis.call('HGETALL', op_record)} end
  if kind == 'string' then return {SETTLED, redis.call('GET', op_record)} end
end
local now = now_ms()
local texts, found = {}, {}
for i = 2, #ARGV do
  local text = redis.call('HGET', scope_hash, ARGV[i])
  if text then
    local due = redis.call('ZSCORE', due_index, ARGV[i])
    if due and tonumber(due) <= now then text = false end
  end
  texts[i - 1] = text
  found[i - 1] = 0
  if text then found[i - 1] = tonumber(redis.call('HGET', versions, ARGV[i]) or '1') end
end
local counter = tonumber(redis.call('HGET', versions, '') or '0')
if counter == 0 and redis.call('EXISTS', scope_hash) == 1 then counter = 1 end
return {FOUND, texts, found, counter}
