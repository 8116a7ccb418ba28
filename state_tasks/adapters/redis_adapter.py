"""RedisAdapter: one state shared by any number of workers, atomic and exact.

Key layout (``key_prefix`` defaults to ``state``)::

    {prefix}:s:{<scope>}        hash: key -> JSON text, one hash per scope
    {prefix}:groups             sorted set of the scopes holding at least one key
                                (all scores 0, so ZRANGE returns them sorted by bytes,
                                which for UTF-8 is Unicode code point order)
    {prefix}:triggers           hash: trigger id -> JSON
    {prefix}:triggers:version   counter bumped by every trigger change
    {prefix}:op:<op id>         an applied operation, for op_window_s seconds: a hash holding
                                its result until it is settled, then the string '1'
    {prefix}:k:{<scope>}        sorted set of the scope's keys (all scores 0), for pages in
                                key order (ZRANGEBYLEX: a prefix costs what it matches)

The key index moves with the hash in every mutation script. A scope written before the
index existed (an older release) has a hash and no index: the scripts leave such a scope
unindexed (a partial index would hide keys) and its first page builds the index whole, in
one atomic step (HKEYS + ZADD, once per scope; about a second per million keys).

Inside the braces the scope is escaped (``%`` -> ``%25``, ``{`` -> ``%7B``, ``}`` ->
``%7D``), so the closing brace is always the last character: no two scopes share a key
(``a:b`` vs ``a`` + ``b:``, prefixes of each other).

Versions and expiry add ``{prefix}:v:{<scope>}`` (versions), ``{prefix}:x:{<scope>}``
(due index) and ``{prefix}:due`` (the scopes with keys due). A key removed because it
expired (by the sweep's script, or by a write's that meets it) leaves its expiry in
``{prefix}:expiring`` (hash: pending id -> its JSON text) and ``{prefix}:expiring:at``
(sorted set: pending id -> claim time, ms of the server's clock), in the same script, until
the service has sent its event (:meth:`RedisAdapter.expiries_sent` removes both); a later
sweep claims and sends again those older than its resend delay
(:meth:`RedisAdapter.pending_expiries`).

On a Redis Cluster (``redis+cluster://``, or ``cluster=True``) the keys follow the bucketed
layout of :mod:`state_tasks.adapters.redis_layout` instead: every scope is in one of 256
buckets, and every key a mutation script touches (the scope's four keys, its bucket's groups index,
due index, copy of the trigger version, operation records and pending expiries) carries
the bucket's hash tag, so one script is one slot. The scripts are the same; only their
KEYS differ. What reads every bucket (``list_groups``, the sweep's due indexes and pending
expiries, settling records, raising the trigger version's copies) sends one command per
bucket in one pipeline: a round trip per master. ``wait_replicas`` sends the script and
``WAIT`` on the owning master's own connection.

Atomicity: ``set`` and ``delete`` are one Lua script each (the old value is read and
replaced in the same step, and the groups index moves with the data). ``update`` runs
the shared Python ops (:func:`state_tasks.core.codec.apply_ops_json`, one definition for every
adapter; Lua's cjson would lose big integers and confuse ``[]`` with ``{}``) inside a
compare-and-set loop: read the old text, compute, and write only if the text is still
the same (a Lua check-and-set); on a conflict the script returns the current text and
the loop computes again from it. That is two round trips without contention, against
three for WATCH/HGET/MULTI-EXEC, and a conflict costs one more round trip, not three.

The first read is skipped when this process remembers the text it last wrote or saw for
the key (a small, bounded cache of recent values): the check-and-set either confirms the
guess or returns the current text to compute from, so a stale guess costs one round trip
and never a wrong write. A worker that keeps updating the same keys pays one round trip
per update. Measured on one machine against a plain ``HSET`` loop: compare-and-set with
the read 0.40-0.48 of its throughput, with the remembered value 0.7-0.8.
"""

from __future__ import annotations

import builtins
import heapq
import logging
import re
import ssl
import threading
import time
from collections.abc import (
    Callable,
    Sequence,
)
from functools import partial
from typing import (
    Any,
    cast,
)

import redis
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry

from state_tasks.adapters.base import (
    DEFAULT_MAX_VALUE_BYTES,
    Change,
    Entry,
    Expired,
    OperationSettled,
    VersionedStateAdapter,
)
from state_tasks.adapters.records import (
    default_op_window_s,
    settled_versions,
)
from state_tasks.adapters.redis_layout import (
    BucketLayout,
    KeyLayout,
)
from state_tasks.core.batch import (
    BatchOp,
    BatchResult,
    VersionedBatchResult,
    apply_batch,
    apply_batch_versioned,
    batch_conflict,
    batch_keys,
)
from state_tasks.core.cluster import (
    ClusterTarget,
    is_cluster_url,
    parse_cluster_url,
)
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import (
    AdapterError,
    AdapterUnavailable,
    ConfigError,
    StateError,
    version_conflict,
)
from state_tasks.core.ops import Op
from state_tasks.core.sentinel import (
    SentinelTarget,
    is_sentinel_url,
    parse_sentinel_url,
)
from state_tasks.core.urls import redact_url

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://localhost:6379"
DEFAULT_KEY_PREFIX = "state"
#: Connection and socket timeouts: a dead server is reported, not waited on forever.
DEFAULT_SOCKET_TIMEOUT_S = 5.0
#: TLS (``rediss://``): the server's certificate must verify against the CA (redis-py's
#: ``ssl_cert_reqs``: ``required``, ``optional`` or ``none``).
DEFAULT_SSL_CERT_REQS = "required"
#: How many recently updated values a process remembers to skip a read (see update).
RECENT_MAX_ENTRIES = 4096
#: Larger values are not remembered.
RECENT_VALUE_MAX_CHARS = 16 * 1024
#: Records to settle wait for the next write of this process to carry them (no round trip
#: of their own) unless this many are waiting.
SETTLE_BATCH_MAX = 64
#: How long a write waits for its ``wait_replicas`` replicas before it fails (and is retried).
DEFAULT_WAIT_TIMEOUT_MS = 1000
#: Redis Cluster: how many times one call is retried (by redis-py, and by the adapter for a
#: write with ``wait_replicas``) on a connection error, ``CLUSTERDOWN``, ``TRYAGAIN`` or a
#: moved slot, with exponential backoff and jitter, before it fails as AdapterUnavailable
#: (which a state task retries in its turn). About 0.1 + 0.2 + 0.4 s at most.
CLUSTER_RETRIES = 3
CLUSTER_BACKOFF_BASE_S = 0.1
CLUSTER_BACKOFF_CAP_S = 1.0
#: Redis Cluster: operation records live in their scope's bucket, so settling one needs its
#: key; a process remembers the keys of this many of its recent operations (an operation it
#: forgot is not settled: its record stays whole until it expires, which is correct).
CLUSTER_OP_KEYS_MAX = 4096
#: Redis Cluster: after an expiry sweep that could not read some buckets (a master down),
#: the next sweep comes within this many milliseconds, whatever the other buckets' due times.
CLUSTER_SWEEP_RETRY_MS = 5000.0
#: Redis Cluster: how often, at most, ``settle`` warns of the ids it could not settle
#: because the process no longer remembered their records' keys (a count since the last).
CLUSTER_FORGOTTEN_LOG_EVERY_S = 60.0

# Every mutation script also returns the trigger version, read in the same atomic step,
# so matching triggers after a change costs no extra round trip.
#
# Applied operations: with an operation id (the Celery task id), KEYS[4] is
# {prefix}:op:{id} and the last ARGV is its time to live in seconds. The script first
# looks there. A hash is a whole record ('o' old text, 'n' new text, each present when
# there is one, 'v' the version): the operation was applied, and the script returns that
# result and changes nothing. A string is a settled record (LUA_SETTLE made it): the script
# changes nothing and says so, with the string: 'v<version>' for a set or an update,
# 'v<runs>' for a batch (its sets' and updates' versions, records.settled_marker),
# '1' for a delete or a record settled before markers kept versions. Otherwise the whole
# record is written in the same step as the change. Without an id the last ARGV is '' and
# KEYS[4] is not touched.
#
# KEYS[5] is the scope's key index (a sorted set), kept in step with the hash.
# KEYS[6] the scope's versions (hash: key -> version; the field '' holds the scope's counter),
# KEYS[7] its due index (sorted set: key -> due time in ms of the server's clock), KEYS[8]
# the scopes with keys due (sorted set: scope -> a lower bound of its earliest due time).
#
# KEYS[9] the pending expiries (hash: pending id -> the expired key's JSON text) and
# KEYS[10] their claim times (sorted set: pending id -> ms of the server's clock): a key
# removed because it expired leaves its expiry there, in the same atomic step, until the
# service says its event was sent (RedisAdapter.expiries_sent); see pending_expiries. A
# pending id is '<version>:<byte length of the scope>:<scope><key>'.
#
# Settling rides along: KEYS[11] onwards name records to settle (as LUA_SETTLE does)
# before anything else, so that settling costs no round trip of its own.
LUA_SETTLE_ONE = """
local function settled_marker(key)
  local count = redis.call('HGET', key, 'c')
  if not count then
    if redis.call('HEXISTS', key, 'n') == 0 then return '1' end
    local version = redis.call('HGET', key, 'v')
    if not version or tonumber(version) <= 0 then return '1' end
    return 'v' .. string.format('%d', tonumber(version))
  end
  local written = {}
  for _, field in ipairs(redis.call('HKEYS', key)) do written[field] = true end
  local runs, first, last = {}, nil, nil
  local function close()
    if not first then return end
    if first == last then runs[#runs + 1] = string.format('%d', first)
    else runs[#runs + 1] = string.format('%d-%d', first, last) end
  end
  for i = 1, tonumber(count) do
    if written['n' .. i] then
      local v = tonumber(redis.call('HGET', key, 'v' .. i) or '0')
      if last and v == last + 1 then last = v else
        close()
        first, last = v, v
      end
    end
  end
  close()
  if #runs == 0 then return '1' end
  return 'v' .. table.concat(runs, ',')
end
local function settle(key)
  if redis.call('TYPE', key).ok == 'hash' then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then
      redis.call('SET', key, settled_marker(key), 'PX', ttl)
      return 1
    end
  end
  return 0
end
"""

