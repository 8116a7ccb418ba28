-- The expiry sweep of one scope. KEYS: the mutation keys (trigger_version and op_record
-- unused). ARGV: scope, how many keys at most, then the change log's three. Removes the
-- keys whose due time has come, atomically (two sweepers never both get one), records each
-- as a pending expiry and in the change log, and returns them as {key, text, version, ...};
-- then files the scope under its next due time (or takes it out).
--!include lib_mutation_keys
local scope, limit, op_ttl = ARGV[1], tonumber(ARGV[2]), ''
--!include lib_clock
--!include lib_mutation

local due = redis.call('ZRANGEBYSCORE', due_index, '-inf', now(), 'LIMIT', 0, limit)
local out = {}
for _, key in ipairs(due) do
  if redis.call('HEXISTS', scope_hash, key) == 1 then
    local gone = take_expired(key, scope)
    out[#out + 1] = gone[1]
    out[#out + 1] = gone[2]
    out[#out + 1] = gone[3]
  else
    redis.call('ZREM', due_index, key)
  end
end
local first = redis.call('ZRANGE', due_index, 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('ZREM', due_scopes, scope)
else
  redis.call('ZADD', due_scopes, first[2], scope)
end
return out
