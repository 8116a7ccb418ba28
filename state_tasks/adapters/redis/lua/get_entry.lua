-- state::get with_version. KEYS: lib_read_keys. ARGV: key. Returns {text, version, ms until
-- it expires or -1}, or false when absent or expired.
--!include lib_read_keys
local key = ARGV[1]
--!include lib_clock
--!include lib_read

local text = redis.call('HGET', scope_hash, key)
if not text then return false end
local now = now_ms()
local alive, due = live(key, now)
if not alive then return false end
local left = -1
if due then left = tonumber(due) - now end
return {text, tonumber(redis.call('HGET', versions, key) or '1'), left}
