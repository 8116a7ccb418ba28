-- state::update's write: the new text computed in Python (the shared ops), written only if
-- the key still holds what it was computed from. KEYS: the mutation keys, then records to
-- settle. ARGV: key, '1' if the key was absent else '0', expected old text, new text,
-- scope, if_version or '', ttl_ms or '' (none: a key that exists keeps its expiry), op ttl
-- or ''.
-- Returns {WRITTEN, trigger version, new version, expired text or false, its version};
-- {MOVED_ON, current text or false} (the value moved on: compute again from it);
-- {APPLIED, recorded old text or false, recorded new text, recorded version}; {SETTLED,
-- marker}; or {VERSION_CONFLICT, current version}.
--!include lib_mutation_keys
local key, was_absent, expected, text, scope = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4], ARGV[5]
local if_version, ttl, op_ttl = ARGV[6], ARGV[7], ARGV[8]
--!include lib_clock
--!include lib_mutation
if #KEYS > 11 then  -- records to settle ride along (their functions made only then)
--!include lib_settle
  for i = 12, #KEYS do settle(KEYS[i]) end
end

local done = applied()
if done and done[1] == SETTLED then return done end
if done then return {APPLIED, done[2], done[3], done[4]} end
local current_text, version, expired, had_due = current(key)
if if_version ~= '' and tonumber(if_version) ~= version then return {VERSION_CONFLICT, version} end
if (was_absent and current_text) or (not was_absent and current_text ~= expected) then
  return {MOVED_ON, current_text}
end
local gone = false
if expired then gone = take_expired(key, scope) end
local new_version = next_version()
put(key, text, scope, current_text ~= false)
redis.call('HSET', versions, key, new_version)
set_due(key, ttl, current_text ~= false, scope, had_due)
record(current_text, text, new_version)
log_change(current_text and 'u' or 'c', scope, key, current_text, text, new_version, log_event)
local gone_text, gone_version = expired_reply(gone)
return {WRITTEN, trigger_version_now(), new_version, gone_text, gone_version}
