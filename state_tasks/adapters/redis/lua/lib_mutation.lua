-- Library: what every script that changes a scope shares. It expects these locals, named
-- from KEYS by the script (on a cluster all in the scope's bucket: one slot):
--   scope_hash   hash: key -> JSON text             key_index    sorted set of the keys
--   groups       sorted set of the scopes in use     versions     hash: key -> version;
--   trigger_version  the triggers' version counter                '' -> the scope's counter
--   op_record    the operation's record (see lib_settle)          due_index   key -> due ms
--   due_scopes   scope -> earliest due ms                          pending / pending_at:
--   the expiries handed over and not yet known to be sent (id -> text, id -> claim ms)
-- and `op_ttl`: the record's time to live in seconds, '' without an operation id.
-- A key whose due time has passed is absent to every script even before the sweep removes
-- it; a write that meets one removes it first and returns it, for its expiry event.

-- The operation's record, when it was applied before: {APPLIED, old, new, version} while
-- whole, {SETTLED, marker} once settled; nil otherwise.
local function applied()
  if op_ttl == '' then return nil end
  local kind = redis.call('TYPE', op_record).ok
  if kind == 'hash' then
    local done = redis.call('HMGET', op_record, 'o', 'n', 'v')
    return {APPLIED, done[1], done[2], tonumber(done[3] or '0')}
  end
  if kind == 'string' then return {SETTLED, redis.call('GET', op_record)} end
  return nil
end

-- Writes the whole record of a change (nothing without an operation id).
local function record(old, new, version)
  if op_ttl == '' then return end
  if old then redis.call('HSET', op_record, 'o', old) end
  if new then redis.call('HSET', op_record, 'n', new) end
  redis.call('HSET', op_record, 'v', version)
  redis.call('EXPIRE', op_record, op_ttl)
end

local function trigger_version_now()
  return redis.call('GET', trigger_version) or '0'
end

-- The server's time in ms, read once per script and only when an expiry is involved.
local clock = false
local function now()
  if not clock then clock = now_ms() end
  return clock
end

-- (live text or false, its version or 0, whether an expired value waits there, whether a
-- live key has a due time: nil when the key is absent, so unknown)
local function current(key)
  local text = redis.call('HGET', scope_hash, key)
  if not text then return false, 0, false, nil end
  local due = redis.call('ZSCORE', due_index, key)
  if due and tonumber(due) <= now() then return false, 0, true, true end
  -- a key written before versions existed has none: it is at 1
  return text, tonumber(redis.call('HGET', versions, key) or '1'), false, due ~= false
end

local function next_version()
  local v = redis.call('HINCRBY', versions, '', 1)
  if v == 1 and redis.call('EXISTS', scope_hash) == 1 then
    v = redis.call('HINCRBY', versions, '', 1)
  end
  return v
end

local function drop(key, scope)
  -- the counter stays at or above every version given, so a re-created key never reuses
  -- one (a scope from before versions has no counter yet)
  local version = tonumber(redis.call('HGET', versions, key) or '1')
  if tonumber(redis.call('HGET', versions, '') or '0') < version then
    redis.call('HSET', versions, '', version)
  end
  redis.call('HDEL', scope_hash, key)
  redis.call('HDEL', versions, key)
  redis.call('ZREM', due_index, key)
  redis.call('ZREM', key_index, key)
  if redis.call('EXISTS', scope_hash) == 0 then redis.call('ZREM', groups, scope) end
end

-- Appends a change to the change log, a stream: kind 'c'reated, 'u'pdated, 'd'eleted or
-- e'x'pired, the old and the new text ('' for none: a JSON text is never empty), the
-- version, the event id ('' when derived). Trimmed as it grows, by count and by age, in
-- whole blocks ('~'): the cost of a trim does not grow with the log.
-- With the log off, `change_log` is the log's gap counter instead: counted once per script,
-- so that a reader's position from before is compacted, never read on past these changes.
local gap_counted = false
local function log_change(kind, scope, key, old, new, version, event_id)
  if log_max == '' then
    if not gap_counted then
      redis.call('INCR', change_log)
      gap_counted = true
    end
    return
  end
  local id = redis.call('XADD', change_log, 'MAXLEN', '~', log_max, '*', 't', kind, 's', scope,
    'k', key, 'o', old or '', 'n', new or '', 'v', version, 'i', event_id)
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', change_log, 'MINID', '~', string.format('%d', ms - tonumber(log_age)))
end

-- Removes an expired key and leaves its expiry pending, in the same step; returns
-- {key, text, version} for its event. A pending id is '<version>:<bytes of scope>:<scope><key>'.
local function take_expired(key, scope)
  local text = redis.call('HGET', scope_hash, key)
  local version = tonumber(redis.call('HGET', versions, key) or '1')
  drop(key, scope)
  log_change('x', scope, key, text, false, version, '')
  local pending_id = string.format('%d', version) .. ':' .. #scope .. ':' .. scope .. key
  redis.call('HSET', pending, pending_id, text)
  redis.call('ZADD', pending_at, now(), pending_id)
  return {key, text, version}
end

local function expired_reply(gone)
  if gone then return gone[2], gone[3] end
  return false, 0
end

-- `present`: the key is in the scope's hash now (as the caller found it).
local function put(key, text, scope, present)
  if not present then
    -- the key index is kept only while it is whole: when it exists, or when the scope is
    -- empty (a scope from before the index is indexed by its first page)
    if redis.call('EXISTS', key_index) == 1 or redis.call('EXISTS', scope_hash) == 0 then
      redis.call('ZADD', key_index, 0, key)
    end
    redis.call('ZADD', groups, 0, scope)
  end
  redis.call('HSET', scope_hash, key, text)
end

-- ttl '' keeps the key's due time when `keep`, else makes the key permanent; `had_due`:
-- false when the key is known to have none (nothing to remove), nil when unknown.
local function set_due(key, ttl, keep, scope, had_due)
  if ttl ~= '' then
    local due = now() + tonumber(ttl)
    redis.call('ZADD', due_index, due, key)
    redis.call('ZADD', due_scopes, 'LT', due, scope)
  elseif not keep and had_due ~= false then
    redis.call('ZREM', due_index, key)
  end
end
