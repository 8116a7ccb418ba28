-- state::delete. KEYS: the mutation keys (lib_mutation_keys), then records to settle.
-- ARGV: key, scope, if_version or '', op ttl or ''.
-- Returns {WRITTEN, deleted text or false, trigger version, deleted version (0: none),
-- expired text or false, its version}; {APPLIED, recorded text, trigger version, recorded
-- version}; {SETTLED, marker}; or {VERSION_CONFLICT, current version}. A scope left empty
-- leaves the groups index. A delete of an absent key under an id is recorded settled at
-- once: it has no trigger work, and its repeat must not delete a value set since.
--!include lib_mutation_keys
local key, scope, if_version, op_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
--!include lib_clock
--!include lib_mutation
if #KEYS > 11 then  -- records to settle ride along (their functions made only then)
--!include lib_settle
  for i = 12, #KEYS do settle(KEYS[i]) end
end

local done = applied()
if done and done[1] == SETTLED then return done end
if done then return {APPLIED, done[2], trigger_version_now(), done[4]} end
local old, version, expired = current(key)
if if_version ~= '' and tonumber(if_version) ~= version then return {VERSION_CONFLICT, version} end
local gone = false
if expired then gone = take_expired(key, scope) end
if old then
  drop(key, scope)
  record(old, false, version)
  log_change('d', scope, key, old, false, version, log_event)
elseif op_ttl ~= '' then
  redis.call('SET', op_record, '1', 'EX', op_ttl)
end
local gone_text, gone_version = expired_reply(gone)
return {WRITTEN, old, trigger_version_now(), version, gone_text, gone_version}
