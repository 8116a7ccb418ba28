-- state::set. KEYS: the mutation keys (lib_mutation_keys), then records to settle.
-- ARGV: key, JSON text, scope, if_version or '', ttl_ms or '', op ttl or ''.
-- Returns {WRITTEN, replaced text or false, trigger version, new version, expired text or
-- false, its version}; {APPLIED, recorded old text or false, trigger version, recorded
-- version}; {SETTLED, marker}; or {VERSION_CONFLICT, current version} (nothing written).
--!include lib_mutation_keys
local key, text, scope, if_version, ttl, op_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
--!include lib_clock
--!include lib_mutation
if #KEYS > 11 then  -- records to settle ride along (their functions made only then)
--!include lib_settle
  for i = 12, #KEYS do settle(KEYS[i]) end
end

local done = applied()
if done and done[1] == SETTLED then return done end
if done then return {APPLIED, done[2], trigger_version_now(), done[4]} end
local old, version, expired, had_due = current(key)
if if_version ~= '' and tonumber(if_version) ~= version then return {VERSION_CONFLICT, version} end
local gone = false
if expired then gone = take_expired(key, scope) end
local new_version = next_version()
put(key, text, scope, old ~= false)
redis.call('HSET', versions, key, new_version)
set_due(key, ttl, false, scope, had_due)
record(old, text, new_version)
log_change(old and 'u' or 'c', scope, key, old, text, new_version, log_event)
local gone_text, gone_version = expired_reply(gone)
return {WRITTEN, old, trigger_version_now(), new_version, gone_text, gone_version}
