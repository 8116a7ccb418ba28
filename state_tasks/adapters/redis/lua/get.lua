-- state::get. KEYS: lib_read_keys. ARGV: key. Returns the JSON text, or false when absent
-- or expired.
--!include lib_read_keys
local key = ARGV[1]
--!include lib_clock
--!include lib_read

local text = redis.call('HGET', scope_hash, key)
if text and not live(key, now_ms()) then return false end
return text