# Versions and expiry, shared by the mutation scripts. A key whose due time has passed is
# absent to every script (and every reader) even before the sweep removes it; a write
# that meets one removes it first and returns it, for its expiry event. A key from before
# versions has no version field: it is at 1, and a scope from before versions starts its
# counter above 1.
LUA_VERSIONS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function current(key, now)
  local text = redis.call('HGET', KEYS[1], key)
  if not text then return false, 0, false end
  local due = redis.call('ZSCORE', KEYS[7], key)
  if due and tonumber(due) <= now then return false, 0, true end
  return text, tonumber(redis.call('HGET', KEYS[6], key) or '1'), false
end
local function counter_base()
  local c = tonumber(redis.call('HGET', KEYS[6], '') or '0')
  if c == 0 and redis.call('EXISTS', KEYS[1]) == 1 then c = 1 end
  return c
end
local function next_version()
  local v = redis.call('HINCRBY', KEYS[6], '', 1)
  if v == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
    v = redis.call('HINCRBY', KEYS[6], '', 1)
  end
  return v
end
local function drop(key, scope)
  -- the counter stays at or above every version given (a scope from before versions has
  -- none yet: its keys are at 1), so a re-created key never reuses one
  local version = tonumber(redis.call('HGET', KEYS[6], key) or '1')
  if tonumber(redis.call('HGET', KEYS[6], '') or '0') < version then
    redis.call('HSET', KEYS[6], '', version)
  end
  redis.call('HDEL', KEYS[1], key)
  redis.call('HDEL', KEYS[6], key)
  redis.call('ZREM', KEYS[7], key)
  redis.call('ZREM', KEYS[5], key)
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], scope) end
end
local function take_expired(key, scope, now)
  local text = redis.call('HGET', KEYS[1], key)
  local version = tonumber(redis.call('HGET', KEYS[6], key) or '1')
  drop(key, scope)
  local pending = string.format('%d', version) .. ':' .. #scope .. ':' .. scope .. key
  redis.call('HSET', KEYS[9], pending, text)
  redis.call('ZADD', KEYS[10], now, pending)
  return {key, text, version}
end
local function put(key, text, scope)
  if redis.call('HEXISTS', KEYS[1], key) == 0 then
    -- KEYS[5], the key index, is kept only while it is whole: when it exists, or when the
    -- scope is empty (a scope from before the index is indexed by its first page).
    if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
      redis.call('ZADD', KEYS[5], 0, key)
    end
    redis.call('ZADD', KEYS[2], 0, scope)
  end
  redis.call('HSET', KEYS[1], key, text)
end
local function set_due(key, ttl, now, keep, scope)
  if ttl ~= '' then
    local due = now + tonumber(ttl)
    redis.call('ZADD', KEYS[7], due, key)
    redis.call('ZADD', KEYS[8], 'LT', due, scope)
  elseif not keep then
    redis.call('ZREM', KEYS[7], key)
  end
end
"""

LUA_APPLIED = (
    LUA_SETTLE_ONE
    + LUA_VERSIONS
    + """
