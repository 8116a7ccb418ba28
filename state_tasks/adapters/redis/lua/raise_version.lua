-- Redis Cluster: raises a bucket's copy of the trigger version to the one just made, never
-- lowers it (two registrations at once may raise the copies in either order; each copy
-- ends at the higher). KEYS: the copy. ARGV: the version. Returns the copy's version.
local copy, version = KEYS[1], tonumber(ARGV[1])
if tonumber(redis.call('GET', copy) or '0') < version then redis.call('SET', copy, version) end
return tonumber(redis.call('GET', copy))