for i = 11, #KEYS do settle(KEYS[i]) end
local function applied()
  if ARGV[#ARGV] == '' then return nil end
  local kind = redis.call('TYPE', KEYS[4]).ok
  if kind == 'hash' then
    local done = redis.call('HMGET', KEYS[4], 'o', 'n', 'v')
    return {'whole', done[1], done[2], tonumber(done[3] or '0')}
  end
  if kind == 'string' then return {'settled', redis.call('GET', KEYS[4])} end
  return nil
end
local function record(old, new, version)
  if ARGV[#ARGV] == '' then return end
  if old then redis.call('HSET', KEYS[4], 'o', old) end
  if new then redis.call('HSET', KEYS[4], 'n', new) end
  redis.call('HSET', KEYS[4], 'v', version)
  redis.call('EXPIRE', KEYS[4], ARGV[#ARGV])
end
local function expired_reply(gone)
  if gone then return gone[2], gone[3] end
  return false, 0
end
"""
)

# KEYS as above; ARGV[1] key, ARGV[2] JSON text, ARGV[3] scope, ARGV[4] if_version or '',
# ARGV[5] ttl_ms or '', ARGV[6] op ttl or ''.
# Returns {1, replaced text or false, trigger version, new version, expired text or false,
# its version} when written; {2, recorded old text or false, trigger version, recorded
# version} when already applied; {0, settled marker} when already applied and settled; {3,
# current version} when if_version does not match (nothing written).
LUA_SET = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {0, done[2]} end
if done then return {2, done[2], redis.call('GET', KEYS[3]) or '0', done[4]} end
local now = now_ms()
local old, version, expired = current(ARGV[1], now)
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= version then return {3, version} end
local gone = false
if expired then gone = take_expired(ARGV[1], ARGV[3], now) end
local new_version = next_version()
put(ARGV[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[1], new_version)
set_due(ARGV[1], ARGV[5], now, false, ARGV[3])
record(old, ARGV[2], new_version)
local gone_text, gone_version = expired_reply(gone)
return {1, old, redis.call('GET', KEYS[3]) or '0', new_version, gone_text, gone_version}
"""
)

# KEYS as above; ARGV[1] key, ARGV[2] scope, ARGV[3] if_version or '', ARGV[4] op ttl or ''.
# Returns {1, deleted text or false, trigger version, deleted version (0: none), expired
# text or false, its version}, {2, recorded text, trigger version, recorded version}, {0,
# settled marker} (settled) or {3, current version}. A scope left empty leaves the groups
# index. A delete of an absent key under an id is recorded settled at once: it has no
# trigger work.
LUA_DELETE = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {0, done[2]} end
if done then return {2, done[2], redis.call('GET', KEYS[3]) or '0', done[4]} end
local now = now_ms()
local old, version, expired = current(ARGV[1], now)
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= version then return {3, version} end
local gone = false
if expired then gone = take_expired(ARGV[1], ARGV[2], now) end
if old then
  drop(ARGV[1], ARGV[2])
  record(old, false, version)
elseif ARGV[#ARGV] ~= '' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[#ARGV])
end
local gone_text, gone_version = expired_reply(gone)
return {1, old, redis.call('GET', KEYS[3]) or '0', version, gone_text, gone_version}
"""
)

# KEYS as above; ARGV[1] key, ARGV[2] "1" if the key was absent else "0", ARGV[3] expected
# old text, ARGV[4] new text, ARGV[5] scope, ARGV[6] if_version or '', ARGV[7] ttl_ms or ''
# (none: a key that exists keeps its expiry), ARGV[8] op ttl or ''.
# Returns {1, trigger version, new version, expired text or false, its version} when
# written, {0, current text or false} when the value moved on, {2, recorded old text or
# false, recorded new text, recorded version} when already applied, {3, settled marker}
# when already applied and settled, or {4, current version} when if_version does not match.
LUA_CHECK_AND_SET = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {3, done[2]} end
if done then return {2, done[2], done[3], done[4]} end
local now = now_ms()
local current_text, version, expired = current(ARGV[1], now)
if ARGV[6] ~= '' and tonumber(ARGV[6]) ~= version then return {4, version} end
local expected_absent = ARGV[2] == '1'
if (expected_absent and current_text) or (not expected_absent and current_text ~= ARGV[3]) then
  return {0, current_text}
end
local gone = false
if expired then gone = take_expired(ARGV[1], ARGV[5], now) end
local new_version = next_version()
put(ARGV[1], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[6], ARGV[1], new_version)
set_due(ARGV[1], ARGV[7], now, current_text ~= false, ARGV[5])
record(current_text, ARGV[4], new_version)
local gone_text, gone_version = expired_reply(gone)
return {1, redis.call('GET', KEYS[3]) or '0', new_version, gone_text, gone_version}
"""
)

# KEYS as above; ARGV[1] scope, ARGV[2] op ttl or '', ARGV[3] n, then n checks (key, "1" if
# expected absent else "0", expected text), then one write per operation, in order (kind
# "s", "u" or "d", key, new text or '', if_version or '', ttl_ms or '').
# Returns {1, trigger version, {old text or false per operation}, {version per operation},
# {key, text, version of each key found expired}} when written; {0, {current text or
# false per checked key}} when a checked key moved on (nothing written); {2, the record as
# HGETALL: 'c' count, 'o<i>'/'n<i>'/'v<i>' old/new text and version of operation i} when
# already applied; {3, settled marker} when already applied and settled; {5, operation
# index (from 0),
# expected, current version} when an if_version does not match (nothing written).
LUA_BATCH = (
    LUA_APPLIED
    + """
if ARGV[2] ~= '' then
  local kind = redis.call('TYPE', KEYS[4]).ok
  if kind == 'hash' then return {2, redis.call('HGETALL', KEYS[4])} end
  if kind == 'string' then return {3, redis.call('GET', KEYS[4])} end
end
local now = now_ms()
local at, conflict, currents = 4, false, {}
for i = 1, tonumber(ARGV[3]) do
  local current_text = current(ARGV[at], now)
  currents[i] = current_text
  local absent = ARGV[at + 1] == '1'
  if (absent and current_text) or (not absent and current_text ~= ARGV[at + 2]) then
    conflict = true
  end
  at = at + 3
end
if conflict then return {0, currents} end
-- versions first, on a simulation: a conflict must leave everything untouched
local first_write = at
local versions, expired, counter, index = {}, {}, counter_base(), 0
while at <= #ARGV do
  local key = ARGV[at + 1]
  if versions[key] == nil then
    local text, version, is_expired = current(key, now)
    versions[key] = version
    if is_expired then expired[#expired + 1] = key end
  end
  if ARGV[at + 3] ~= '' and tonumber(ARGV[at + 3]) ~= versions[key] then
    return {5, index, tonumber(ARGV[at + 3]), versions[key]}
  end
  if ARGV[at] == 'd' then versions[key] = 0 else
    counter = counter + 1
    versions[key] = counter
  end
  index = index + 1
  at = at + 5
end
local gone = {}
for _, key in ipairs(expired) do gone[#gone + 1] = take_expired(key, ARGV[1], now) end
local record = ARGV[2] ~= ''
local olds, new_versions, i = {}, {}, 0
at = first_write
while at <= #ARGV do
  i = i + 1
  local key = ARGV[at + 1]
  local old = redis.call('HGET', KEYS[1], key)
  local version
  if ARGV[at] == 'd' then
    version = 0
    if old then
      version = tonumber(redis.call('HGET', KEYS[6], key) or '1')
      drop(key, ARGV[1])
    end
  else
    version = next_version()
    put(key, ARGV[at + 2], ARGV[1])
    redis.call('HSET', KEYS[6], key, version)
    set_due(key, ARGV[at + 4], now, ARGV[at] == 'u' and old ~= false, ARGV[1])
    if record then redis.call('HSET', KEYS[4], 'n' .. i, ARGV[at + 2]) end
  end
  if record then
    if old then redis.call('HSET', KEYS[4], 'o' .. i, old) end
    redis.call('HSET', KEYS[4], 'v' .. i, version)
  end
  olds[i] = old or false
  new_versions[i] = version
  at = at + 5
end
if record then
  redis.call('HSET', KEYS[4], 'c', i)
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return {1, redis.call('GET', KEYS[3]) or '0', olds, new_versions, gone}
"""
)

# KEYS[1] scope hash, KEYS[2] key index, KEYS[3] due index; ARGV[1] prefix ('' for every
# key), ARGV[2] the key to continue after, ARGV[3] "1" if there is one, ARGV[4] how many
# keys at most. Returns {keys, their JSON texts (false for a key that expired)} in key
# order. A scope without an index (written by an older release) gets its whole index first.
LUA_PAGE = """
local function chunks(list, size, each)
  for first = 1, #list, size do
    each({unpack(list, first, math.min(first + size - 1, #list))})
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  chunks(redis.call('HKEYS', KEYS[1]), 1000, function(keys)
    local args = {}
    for _, key in ipairs(keys) do
      args[#args + 1] = 0
      args[#args + 1] = key
    end
    redis.call('ZADD', KEYS[2], unpack(args))
  end)
end
local low = '[' .. ARGV[1]
if ARGV[3] == '1' then low = '(' .. ARGV[2] end
local high = '+'
if ARGV[1] ~= '' then high = '[' .. ARGV[1] .. '\\255' end
local keys = redis.call('ZRANGEBYLEX', KEYS[2], low, high, 'LIMIT', 0, tonumber(ARGV[4]))
local values = {}
chunks(keys, 1000, function(part)
  for _, value in ipairs(redis.call('HMGET', KEYS[1], unpack(part))) do
    values[#values + 1] = value
  end
end)
if redis.call('EXISTS', KEYS[3]) == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i, key in ipairs(keys) do
    local due = redis.call('ZSCORE', KEYS[3], key)
    if due and tonumber(due) <= now then values[i] = false end
  end
end
return {keys, values}
"""

# Reads that hide expired keys. KEYS[1] scope hash, KEYS[2] versions, KEYS[3] due index.
LUA_READ_TIME = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(key, now)
  local due = redis.call('ZSCORE', KEYS[3], key)
  return not (due and tonumber(due) <= now), due
end
"""

# ARGV[1] key. Returns the JSON text, or false when absent or expired.
LUA_GET = (
    LUA_READ_TIME
    + """
local text = redis.call('HGET', KEYS[1], ARGV[1])
if text and not live(ARGV[1], now_ms()) then return false end
return text
"""
)

# ARGV[1] key. Returns {text, version, ms until it expires or -1}, or false.
LUA_GET_ENTRY = (
    LUA_READ_TIME
    + """
local text = redis.call('HGET', KEYS[1], ARGV[1])
if not text then return false end
local now = now_ms()
local alive, due = live(ARGV[1], now)
if not alive then return false end
local left = -1
if due then left = tonumber(due) - now end
return {text, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '1'), left}
"""
)

# ARGV the keys. Returns their texts (false where absent or expired).
LUA_GET_MANY = (
    LUA_READ_TIME
    + """
local texts = {}
for first = 1, #ARGV, 1000 do  -- unpack takes at most ~8,000 values: chunks of 1,000
  local part = redis.call('HMGET', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
  for _, text in ipairs(part) do texts[#texts + 1] = text end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local now = now_ms()
  for i, key in ipairs(ARGV) do
    if texts[i] and not live(key, now) then texts[i] = false end
  end
end
return texts
"""
)

# What a write that computes its values here (an update, a batch with updates) starts from,
# in the order every write checks: the operation record first, then versions and texts.
# KEYS[1] scope hash, KEYS[2] versions, KEYS[3] due index, KEYS[4] the op record, then
# records to settle (as the mutation scripts' KEYS[11..], first: a repeat that comes after
# its record was settled is answered as settled); ARGV[1] '' (no operation id) or '1',
# then the keys. Returns {2, the whole record as HGETALL} or {3, settled marker} when the
# operation was applied, else {1, {live text or false per key}, {version per key (0:
# absent)}, the scope's version counter (as next_version starts from it)}. Writes nothing
# else.
LUA_READ_FOR_WRITE = (
    LUA_SETTLE_ONE
    + LUA_READ_TIME
    + """
for i = 5, #KEYS do settle(KEYS[i]) end
if ARGV[1] ~= '' then
  local kind = redis.call('TYPE', KEYS[4]).ok
  if kind == 'hash' then return {2, redis.call('HGETALL', KEYS[4])} end
  if kind == 'string' then return {3, redis.call('GET', KEYS[4])} end
end
local now = now_ms()
local texts, versions = {}, {}
for i = 2, #ARGV do
  local text = redis.call('HGET', KEYS[1], ARGV[i])
  if text and not live(ARGV[i], now) then text = false end
  texts[i - 1] = text
  versions[i - 1] = 0
  if text then versions[i - 1] = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '1') end
end
local counter = tonumber(redis.call('HGET', KEYS[2], '') or '0')
if counter == 0 and redis.call('EXISTS', KEYS[1]) == 1 then counter = 1 end
return {1, texts, versions, counter}
"""
)

# No ARGV. Returns the scope's live texts (HVALS, without the expired ones).
LUA_LIST = (
    LUA_READ_TIME
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms())
if #expired == 0 then return redis.call('HVALS', KEYS[1]) end
local gone = {}
for _, key in ipairs(expired) do gone[key] = true end
local all, texts = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #all, 2 do
  if not gone[all[i]] then texts[#texts + 1] = all[i + 1] end
end
return texts
"""
)

# The live keys of scopes of one bucket (for list_groups): KEYS[1] the bucket's scopes with
# keys due, then each scope's hash and due index; ARGV the scopes (at most 1,000). Returns
# one number per scope: -1 for a scope not filed as due (all its keys are live, and it has
# at least one), else its live keys (HLEN less the keys due and not yet swept).
LUA_LIVE_COUNTS = (
    LUA_READ_TIME
    + """
local now = now_ms()
local dues = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local counts = {}
for i = 1, #ARGV do
  local count = -1
  if dues[i] and tonumber(dues[i]) <= now then
    count = redis.call('HLEN', KEYS[2 * i]) - redis.call('ZCOUNT', KEYS[2 * i + 1], '-inf', now)
  end
  counts[i] = count
end
return counts
"""
)

# KEYS[1] the scopes with keys due; ARGV[1] how many scopes at most. Returns {the server's
# time in ms, the scopes whose earliest due time has come, the next due time or false}.
LUA_DUE_SCOPES = (
    LUA_READ_TIME
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, due, first[2] or false}
"""
)

# The sweep of one scope: KEYS[1] scope hash, KEYS[2] groups index, KEYS[5] key index,
# KEYS[6] versions, KEYS[7] due index, KEYS[8] the scopes with keys due, KEYS[9] and
# KEYS[10] the pending expiries (KEYS[3] and KEYS[4] unused); ARGV[1] scope, ARGV[2] how
# many keys at most. Removes the keys whose due time has come, atomically (two sweepers
# never both get one), records each as a pending expiry, and returns them as {key, text,
# version, ...}; then files the scope under its next due time (or takes it out).
LUA_EXPIRE = (
    LUA_VERSIONS
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, key in ipairs(due) do
  if redis.call('HEXISTS', KEYS[1], key) == 1 then
    local gone = take_expired(key, ARGV[1], now)
    out[#out + 1] = gone[1]
    out[#out + 1] = gone[2]
    out[#out + 1] = gone[3]
  else
    redis.call('ZREM', KEYS[7], key)
  end
end
local first = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('ZREM', KEYS[8], ARGV[1])
else
  redis.call('ZADD', KEYS[8], first[2], ARGV[1])
end
return out
"""
)

# KEYS: op records {prefix}:op:{id}; no ARGV. Each whole record (a hash) becomes a short
# string with the time to live it had left (the versions it gave, see LUA_SETTLE_ONE): a
# marker of about 150 bytes of Redis memory, whatever the size of the values. Returns how
# many records were settled.
LUA_SETTLE = (
    LUA_SETTLE_ONE
    + """
local settled = 0
for _, key in ipairs(KEYS) do settled = settled + settle(key) end
return settled
"""
)

# KEYS[1] triggers hash, KEYS[2] version; ARGV[1] id, ARGV[2] JSON. Returns {1 if new,
# the new version}.
LUA_TRIGGER_PUT = """
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {added, redis.call('INCR', KEYS[2])}
"""

# KEYS[1] triggers hash, KEYS[2] version; ARGV[1] id. Returns {1 if it existed, the new
# version}.
LUA_TRIGGER_DELETE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
return {removed, redis.call('INCR', KEYS[2])}
"""

# Redis Cluster: KEYS[1] a bucket's copy of the trigger version; ARGV[1] the version just
# made. Raises the copy to it, never lowers it (two registrations at once may raise the
# copies in either order; each copy ends at the higher). Returns the copy's version.
LUA_RAISE_VERSION = """
local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < v then redis.call('SET', KEYS[1], v) end
return tonumber(redis.call('GET', KEYS[1]))
"""

# Pending expiries (see LUA_VERSIONS' take_expired). KEYS[1] the pending expiries (hash),
# KEYS[2] their claim times (sorted set); ARGV[1] age in ms, ARGV[2] how many at most.
# Claims those claimed at least ARGV[1] ms ago, oldest first: each is claimed again now
# (its age starts over, so another sweeper does not take it too). Returns {the server's
# time in ms, then pending id, JSON text, previous claim time, ... for each}. A claim time
# without its text (cannot happen unless edited by hand) is dropped.
LUA_PENDING_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]),
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {now}
for i = 1, #found, 2 do
  local text = redis.call('HGET', KEYS[1], found[i])
  if text then
    redis.call('ZADD', KEYS[2], now, found[i])
    out[#out + 1] = found[i]
    out[#out + 1] = text
    out[#out + 1] = found[i + 1]
  else
    redis.call('ZREM', KEYS[2], found[i])
  end
end
return out
"""

# KEYS[1] the pending expiries' claim times; ARGV[1] a claim time LUA_PENDING_CLAIM
# returned, then pairs of pending id and its previous claim time. Gives back the claims
# (of more than a sweep's limit, on a cluster) still at ARGV[1]: as if never claimed.
LUA_PENDING_RELEASE = """
local claimed = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '-1') == claimed then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[i + 1], ARGV[i])
  end
end
return 0
"""

# KEYS[1] the pending expiries, KEYS[2] their claim times; ARGV their pending ids, whose
# events were sent: drops them (the text they held with them).
LUA_EXPIRIES_SENT = """
for first = 1, #ARGV, 1000 do
  local ids = {unpack(ARGV, first, math.min(first + 999, #ARGV))}
  redis.call('HDEL', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return 0
"""

#: Scripts registered on first use (see RedisAdapter._script).
LAZY_SCRIPTS = {
    "batch": LUA_BATCH,
    "page": LUA_PAGE,
    "get_entry": LUA_GET_ENTRY,
    "get_many": LUA_GET_MANY,
    "read_for_write": LUA_READ_FOR_WRITE,
    "list": LUA_LIST,
    "live_counts": LUA_LIVE_COUNTS,
    "due_scopes": LUA_DUE_SCOPES,
    "expire": LUA_EXPIRE,
    "raise_version": LUA_RAISE_VERSION,
    "pending_claim": LUA_PENDING_CLAIM,
    "pending_release": LUA_PENDING_RELEASE,
    "expiries_sent": LUA_EXPIRIES_SENT,
}


def _tls_refusal(error: BaseException) -> str | None:
    """The reason, when a connection failed because a certificate did not verify."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate does not verify ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return None


def _pending_id(scope: str, key: str, version: int) -> str:
    """A pending expiry's id, as the scripts make it: ``<version>:<bytes of the
    scope>:<scope><key>`` (the length tells the scope from the key)."""
    return f"{version}:{len(scope.encode())}:{scope}{key}"


def _pending_expiry(pending_id: str, text: str) -> Expired:
    """The expiry a pending id and its text stand for."""
    version, size, rest = pending_id.split(":", 2)
    raw, cut = rest.encode(), int(size)
    return Expired(raw[:cut].decode(), raw[cut:].decode(), text, int(version))


def _arg(number: int | None) -> str:
    """An optional number as a script argument ('' for none)."""
    return "" if number is None else str(number)


#: What a call fails with when the server, or a node of a cluster, cannot take it now: a
#: state task retries it. On a cluster: a node down or unreachable, CLUSTERDOWN (slots not
#: served during a failover), TRYAGAIN, a slot that moved (MOVED/ASK the client could not
#: follow within its retries: ``ClusterError("TTL exhausted.")``) or not covered.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,  # and its ClusterDownError, MasterDownError
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # and its MovedError
    redis.exceptions.SlotNotCoveredError,
)
#: How redis-py 8 reports, as a bare ``RedisClusterException``, a cluster whose slot map it
#: cannot load: no node reachable, slots not all covered, or nodes disagreeing (a failover
#: under way). Any other ``RedisClusterException`` is a misuse of the client ("all keys
#: must map to the same key slot", "Missing key", ...), which no retry mends.
_CLUSTER_UNREACHABLE = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
)


def _is_unavailable(error: BaseException) -> bool:
    """True when the server or cluster cannot take a call now (it is retried), false for an
    error that would recur on a retry."""
    if isinstance(error, _UNAVAILABLE):
        return True
    return isinstance(error, redis.exceptions.RedisClusterException) and str(error).startswith(
        _CLUSTER_UNREACHABLE
    )


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def _node_error(error: BaseException) -> str:
    """The error's class and text (which names the node, ``host:port``), never a password."""
    text = _URL_PASSWORD.sub(r"\1***@", str(error))[:300].rstrip(". ")
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


class _Applied(Exception):
    """A repeat of an operation whose whole record the first read found: its fields
    (``HGETALL`` of the record: ``o``/``n``/``v``, or a batch's ``c`` and numbered ones)."""

    def __init__(self, record: dict[str, str]) -> None:
        super().__init__("applied before")
        self.record = record


class RedisAdapter(VersionedStateAdapter):
    """State in Redis, shared by every worker process on every machine.

    Versions and expiry use Redis's own clock (``TIME`` inside the scripts), so workers on
    machines whose clocks disagree still agree on what has expired.

    :param redis_url: ``redis://`` or ``rediss://``, with password and db number if needed;
        ``sentinel://`` (see ``master_name``); or ``redis+cluster://`` /
        ``rediss+cluster://`` with comma-separated seed nodes for a Redis Cluster
        (:mod:`state_tasks.core.cluster`; the keys then use the bucketed layout of
        :mod:`state_tasks.adapters.redis_layout`).
    :param key_prefix: first part of every key (no braces).
    :param op_window_s: how long an applied operation id is remembered (default: the
        broker's redelivery window, :func:`state_tasks.adapters.records.default_op_window_s`).
    :param ssl_ca_certs: ``rediss://`` only: a PEM file of the CAs to trust (default: the
        system's).
    :param ssl_certfile: ``rediss://`` only: a client certificate (PEM), for a server that
        asks for one (``tls-auth-clients``).
    :param ssl_keyfile: ``rediss://`` only: the client certificate's key (PEM).
    :param ssl_cert_reqs: ``rediss://`` only: ``required`` (the default: the server's
        certificate must verify and name the host), ``optional`` or ``none`` (no checks:
        encrypted, but anyone in the middle can read it).
    :param master_name: with a ``sentinel://`` URL (every sentinel, ``;``-separated, as
        kombu writes it): the name the sentinels watch the master under. The client asks
        the sentinels for the master, and asks again after a failover.
    :param sentinel_password: the sentinels' own password, if they require one (the
        master's is the URL's).
    :param wait_replicas: after each write, wait until this many replicas have it (Redis
        ``WAIT``, on the write's connection) before answering; 0 (the default) answers as
        soon as the master has it. Not reached within ``wait_timeout_ms``: the call fails
        as :class:`AdapterUnavailable` (a state task retries it; its operation record makes
        the retry apply nothing twice).
    :param wait_timeout_ms: how long a write waits for ``wait_replicas`` replicas.
    :param cluster: ``True``: ``redis_url`` (``redis://`` or ``rediss://``) is one seed
        node of a Redis Cluster, as if written ``redis+cluster://``.
    :param client: an existing ``redis.Redis`` (or ``redis.cluster.RedisCluster`` with
        ``cluster``) to use instead of ``redis_url`` (tests).
    """

    supports_versions = True

    def __init__(
        self,
        *,
        redis_url: str = DEFAULT_REDIS_URL,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        op_window_s: float | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_cert_reqs: str = DEFAULT_SSL_CERT_REQS,
        master_name: str | None = None,
        sentinel_password: str | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
        cluster: bool = False,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigError(f"key_prefix {key_prefix!r} may not contain braces")
        if not redis_url.startswith(
            ("redis://", "rediss://", "unix://", "sentinel://")
        ) and not is_cluster_url(redis_url):
            raise ConfigError(
                f"redis_url {redact_url(redis_url)!r} must start with redis://, rediss://, "
                "unix://, sentinel://, redis+cluster:// or rediss+cluster://"
            )
        self._cluster: ClusterTarget | None = None
        if is_cluster_url(redis_url) or cluster:
            if not redis_url.startswith(("redis://", "rediss://")) and not is_cluster_url(
                redis_url
            ):
                raise ConfigError(
                    f"cluster: true needs a redis:// or rediss:// seed node (or a "
                    f"redis+cluster:// URL), got {redact_url(redis_url)!r}"
                )
            self._cluster = parse_cluster_url(redis_url)
        self._sentinel: SentinelTarget | None = None
        if is_sentinel_url(redis_url):
            if not master_name:
                raise ConfigError(
                    f"redis_url {redact_url(redis_url)!r} names sentinels: set master_name "
                    "(the name they watch the master under, e.g. mymaster)"
                )
            self._sentinel = parse_sentinel_url(redis_url)
        elif master_name:
            raise ConfigError(
                f"master_name {master_name!r} needs a sentinel:// redis_url (Sentinel and "
                "Cluster do not mix: a cluster fails over by itself) "
                f"(got {redact_url(redis_url)!r})"
            )
        self.master_name = master_name
        self._sentinel_password = sentinel_password
        if wait_replicas < 0 or wait_timeout_ms <= 0:
            raise ConfigError(
                f"wait_replicas ({wait_replicas}) must be 0 or more and wait_timeout_ms "
                f"({wait_timeout_ms}) positive"
            )
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        if ssl_cert_reqs not in ("required", "optional", "none"):
            raise ConfigError(
                f"ssl_cert_reqs {ssl_cert_reqs!r} must be 'required', 'optional' or 'none'"
            )
        tls_files = {
            "ssl_ca_certs": ssl_ca_certs,
            "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile,
        }
        # TLS options on a plain URL would be silently ignored: a deployment that believes
        # it is encrypted must not run in clear text.
        tls = redis_url.startswith(("rediss://", "rediss+cluster://"))
        if not tls and any(tls_files.values()):
            raise ConfigError(
                f"redis_url {redact_url(redis_url)!r}: ssl_* options need a rediss:// "
                "(or rediss+cluster://) URL"
            )
        self._tls_options: dict[str, Any] = {}
        if tls:
            self._tls_options = {
                **{name: path for name, path in tls_files.items() if path},
                "ssl_cert_reqs": ssl_cert_reqs,
                "ssl_check_hostname": ssl_cert_reqs == "required",
            }
        self.max_value_bytes = max_value_bytes
        self.op_window_s = default_op_window_s() if op_window_s is None else op_window_s
        self.redis_url = redis_url
        self.safe_url = redact_url(redis_url)
        if master_name:
            self.safe_url += f" (master {master_name!r})"
        self.key_prefix = key_prefix
        self._socket_timeout_s = socket_timeout_s
        self._client: Any = client
        self._client_lock = threading.Lock()
        self._layout = BucketLayout(key_prefix) if self._cluster else KeyLayout(key_prefix)
        self._scripts: dict[str, Script] = {}
        # (scope, key) -> the JSON text last written or seen there; None: seen absent.
        self._recent: dict[tuple[str, str], str | None] = {}
        self._recent_lock = threading.Lock()
        self._seen = threading.local()
        # Op record keys to settle, by tag, carried by the next mutation script of the same
        # tag (see settle); on a cluster, the op id -> record key of recent operations.
        self._to_settle: dict[str, builtins.list[str]] = {}
        self._to_settle_lock = threading.Lock()
        self._op_keys: dict[str, tuple[str, str]] = {}
        # settle() ids no longer in _op_keys since the last warning, and when it was logged
        self._forgotten_settles = 0
        self._forgotten_logged_at = float("-inf")

    @property
    def is_cluster(self) -> bool:
        """True on a Redis Cluster (the bucketed key layout of
        :mod:`state_tasks.adapters.redis_layout`)."""
        return self._cluster is not None

    def __repr__(self) -> str:
        cluster = ", cluster" if self._cluster else ""
        return f"RedisAdapter(redis_url={self.safe_url!r}, key_prefix={self.key_prefix!r}{cluster})"

    # -- connection ----------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The process's client and connection pool, created on first use: a
        ``redis.Redis``, or on a cluster a ``redis.cluster.RedisCluster``."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
                    for name, body in (
                        ("set", LUA_SET),
                        ("get", LUA_GET),
                        ("delete", LUA_DELETE),
                        ("cas", LUA_CHECK_AND_SET),
                        ("settle", LUA_SETTLE),
                        ("trigger_put", LUA_TRIGGER_PUT),
                        ("trigger_delete", LUA_TRIGGER_DELETE),
                    ):
                        self._scripts[name] = self._client.register_script(body)
        return self._client

    def _connect(self) -> Any:
        timeouts = {
            "socket_timeout": self._socket_timeout_s,
            "socket_connect_timeout": self._socket_timeout_s,
        }
        if self._cluster is not None:
            return self._connect_cluster(self._cluster, timeouts)
        if self._sentinel is None:
            return redis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                health_check_interval=30,
                **timeouts,
                **self._tls_options,
            )
        # The sentinels name the master on every new connection; a connection to a master
        # that became a replica fails as a connection error (redis-py's
        # SentinelManagedConnection), which the state tasks retry: the retry finds the new one.
        sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            self._sentinel.sentinels,
            sentinel_kwargs={**timeouts, "password": self._sentinel_password},
            **timeouts,
        )
        assert self.master_name is not None
        return sentinels.master_for(  # type: ignore[no-untyped-call]
            self.master_name,
            decode_responses=True,
            health_check_interval=30,
            db=self._sentinel.db,
            username=self._sentinel.username,
            password=self._sentinel.password,
        )

    def _connect_cluster(
        self, target: ClusterTarget, timeouts: dict[str, Any]
    ) -> redis.cluster.RedisCluster:
        """A cluster client: it asks a seed for the slot map, sends each command to the
        master of its key's slot, follows MOVED/ASK, and after a connection error,
        CLUSTERDOWN or TRYAGAIN asks for the map anew and retries (CLUSTER_RETRIES)."""
        tls: dict[str, Any] = {}
        if target.tls:
            tls = {"ssl": True, **self._tls_options}
        try:
            return redis.cluster.RedisCluster(
                startup_nodes=[
                    redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                    for host, port in target.nodes
                ],
                username=target.username,
                password=target.password,
                decode_responses=True,
                health_check_interval=30,
                retry=Retry(
                    ExponentialWithJitterBackoff(
                        base=CLUSTER_BACKOFF_BASE_S, cap=CLUSTER_BACKOFF_CAP_S
                    ),
                    CLUSTER_RETRIES,
                ),
                **timeouts,
                **tls,
            )
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            if _tls_refusal(e) is not None:  # a certificate that does not verify: no retry
                raise self._unavailable("connecting", None, e) from e
            if not _is_unavailable(e):
                raise AdapterError(
                    f"Redis Cluster at {self.safe_url} refused the client: {_node_error(e)}"
                ) from e
            raise AdapterUnavailable(
                f"cannot reach Redis Cluster at {self.safe_url}: no seed node answered "
                f"({_node_error(e)}). Check that the nodes run and the URL is right; calls "
                "succeed again once they are back."
            ) from e

    def close(self) -> None:
        if self._client is not None:
            try:
                self._flush_settles()
            except StateError as e:  # they stay whole until they expire
                logger.warning("could not settle operation records on close: %s", e)
            self._client.close()

    def _run(self, what: str, scope: str | None, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            if _is_unavailable(e):
                raise self._unavailable(what, scope, e) from e
            where = f" (scope {scope!r})" if scope is not None else ""
            if isinstance(e, redis.exceptions.RedisClusterException):  # not a RedisError
                raise AdapterError(
                    f"{what}{where}: the Redis Cluster client refused the call to "
                    f"{self.safe_url}: {_node_error(e)}"
                ) from e
            raise AdapterError(
                f"{what}{where}: Redis at {self.safe_url} answered with an error: {e}"
            ) from e

    def _unavailable(self, what: str, scope: str | None, error: BaseException) -> StateError:
        """The error for a server (or cluster node) that cannot take the call now."""
        where = f" (scope {scope!r})" if scope is not None else ""
        refused = _tls_refusal(error)
        if refused is not None:
            # A certificate that does not verify will not verify on a retry either.
            return AdapterError(
                f"{what}{where}: TLS with Redis at {self.safe_url} failed: {refused}. "
                "Check ssl_ca_certs (the CA that signed the server's certificate) and "
                "that the certificate names the host in redis_url."
            )
        if self._cluster is None:
            return AdapterUnavailable(
                f"{what}{where}: cannot reach Redis at {self.safe_url}: "
                f"{error.__class__.__name__}. Check that the server runs and the URL is "
                "right; calls succeed again once it is back."
            )
        node = self._node_of(scope) if scope is not None else None
        at = f"node {node} of " if node else ""
        logger.warning(
            "%s%s: Redis Cluster %s%s unavailable after %d retries: %s",
            what,
            where,
            at,
            self.safe_url,
            CLUSTER_RETRIES,
            _node_error(error),
        )
        return AdapterUnavailable(
            f"{what}{where}: Redis Cluster {at}{self.safe_url} is unavailable: "
            f"{_node_error(error)}. Check that its nodes run (a master that died is replaced "
            "by its replica after cluster-node-timeout); calls succeed again once it is back."
        )

    def _node_of(self, scope: str) -> str | None:
        """``host:port`` of the master holding ``scope`` in the client's slot map (no I/O)."""
        try:
            node = self.client.get_node_from_key(self._layout.scope_key(scope))
        except Exception:  # only for a message: no map, no name
            return None
        return f"{node.host}:{node.port}" if node is not None else None

    def _script(self, name: str) -> Script:
        self.client  # noqa: B018 - registers the scripts on first use
        script = self._scripts.get(name)
        if script is None:  # registering twice (two threads at once) is harmless
            script = self._scripts[name] = self.client.register_script(LAZY_SCRIPTS[name])
        return script

    def _op_key(self, op_id: str | None, tag: str = "") -> str:
        return self._layout.op_key(op_id or "", tag)

    def _op_ttl(self, op_id: str | None) -> str:
        return "" if op_id is None else str(max(1, round(self.op_window_s)))

    def scope_key(self, scope: str) -> str:
        """The Redis key of a scope's hash."""
        return self._layout.scope_key(scope, "s")

    def index_key(self, scope: str) -> str:
        """The Redis key of a scope's key index (same hash tag: same cluster slot)."""
        return self._layout.scope_key(scope, "k")

    def versions_key(self, scope: str) -> str:
        """The Redis key of a scope's versions (same hash tag: same cluster slot)."""
        return self._layout.scope_key(scope, "v")

    def due_key(self, scope: str) -> str:
        """The Redis key of a scope's due index (same hash tag: same cluster slot)."""
        return self._layout.scope_key(scope, "x")

    def _mutation_keys(self, scope: str, op_id: str | None) -> builtins.list[str]:
        """KEYS[1..8] of a mutation script: on a cluster all in the scope's bucket
        (:meth:`_pending_keys` are KEYS[9..10])."""
        tag = self._layout.tag(scope)
        op_key = self._op_key(op_id, tag)
        if op_id is not None and self._cluster is not None:
            with self._to_settle_lock:
                self._op_keys.pop(op_id, None)
                self._op_keys[op_id] = (tag, op_key)
                if len(self._op_keys) > CLUSTER_OP_KEYS_MAX:
                    del self._op_keys[next(iter(self._op_keys))]
        return [
            self.scope_key(scope),
            self._layout.groups_key(tag),
            self._layout.version_key(tag),
            op_key,
            self.index_key(scope),
            self.versions_key(scope),
            self.due_key(scope),
            self._layout.due_scopes_key(tag),
        ]

    def _pending_keys(self, scope: str) -> builtins.list[str]:
        """KEYS[9..10] of a mutation script: the pending expiries of the scope's tag (they
        exist only while an expiry's event is not known to be sent)."""
        tag = self._layout.tag(scope)
        return [self._layout.expiring_key(tag), self._layout.expiring_at_key(tag)]

    def _read_keys(self, scope: str) -> builtins.list[str]:
        return [self.scope_key(scope), self.versions_key(scope), self.due_key(scope)]

    # -- the contract ----------------------------------------------------------------

    def get(self, scope: str, key: str) -> str | None:
        script = self._script("get")
        keys = self._read_keys(scope)
        return cast(
            "str | None", self._run("get", scope, lambda: script(keys=keys, args=[key])) or None
        )

    def get_entry(self, scope: str, key: str) -> Entry | None:
        script = self._script("get_entry")
        keys = self._read_keys(scope)
        found = self._run("get", scope, lambda: script(keys=keys, args=[key]))
        if not found:
            return None
        text, version, left = found
        return Entry(text, int(version), None if int(left) < 0 else int(left))

    @staticmethod
    def _expired(scope: str, key: str, text: Any, version: Any) -> Expired | None:
        return Expired(scope, key, text, int(version)) if text else None

    def set_versioned(
        self,
        scope: str,
        key: str,
        value_json: str,
        op_id: str | None = None,
        *,
        if_version: int | None = None,
        ttl_ms: int | None = None,
    ) -> Change:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        args = [key, value_json, scope, _arg(if_version), _arg(ttl_ms), self._op_ttl(op_id)]
        reply: builtins.list[Any] = self._mutate("set", "set", scope, keys, args)
        if reply[0] == 0:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == 3:
            raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::set")
        self._remember((scope, key), value_json)
        self._seen.version = int(reply[2])
        if reply[0] == 2:
            return Change(reply[1] or None, value_json, int(reply[3]))
        gone = self._expired(scope, key, reply[4], reply[5])
        return Change(reply[1] or None, value_json, int(reply[3]), gone)

    def delete_versioned(
        self, scope: str, key: str, op_id: str | None = None, *, if_version: int | None = None
    ) -> Change:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        args = [key, scope, _arg(if_version), self._op_ttl(op_id)]
        reply: builtins.list[Any] = self._mutate("delete", "delete", scope, keys, args)
        if reply[0] == 0:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == 3:
            raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::delete")
        self._remember((scope, key), None)
        self._seen.version = int(reply[2])
        gone = None if reply[0] == 2 else self._expired(scope, key, reply[4], reply[5])
        return Change(reply[1] or None, None, int(reply[3]), gone)

    def update_versioned(
        self,
        scope: str,
        key: str,
        ops: Sequence[Op],
        op_id: str | None = None,
        *,
        if_version: int | None = None,
        ttl_ms: int | None = None,
    ) -> Change:
        try:
            return self._update(scope, key, ops, op_id, if_version, ttl_ms)
        except _Applied as done:  # by an earlier delivery of the same task: its record
            self._recent.pop((scope, key), None)
            record = done.record
            return Change(record.get("o"), record.get("n"), int(record.get("v", 0)))

    def _update(
        self,
        scope: str,
        key: str,
        ops: Sequence[Op],
        op_id: str | None,
        if_version: int | None,
        ttl_ms: int | None,
    ) -> Change:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        ttl = self._op_ttl(op_id)
        slot = (scope, key)
        # Every check is made on what Redis holds, in the order every adapter makes them:
        # the operation record, then if_version, then the ops. A remembered value only
        # saves the first read: ops that fail on it are judged again on a fresh read.
        guessed = slot in self._recent
        if guessed:
            old = self._recent.get(slot)
        else:
            old = self._update_start(scope, key, op_id, if_version)
        while True:
            try:
                new = apply_ops_json(old, ops, self.max_value_bytes)
            except StateError:
                self._recent.pop(slot, None)
                if not guessed:
                    raise
                guessed = False
                old = self._update_start(scope, key, op_id, if_version)
                continue
            args = [key, "1" if old is None else "0", old or "", new, scope]
            args += [_arg(if_version), _arg(ttl_ms), ttl]
            reply: list[Any] = self._mutate("update", "cas", scope, keys, args)
            if reply[0] == 1:
                self._remember(slot, new)
                self._seen.version = int(reply[1])
                return Change(old, new, int(reply[2]), self._expired(scope, key, *reply[3:5]))
            self._recent.pop(slot, None)
            if reply[0] == 2:  # applied before, by an earlier delivery of the same task
                return Change(reply[1] or None, reply[2], int(reply[3]))
            if reply[0] == 3:  # ... and settled since
                raise OperationSettled(op_id or "", settled_versions(reply[1]))
            if reply[0] == 4:
                raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::update")
            # The value moved on; the script found no record and if_version still matching,
            # so the ops are judged on the value it returned.
            guessed, old = False, reply[1] or None  # Lua false -> None: deleted meanwhile

    def _read_for_write(
        self, scope: str, keys: Sequence[str], op_id: str | None
    ) -> tuple[builtins.list[str | None], builtins.list[int], int]:
        """The live texts and versions of ``keys`` and the scope's version counter, read in
        one step after the operation record: a whole record raises :class:`_Applied`, a
        settled one :class:`OperationSettled`."""
        script = self._script("read_for_write")
        tag = self._layout.tag(scope)
        settles = self._take_settles(tag)
        names = [*self._read_keys(scope), self._op_key(op_id, tag), *settles]
        args = ["" if op_id is None else "1", *keys]
        try:  # settling is not WAITed for: a settle lost in a failover leaves a whole record
            reply = self._run("update", scope, lambda: script(keys=names, args=args))
        except BaseException:
            self._requeue_settles(tag, settles)
            raise
        if reply[0] == 2:
            raise _Applied(dict(zip(reply[1][::2], reply[1][1::2], strict=True)))
        if reply[0] == 3:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        texts = [text or None for text in reply[1]]
        return texts, [int(version) for version in reply[2]], int(reply[3])

    def _update_start(
        self, scope: str, key: str, op_id: str | None, if_version: int | None
    ) -> str | None:
        """What an update computes from: the key's text, read after its operation record (a
        whole one raises :class:`_Applied`, a settled one :class:`OperationSettled`) and
        checked against its if_version (a conflict raises)."""
        texts, versions, _ = self._read_for_write(scope, [key], op_id)
        if if_version is not None and if_version != versions[0]:
            raise version_conflict(scope, key, if_version, versions[0], "state::update")
        return texts[0]

    def _remember(self, slot: tuple[str, str], text: str | None) -> None:
        if text is not None and len(text) > RECENT_VALUE_MAX_CHARS:
            self._recent.pop(slot, None)
            return
        with self._recent_lock:
            self._recent.pop(slot, None)
            self._recent[slot] = text
            if len(self._recent) > RECENT_MAX_ENTRIES:
                del self._recent[next(iter(self._recent))]

    def settle(self, op_ids: Sequence[str]) -> None:
        """Queue the records for the next mutation of this process to settle in its script.

        A whole record meanwhile answers a repeat with its result (the safe direction).
        More than :data:`SETTLE_BATCH_MAX` waiting are settled at once, and ``close``
        settles the rest. On a cluster a record lives in its scope's bucket: only a
        mutation of the same bucket carries it, the rest are settled one script per bucket
        in one pipeline, and an id this process did not write (or no longer remembers,
        :data:`CLUSTER_OP_KEYS_MAX`) stays whole until it expires (a warning counts them,
        at most every :data:`CLUSTER_FORGOTTEN_LOG_EVERY_S`).
        """
        with self._to_settle_lock:
            for op_id in op_ids:
                if self._cluster is None:
                    tag, key = "", self._op_key(op_id)
                else:
                    known = self._op_keys.pop(op_id, None)
                    if known is None:
                        self._forgotten_settles += 1
                        continue
                    tag, key = known
                self._to_settle.setdefault(tag, []).append(key)
            full = sum(map(len, self._to_settle.values())) >= SETTLE_BATCH_MAX
            forgotten, now = 0, time.monotonic()
            if (
                self._forgotten_settles
                and now - self._forgotten_logged_at >= CLUSTER_FORGOTTEN_LOG_EVERY_S
            ):
                forgotten, self._forgotten_settles = self._forgotten_settles, 0
                self._forgotten_logged_at = now
        if forgotten:
            logger.warning(
                "Redis Cluster %s: %d operation records not settled: this process no longer "
                "knew their keys (it remembers its last %d operations); they stay whole "
                "until they expire (logged at most every %.0f s)",
                self.safe_url,
                forgotten,
                CLUSTER_OP_KEYS_MAX,
                CLUSTER_FORGOTTEN_LOG_EVERY_S,
            )
        if full:
            self._flush_settles()

    def _flush_settles(self) -> None:
        with self._to_settle_lock:
            waiting, self._to_settle = self._to_settle, {}
        if not waiting:
            return
        calls: builtins.list[tuple[builtins.list[str], builtins.list[Any]]]
        calls = [(keys, []) for keys in waiting.values()]
        try:
            self._run("settle", None, lambda: self._eval_each("settle", calls))
        except BaseException:
            for tag, keys in waiting.items():
                self._requeue_settles(tag, keys)
            raise

    def _take_settles(self, tag: str) -> builtins.list[str]:
        with self._to_settle_lock:
            return self._to_settle.pop(tag, [])

    def _requeue_settles(self, tag: str, keys: builtins.list[str]) -> None:
        if keys:
            with self._to_settle_lock:
                self._to_settle.setdefault(tag, [])[:0] = keys

    def _eval_each(
        self, name: str, calls: Sequence[tuple[builtins.list[str], builtins.list[Any]]]
    ) -> builtins.list[Any]:
        """Run one script once per ``(keys, args)``: on one server one after the other; on
        a cluster in one pipeline (about one round trip per master, whatever the number of
        buckets), loading the script on every master first if one lacks it."""
        script = self._script(name)
        if self._cluster is None:
            return [script(keys=keys, args=args) for keys, args in calls]
        replies: builtins.list[Any] = []
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            self.client.script_load(script.script)  # on every master
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _eval_each_node(
        self, what: str, name: str, calls: Sequence[tuple[builtins.list[str], builtins.list[Any]]]
    ) -> builtins.list[Any]:
        """:meth:`_eval_each` for an expiry sweep, which must go on while a master is down:
        on a cluster each master's calls go in a pipeline of their own, so the replies of
        the healthy masters are kept. A call that failed (its master does not answer, or its
        slot moved, after the slot map is refreshed once) has ``None`` for its reply; the
        failed buckets are logged once per call, naming their nodes. Raises only when every
        call failed (or on one server, as :meth:`_eval_each`)."""
        if self._cluster is None or not calls:
            return self._eval_each(name, calls)
        script = self._script(name)
        client = self.client
        replies: builtins.list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        errors: dict[str, tuple[int, BaseException]] = {}  # node -> (calls failed, an error)
        for attempt in range(2):
            errors = {}
            by_node: dict[str, tuple[Any, builtins.list[int]]] = {}
            for i in todo:
                node = client.get_node_from_key(calls[i][0][0])
                by_node.setdefault(node.name, (node, []))[1].append(i)
            for node_name, (node, indexes) in by_node.items():
                try:
                    got = self._eval_on_node(script, node, [calls[i] for i in indexes])
                except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
                    if not _is_unavailable(e):
                        raise
                    errors[node_name] = (len(indexes), e)
                    continue
                for i, reply in zip(indexes, got, strict=True):
                    if isinstance(reply, Exception):
                        if not _is_unavailable(reply):
                            raise reply
                        failed, _ = errors.get(node_name, (0, reply))
                        errors[node_name] = (failed + 1, reply)
                    else:
                        replies[i] = reply
            todo = [i for i, reply in enumerate(replies) if reply is None]
            if not todo or attempt:
                break
            try:  # a master down, or a slot that moved: ask for the slot map again, once
                client.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
                if not _is_unavailable(e):
                    raise
                break
        if todo:
            if len(todo) == len(calls):
                raise next(iter(errors.values()))[1]
            logger.warning(
                "%s: %d of %d buckets of Redis Cluster %s could not be read, the others were: %s",
                what,
                len(todo),
                len(calls),
                self.safe_url,
                "; ".join(
                    f"node {node} ({failed}): {_node_error(error)}"
                    for node, (failed, error) in errors.items()
                ),
            )
        return replies

    def _eval_on_node(
        self,
        script: Script,
        node: Any,
        calls: Sequence[tuple[builtins.list[str], builtins.list[Any]]],
    ) -> builtins.list[Any]:
        """The script once per call, in one pipeline on ``node``'s connection (loading the
        script there first if it lacks it); the replies, errors among them."""
        connection = self.client.get_redis_connection(node)
        replies: builtins.list[Any] = []
        for attempt in range(2):
            pipe = connection.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            connection.script_load(script.script)
        return replies

    def _mutate(
        self,
        what: str,
        script_name: str,
        scope: str,
        keys: builtins.list[str],
        args: builtins.list[str],
    ) -> Any:
        """Run a mutation script with its pending expiries (KEYS[9..10]), carrying the
        records waiting to be settled (KEYS[11..]) of the scope's tag (on a cluster, its
        bucket: one script is one slot)."""
        script = self._script(script_name)
        tag = self._layout.tag(scope)
        settles = self._take_settles(tag)
        keys = keys + self._pending_keys(scope) + settles
        try:
            return self._run(what, scope, lambda: self._write(script, keys, args))
        except BaseException:
            self._requeue_settles(tag, settles)
            raise

    def _write(self, script: Script, keys: builtins.list[str], args: builtins.list[Any]) -> Any:
        """Run a script that writes; with ``wait_replicas``, ``WAIT`` for the replicas.

        ``WAIT`` counts the writes of its own connection, so it rides in one pipeline with
        the script. A write that no replica confirmed in time may be lost in a failover: it
        fails as :class:`AdapterUnavailable`, and the pool is dropped so that the retry
        asks the sentinels anew (the master may be one that was just replaced).
        """
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        if self._cluster is not None:
            return self._write_on_node(script, keys, args)
        pipe = self.client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        reply, confirmed = pipe.execute()
        if int(confirmed) < self.wait_replicas:
            self.client.connection_pool.disconnect()
            raise AdapterUnavailable(
                f"Redis at {self.safe_url}: the write reached {confirmed} of the "
                f"{self.wait_replicas} replicas that wait_replicas asks for within "
                f"{self.wait_timeout_ms} ms; it is retried (and applied once)"
            )
        return reply

    def _write_on_node(
        self, script: Script, keys: builtins.list[str], args: builtins.list[Any]
    ) -> Any:
        """``wait_replicas`` on a cluster: the script and ``WAIT`` in one pipeline on the
        connection of the master that owns the keys' slot (the cluster client would send
        WAIT to any node). A node that does not answer or a slot that moved (MOVED/ASK)
        refreshes the slot map and is retried, :data:`CLUSTER_RETRIES` times with backoff,
        then fails (as :class:`AdapterUnavailable`, through ``_run``)."""
        client = self.client
        for attempt in range(CLUSTER_RETRIES + 1):
            node = client.get_node_from_key(keys[0])
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            try:
                reply, confirmed = pipe.execute()
            except _UNAVAILABLE as e:
                if attempt == CLUSTER_RETRIES:
                    raise
                logger.info(
                    "Redis Cluster node %s:%s: %s; slot map refreshed, retry %d of %d",
                    node.host,
                    node.port,
                    _node_error(e),
                    attempt + 1,
                    CLUSTER_RETRIES,
                )
                time.sleep(min(CLUSTER_BACKOFF_CAP_S, CLUSTER_BACKOFF_BASE_S * 2**attempt))
                client.nodes_manager.initialize()
                continue
            if int(confirmed) < self.wait_replicas:
                raise AdapterUnavailable(
                    f"Redis Cluster node {node.host}:{node.port} of {self.safe_url}: the "
                    f"write reached {confirmed} of the {self.wait_replicas} replicas that "
                    f"wait_replicas asks for within {self.wait_timeout_ms} ms; it is "
                    "retried (and applied once)"
                )
            return reply
        raise AssertionError("unreachable")

    def list(self, scope: str) -> builtins.list[str]:
        script = self._script("list")
        keys = self._read_keys(scope)
        return cast("list[str]", self._run("list", scope, lambda: script(keys=keys, args=[])))

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        script = self._script("get_many")
        names = self._read_keys(scope)
        found = self._run("get_many", scope, lambda: script(keys=names, args=list(keys)))
        return [text or None for text in found]

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        results, _ = self.batch_versioned(scope, operations, op_id)
        return [(old, new) for old, new, _ in results]

    def batch_versioned(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> tuple[builtins.list[VersionedBatchResult], builtins.list[Expired]]:
        """One Lua script writes the whole batch (one scope is one hash slot).

        A batch of sets and deletes is one round trip: the script looks at the operation
        record, checks each ``if_version`` and reports the old values. A batch with updates
        first reads (after the operation record) its keys' texts and versions, checks the
        operations on them in order (each its ``if_version``, then its ops: the first that
        fails is the answer, as on every adapter), and has the script write the new values
        only if those keys still hold what was read (else it reads and checks again), as
        ``update`` does.
        """
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        distinct = batch_keys(operations)
        checked = any(op.kind == "update" for op in operations)
        try:
            while True:
                before: dict[str, str | None] = dict.fromkeys(distinct)
                if checked:
                    before, results = self._batch_check(scope, distinct, operations, op_id)
                else:
                    results = apply_batch(before, operations, self.max_value_bytes)
                reply = self._batch_write(scope, keys, distinct, operations, before, results, op_id)
                if reply is not None:
                    break
        except _Applied as done:
            reply = [2, done.record]
        finally:
            for key in distinct:
                self._recent.pop((scope, key), None)
        if reply[0] == 3:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == 5:
            index, expected, current = (int(n) for n in reply[1:4])
            raise batch_conflict(index, scope, operations[index].key, expected, current)
        if reply[0] == 2:  # applied before, by an earlier delivery of the same task
            record = reply[1]
            if not isinstance(record, dict):
                record = dict(zip(record[::2], record[1::2], strict=True))
            count = int(record["c"])
            return [
                (record.get(f"o{i}"), record.get(f"n{i}"), int(record.get(f"v{i}", 0)))
                for i in range(1, count + 1)
            ], []
        self._seen.version = int(reply[1])
        gone = [Expired(scope, key, text, int(version)) for key, text, version in reply[4]]
        return [
            (old or None, new, int(version))
            for old, version, (_, new) in zip(reply[2], reply[3], results, strict=True)
        ], gone

    def _batch_check(
        self, scope: str, distinct: Sequence[str], operations: Sequence[BatchOp], op_id: str | None
    ) -> tuple[dict[str, str | None], builtins.list[BatchResult]]:
        """The texts a batch with updates computes from, read after its operation record,
        and its results: each operation's if_version, then its ops, checked in order (the
        first failure raises, as on the KvStore; versions are simulated as the script gives
        them, which checks them again)."""
        texts, versions, counter = self._read_for_write(scope, distinct, op_id)
        before = {
            key: None if text is None else (text, version)
            for key, text, version in zip(distinct, texts, versions, strict=True)
        }
        given = iter(range(counter + 1, counter + 1 + len(operations)))
        results = apply_batch_versioned(
            scope, before, operations, self.max_value_bytes, given.__next__
        )
        return dict(zip(distinct, texts, strict=True)), [(old, new) for old, new, _ in results]

    def _batch_write(
        self,
        scope: str,
        keys: builtins.list[str],
        distinct: Sequence[str],
        operations: Sequence[BatchOp],
        before: dict[str, str | None],
        results: Sequence[BatchResult],
        op_id: str | None,
    ) -> builtins.list[Any] | None:
        """One run of the batch script with the ``results`` computed from ``before``: its
        reply, or ``None`` when a checked key moved on since it was read (nothing written)."""
        checked = any(op.kind == "update" for op in operations)
        args = [scope, self._op_ttl(op_id), str(len(distinct) if checked else 0)]
        for key in distinct if checked else ():
            old = before[key]
            args += [key, "1" if old is None else "0", old or ""]
        for op, (_, new) in zip(operations, results, strict=True):
            kind = "d" if new is None else "s" if op.kind == "set" else "u"
            args += [kind, op.key, new or "", _arg(op.if_version), _arg(op.ttl_ms)]
        reply: builtins.list[Any] = self._mutate("batch", "batch", scope, keys, args)
        return None if reply[0] == 0 else reply

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        script = self._script("page")
        keys = [self.scope_key(scope), self.index_key(scope), self.due_key(scope)]
        rows: builtins.list[tuple[str, str]] = []
        while True:  # expired keys not yet removed are skipped, not counted
            wanted = limit - len(rows)
            args = [prefix, after or "", "0" if after is None else "1", wanted + 1]
            found, texts = self._run("list", scope, partial(script, keys=keys, args=args))
            rows += [(k, t) for k, t in zip(found[:wanted], texts, strict=False) if t]
            more = len(found) > wanted
            if not more or len(rows) == limit:
                return rows, more
            after = found[wanted - 1]

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        """A page of the groups index: ``ZRANGEBYLEX`` after the cursor. On a cluster each
        bucket's index gives its first ``limit + 1`` (one pipeline: a round trip per
        master) and the merge keeps the first ``limit + 1`` of them all."""
        rows: builtins.list[tuple[str, int | None]] = []
        while True:  # a scope whose keys all expired (not yet swept) is skipped
            # Bytes, not str: the upper bound ends in the byte 0xFF, which no UTF-8 text holds.
            low = b"(" + after.encode() if after is not None else b"[" + prefix.encode()
            high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
            wanted = limit - len(rows)
            found = self._run(
                "list_groups",
                None,
                partial(self._groups_range, "ZRANGEBYLEX", low, high, "LIMIT", 0, wanted + 1),
            )[: wanted + 1]
            more, scopes = len(found) > wanted, found[:wanted]
            counts = self._run("list_groups", None, partial(self._live_counts, scopes))
            if with_counts and -1 in counts:
                pipe = self.client.pipeline(transaction=False)
                for scope, count in zip(scopes, counts, strict=True):
                    if count == -1:
                        pipe.hlen(self.scope_key(scope))
                lengths = iter(self._run("list_groups", None, pipe.execute))
                counts = [next(lengths) if count == -1 else count for count in counts]
            rows += [
                (scope, count if with_counts else None)
                for scope, count in zip(scopes, counts, strict=True)
                if count != 0
            ]
            if not more or len(rows) == limit:
                return rows, more
            after = scopes[-1]

    def list_groups(self) -> builtins.list[str]:
        groups = self._run("list_groups", None, partial(self._groups_range, "ZRANGE", 0, -1))
        counts = self._run("list_groups", None, partial(self._live_counts, groups))
        return [scope for scope, count in zip(groups, counts, strict=True) if count != 0]

    def _live_counts(self, scopes: Sequence[str]) -> builtins.list[int]:
        """How many live keys each of ``scopes`` holds where some may have expired (0: all
        did, not yet swept), else -1 (none expired, and it holds at least one). A look at
        the due indexes of the scopes' buckets (one pipeline), then, for the scopes filed
        there (those with keys that expire), one script per bucket and 1,000 scopes."""
        by_tag: dict[str, builtins.list[int]] = {}
        for at, scope in enumerate(scopes):
            by_tag.setdefault(self._layout.tag(scope), []).append(at)
        chunks = [
            (tag, ats[first : first + 1000])
            for tag, ats in by_tag.items()
            for first in range(0, len(ats), 1000)
        ]
        counts = [-1] * len(scopes)
        if not chunks:
            return counts
        pipe = self.client.pipeline(transaction=False)
        for tag, part in chunks:
            pipe.zmscore(self._layout.due_scopes_key(tag), [scopes[at] for at in part])
        calls: builtins.list[tuple[builtins.list[str], builtins.list[Any]]] = []
        placed: builtins.list[builtins.list[int]] = []
        for (tag, part), dues in zip(chunks, pipe.execute(), strict=True):
            filed = [at for at, due in zip(part, dues, strict=True) if due is not None]
            if filed:
                keys = [self._layout.due_scopes_key(tag)]
                for at in filed:
                    keys += [self.scope_key(scopes[at]), self.due_key(scopes[at])]
                calls.append((keys, [scopes[at] for at in filed]))
                placed.append(filed)
        for filed, reply in zip(placed, self._eval_each("live_counts", calls), strict=True):
            for at, count in zip(filed, reply, strict=True):
                counts[at] = int(count)
        return counts

    def _groups_range(self, command: str, *args: Any) -> builtins.list[str]:
        """``command`` (a range of a sorted set) on every groups index, merged in order.

        Every scope is in one bucket only, and each bucket's answer is sorted by bytes, as
        Python sorts str (code point order is UTF-8 byte order)."""
        tags = self._layout.tags
        if len(tags) == 1:
            return cast(
                "list[str]",
                self.client.execute_command(command, self._layout.groups_key(tags[0]), *args),
            )
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.execute_command(command, self._layout.groups_key(tag), *args)
        return list(heapq.merge(*pipe.execute()))

    def _due_scopes(self, limit: int) -> tuple[builtins.list[str], float | None]:
        """The scopes whose earliest due time has come (at most ``limit`` per tag), and
        the milliseconds until the next due time known (``None``: none), each bucket
        judged by its own master's clock."""
        calls = [([self._layout.due_scopes_key(tag)], [limit]) for tag in self._layout.tags]
        scopes: builtins.list[str] = []
        wait_ms: float | None = None
        for reply in self._eval_each_node("expiry sweep", "due_scopes", calls):
            if reply is None:  # its master is down (logged): look again soon
                wait_ms = (
                    min(wait_ms, CLUSTER_SWEEP_RETRY_MS)
                    if wait_ms is not None
                    else (CLUSTER_SWEEP_RETRY_MS)
                )
                continue
            now, due, next_due = reply
            scopes += due
            if next_due:
                left = max(0.0, float(next_due) - float(now))
                wait_ms = left if wait_ms is None else min(wait_ms, left)
        return scopes, wait_ms

    def expire_due(self, limit: int) -> tuple[builtins.list[Expired], float | None]:
        """Remove the keys whose due time has come (one script per scope with keys due:
        atomic, so two workers never both get one); return them and the milliseconds
        until the next due time, from the server's clock (on a cluster: the buckets' due
        indexes in one pipeline, each judged by its master's clock)."""
        scopes, next_due_ms = self._run("expire", None, partial(self._due_scopes, limit))
        expire = self._script("expire")
        gone: builtins.list[Expired] = []
        for scope in scopes:
            if len(gone) >= limit:
                return gone, 0.0
            keys = self._mutation_keys(scope, None) + self._pending_keys(scope)
            args = [scope, limit - len(gone)]
            flat = self._run("expire", scope, partial(expire, keys=keys, args=args))
            for at in range(0, len(flat), 3):
                gone.append(Expired(scope, flat[at], flat[at + 1], int(flat[at + 2])))
                self._recent.pop((scope, flat[at]), None)
        if scopes:
            return gone, 0.0  # look again at once: more may be due, or the next due time moved
        return gone, next_due_ms

    def pending_expiries(self, older_than_ms: int, limit: int) -> builtins.list[Expired]:
        """The expiries handed over at least ``older_than_ms`` ago (by the server's clock)
        whose events are not known to be sent, oldest first, each claimed again in the same
        script. On a cluster: one script per bucket in one pipeline (a round trip per
        master); what the buckets gave beyond ``limit`` is given back (a second pipeline,
        only then)."""
        if limit <= 0:
            return []
        tags = self._layout.tags
        calls: builtins.list[tuple[builtins.list[str], builtins.list[Any]]] = [
            (
                [self._layout.expiring_key(tag), self._layout.expiring_at_key(tag)],
                [older_than_ms, limit],
            )
            for tag in tags
        ]
        replies = self._run(
            "pending_expiries",
            None,
            partial(self._eval_each_node, "pending expiries", "pending_claim", calls),
        )
        # (previous claim time, tag, this claim time, pending id, text)
        found: builtins.list[tuple[int, str, int, str, str]] = []
        for tag, reply in zip(tags, replies, strict=True):
            if reply is None:  # its master is down (logged); the others' claims are kept
                continue
            now = int(reply[0])
            for at in range(1, len(reply), 3):
                found.append((int(float(reply[at + 2])), tag, now, reply[at], reply[at + 1]))
        if len(found) > limit:
            found.sort(key=lambda claim: claim[0])
            extra: dict[tuple[str, int], builtins.list[Any]] = {}
            for before, tag, now, pending, _ in found[limit:]:
                extra.setdefault((tag, now), []).extend((pending, before))
            found = found[:limit]
            give_back = [
                ([self._layout.expiring_at_key(tag)], [now, *args])
                for (tag, now), args in extra.items()
            ]
            self._run(
                "pending_expiries", None, partial(self._eval_each, "pending_release", give_back)
            )
        elif len(tags) > 1:
            found.sort(key=lambda claim: claim[0])
        return [_pending_expiry(pending, text) for _, _, _, pending, text in found]

    def expiries_sent(self, expired: Sequence[Expired]) -> None:
        """Drop the pending records of these expiries (one script per tag: on a cluster,
        per bucket, in one pipeline)."""
        by_tag: dict[str, builtins.list[Any]] = {}
        for gone in expired:
            pending = _pending_id(gone.scope, gone.key, gone.version)
            by_tag.setdefault(self._layout.tag(gone.scope), []).append(pending)
        calls: builtins.list[tuple[builtins.list[str], builtins.list[Any]]] = [
            ([self._layout.expiring_key(tag), self._layout.expiring_at_key(tag)], ids)
            for tag, ids in by_tag.items()
        ]
        if calls:
            self._run("expiries_sent", None, partial(self._eval_each, "expiries_sent", calls))

    def triggers_load(self) -> dict[str, str]:
        key = self._layout.triggers_key
        found = self._run("triggers_load", None, lambda: self.client.hgetall(key))
        return cast("dict[str, str]", found)

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        return self._trigger_change("triggers_put", "trigger_put", [trigger_id, trigger_json])

    def triggers_delete(self, trigger_id: str) -> bool:
        return self._trigger_change("triggers_delete", "trigger_delete", [trigger_id])

    def _trigger_change(self, what: str, script_name: str, args: builtins.list[str]) -> bool:
        """Change the triggers hash and bump the version in the same script.

        On a cluster the mutation scripts read their bucket's copy of the version (a copy
        per bucket: one shared key would be in another slot, and one hot key), so after
        the hash and its counter every copy is raised to the new version, one script per
        bucket in one pipeline, before this returns. A change that runs meanwhile in a
        bucket not yet raised matches with the triggers of before: it ran before the
        registration returned, as on one server a change just before the ``INCR`` does.
        A change that reads a raised copy reloads the hash, which already holds the new
        trigger. A raise that fails (a node down) fails the call; registering again
        raises every copy (a copy is raised, never lowered, so registrations at once end
        at the highest).
        """
        script = self._script(script_name)
        keys = [self._layout.triggers_key, self._layout.triggers_version_key]
        changed, version = self._run(what, None, lambda: self._write(script, keys, args))
        if self._cluster is not None:
            self._run(what, None, partial(self._raise_versions, int(version)))
        return bool(changed)

    def _raise_versions(self, version: int) -> None:
        """Raise every bucket's copy of the trigger version: one pipeline; with
        ``wait_replicas``, one per master, each ending in ``WAIT`` (a copy lost in a
        failover would leave a worker matching with the triggers of before)."""
        keys = [self._layout.version_key(tag) for tag in self._layout.tags]
        if not self.wait_replicas:
            self._eval_each("raise_version", [([key], [version]) for key in keys])
            return
        script = self._script("raise_version")
        client = self.client
        by_node: dict[str, builtins.list[str]] = {}
        nodes = {}
        for key in keys:
            node = client.get_node_from_key(key)
            by_node.setdefault(node.name, []).append(key)
            nodes[node.name] = node
        for name, node_keys in by_node.items():
            pipe = client.get_redis_connection(nodes[name]).pipeline(transaction=False)
            for key in node_keys:
                script(keys=[key], args=[version], client=pipe)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            confirmed = pipe.execute()[-1]
            if int(confirmed) < self.wait_replicas:
                raise AdapterUnavailable(
                    f"Redis Cluster node {name} of {self.safe_url}: the trigger version "
                    f"reached {confirmed} of the {self.wait_replicas} replicas that "
                    f"wait_replicas asks for within {self.wait_timeout_ms} ms; register again"
                )

    def triggers_version(self) -> int:
        # The version the last mutation of this thread read atomically with its change
        # (used once), else a read of its own.
        seen: int | None = getattr(self._seen, "version", None)
        if seen is not None:
            self._seen.version = None
            return seen
        key = self._layout.triggers_version_key
        return int(self._run("triggers_version", None, lambda: self.client.get(key)) or 0)
