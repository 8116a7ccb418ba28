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
(``a:b`` vs ``a`` + ``b:``, prefixes of each other), and the braces are a Redis Cluster
hash tag that keeps every key of a scope in one slot. The groups index is one key, so in
a cluster it lives in one slot of its own; the scripts that touch it would need to move
to a per-slot index there.

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
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.commands.core import Script

from adapters.base import (
    DEFAULT_MAX_VALUE_BYTES,
    OperationSettled,
    StateAdapter,
    default_op_window_s,
)
from state_tasks.core.batch import BatchOp, BatchResult, apply_batch, batch_keys
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import AdapterError, AdapterUnavailable, ConfigError, StateError
from state_tasks.core.ops import Op
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

# Every mutation script also returns the trigger version, read in the same atomic step,
# so matching triggers after a change costs no extra round trip.
#
# Applied operations: with an operation id (the Celery task id), KEYS[4] is
# {prefix}:op:{id} and the last ARGV is its time to live in seconds. The script first
# looks there. A hash is a whole record ('o' old text, 'n' new text, each present when
# there is one): the operation was applied, and the script returns that result and
# changes nothing. A string is a settled record (LUA_SETTLE made it): the script
# changes nothing and says so. Otherwise the whole record is written in the same step as
# the change. Without an id the last ARGV is '' and KEYS[4] is not touched.
#
# KEYS[5] is the scope's key index (a sorted set), kept in step with the hash.
#
# Settling rides along: KEYS[6] onwards name records to settle (as LUA_SETTLE does) before
# anything else, so that settling costs no round trip of its own.
LUA_SETTLE_ONE = """
local function settle(key)
  if redis.call('TYPE', key).ok == 'hash' then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then
      redis.call('SET', key, '1', 'PX', ttl)
      return 1
    end
  end
  return 0
end
"""

LUA_APPLIED = (
    LUA_SETTLE_ONE
    + """
for i = 6, #KEYS do settle(KEYS[i]) end
local function applied()
  if ARGV[#ARGV] == '' then return nil end
  local kind = redis.call('TYPE', KEYS[4]).ok
  if kind == 'hash' then
    local done = redis.call('HMGET', KEYS[4], 'o', 'n')
    return {'whole', done[1], done[2]}
  end
  if kind == 'string' then return {'settled'} end
  return nil
end
local function record(old, new)
  if ARGV[#ARGV] == '' then return end
  if old then redis.call('HSET', KEYS[4], 'o', old) end
  if new then redis.call('HSET', KEYS[4], 'n', new) end
  redis.call('EXPIRE', KEYS[4], ARGV[#ARGV])
end
"""
)

# KEYS[1] scope hash, KEYS[2] groups index, KEYS[3] trigger version, KEYS[4] op record,
# KEYS[5] key index, KEYS[6..] op records to settle; ARGV[1] key, ARGV[2] JSON text,
# ARGV[3] scope, ARGV[4] op ttl or ''.
# Returns {replaced JSON text or false when the key is new, trigger version}, or
# {false, false} when the operation is settled.
LUA_SET = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {false, false} end
if done then return {done[2], redis.call('GET', KEYS[3]) or '0'} end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  -- KEYS[5], the key index, is kept only while it is whole: when it exists, or when the
  -- scope is empty (a scope from before the index is indexed by its first page).
  if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZADD', KEYS[5], 0, ARGV[1])
  end
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
record(old, ARGV[2])
return {old or false, redis.call('GET', KEYS[3]) or '0'}
"""
)

# KEYS[1] scope hash, KEYS[2] groups index, KEYS[3] trigger version, KEYS[4] op record,
# KEYS[5] key index, KEYS[6..] op records to settle; ARGV[1] key, ARGV[2] scope,
# ARGV[3] op ttl or ''.
# Returns {deleted JSON text or false, trigger version}, or {false, false} when the
# operation is settled. A scope left empty leaves the index. A delete of an absent key
# under an id is recorded settled at once: it has no trigger work.
LUA_DELETE = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {false, false} end
if done then return {done[2], redis.call('GET', KEYS[3]) or '0'} end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
  record(old, false)
elseif ARGV[#ARGV] ~= '' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[#ARGV])
end
return {old or false, redis.call('GET', KEYS[3]) or '0'}
"""
)

# KEYS[1] scope hash, KEYS[2] groups index, KEYS[3] trigger version, KEYS[4] op record,
# KEYS[5] key index, KEYS[6..] op records to settle; ARGV[1] key, ARGV[2] "1" if the key was
# absent else "0",
# ARGV[3] expected old text, ARGV[4] new text, ARGV[5] scope, ARGV[6] op ttl or ''.
# Returns {1, trigger version} when written, {0, current text or false} when the value
# moved on, {2, recorded old text or false, recorded new text} when already applied,
# or {3} when already applied and settled.
LUA_CHECK_AND_SET = (
    LUA_APPLIED
    + """
local done = applied()
if done and done[1] == 'settled' then return {3} end
if done then return {2, done[2], done[3]} end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local expected_absent = ARGV[2] == '1'
if (expected_absent and current) or (not expected_absent and current ~= ARGV[3]) then
  return {0, current or false}
end
if expected_absent then
  -- KEYS[5], the key index, is kept only while it is whole: when it exists, or when the
  -- scope is empty (a scope from before the index is indexed by its first page).
  if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZADD', KEYS[5], 0, ARGV[1])
  end
  redis.call('ZADD', KEYS[2], 0, ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
record(current, ARGV[4])
return {1, redis.call('GET', KEYS[3]) or '0'}
"""
)

# KEYS[1] scope hash, KEYS[2] groups index, KEYS[3] trigger version, KEYS[4] op record,
# KEYS[5] key index, KEYS[6..] op records to settle; ARGV[1] scope, ARGV[2] op ttl or '',
# ARGV[3] n, then n checks (key, "1" if expected absent else "0", expected text), then one
# write per operation, in order ("s" or "d", key, new text or '').
# Returns {1, trigger version, {old text or false per operation}} when written; {0, {current
# text or false per checked key}} when a checked key moved on (nothing written); {2, the
# record as HGETALL: 'c' count, 'o<i>'/'n<i>' old/new text of operation i} when already
# applied; {3} when already applied and settled. The record is one hash for the batch.
LUA_BATCH = (
    LUA_APPLIED
    + """
if ARGV[2] ~= '' then
  local kind = redis.call('TYPE', KEYS[4]).ok
  if kind == 'hash' then return {2, redis.call('HGETALL', KEYS[4])} end
  if kind == 'string' then return {3} end
end
local at, conflict, currents = 4, false, {}
for i = 1, tonumber(ARGV[3]) do
  local current = redis.call('HGET', KEYS[1], ARGV[at])
  currents[i] = current or false
  if (ARGV[at + 1] == '1' and current) or (ARGV[at + 1] == '0' and current ~= ARGV[at + 2]) then
    conflict = true
  end
  at = at + 3
end
if conflict then return {0, currents} end
local indexed = redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[1]) == 0
local record = ARGV[2] ~= ''
local olds, i = {}, 0
while at <= #ARGV do
  i = i + 1
  local key = ARGV[at + 1]
  local old = redis.call('HGET', KEYS[1], key)
  if ARGV[at] == 's' then
    redis.call('HSET', KEYS[1], key, ARGV[at + 2])
    if indexed and not old then redis.call('ZADD', KEYS[5], 0, key) end
    if record then redis.call('HSET', KEYS[4], 'n' .. i, ARGV[at + 2]) end
  elseif old then
    redis.call('HDEL', KEYS[1], key)
    redis.call('ZREM', KEYS[5], key)
  end
  if record and old then redis.call('HSET', KEYS[4], 'o' .. i, old) end
  olds[i] = old or false
  at = at + 3
end
if record then
  redis.call('HSET', KEYS[4], 'c', i)
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return {1, redis.call('GET', KEYS[3]) or '0', olds}
"""
)

# KEYS[1] scope hash, KEYS[2] key index; ARGV[1] prefix ('' for every key), ARGV[2] the key
# to continue after, ARGV[3] "1" if there is one, ARGV[4] how many keys at most.
# Returns {keys, their JSON texts} in key order. A scope without an index (written by an
# older release) gets its whole index first.
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
if ARGV[1] ~= '' then high = '[' .. ARGV[1] .. '\255' end
local keys = redis.call('ZRANGEBYLEX', KEYS[2], low, high, 'LIMIT', 0, tonumber(ARGV[4]))
local values = {}
chunks(keys, 1000, function(part)
  for _, value in ipairs(redis.call('HMGET', KEYS[1], unpack(part))) do
    values[#values + 1] = value
  end
end)
return {keys, values}
"""

#: Scripts registered on first use (see RedisAdapter._script).
LAZY_SCRIPTS = {"batch": LUA_BATCH, "page": LUA_PAGE}

# KEYS: op records {prefix}:op:{id}; no ARGV. Each whole record (a hash) becomes the
# string '1' with the time to live it had left: a marker of about 150 bytes of Redis
# memory, whatever the size of the values. Returns how many records were settled.
LUA_SETTLE = (
    LUA_SETTLE_ONE
    + """
local settled = 0
for _, key in ipairs(KEYS) do settled = settled + settle(key) end
return settled
"""
)

# KEYS[1] triggers hash, KEYS[2] version; ARGV[1] id, ARGV[2] JSON. Returns 1 if new.
LUA_TRIGGER_PUT = """
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return added
"""

# KEYS[1] triggers hash, KEYS[2] version; ARGV[1] id. Returns 1 if it existed.
LUA_TRIGGER_DELETE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return removed
"""


def _tls_refusal(error: BaseException) -> str | None:
    """The reason, when a connection failed because a certificate did not verify."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate does not verify ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return None


def _escape(scope: str) -> str:
    return scope.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisAdapter(StateAdapter):
    """State in Redis, shared by every worker process on every machine.

    :param redis_url: ``redis://`` or ``rediss://``, with password and db number if needed.
    :param key_prefix: first part of every key (no braces).
    :param op_window_s: how long an applied operation id is remembered (default: the
        broker's redelivery window, :func:`adapters.base.default_op_window_s`).
    :param ssl_ca_certs: ``rediss://`` only: a PEM file of the CAs to trust (default: the
        system's).
    :param ssl_certfile: ``rediss://`` only: a client certificate (PEM), for a server that
        asks for one (``tls-auth-clients``).
    :param ssl_keyfile: ``rediss://`` only: the client certificate's key (PEM).
    :param ssl_cert_reqs: ``rediss://`` only: ``required`` (the default: the server's
        certificate must verify and name the host), ``optional`` or ``none`` (no checks:
        encrypted, but anyone in the middle can read it).
    :param client: an existing ``redis.Redis`` to use instead of ``redis_url`` (tests).
    """

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
        client: redis.Redis | None = None,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigError(f"key_prefix {key_prefix!r} may not contain braces")
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"redis_url {redact_url(redis_url)!r} must start with redis://, rediss:// or unix://"
            )
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
        if not redis_url.startswith("rediss://") and any(tls_files.values()):
            raise ConfigError(
                f"redis_url {redact_url(redis_url)!r}: ssl_* options need a rediss:// URL"
            )
        self._tls_options: dict[str, Any] = {}
        if redis_url.startswith("rediss://"):
            self._tls_options = {
                **{name: path for name, path in tls_files.items() if path},
                "ssl_cert_reqs": ssl_cert_reqs,
                "ssl_check_hostname": ssl_cert_reqs == "required",
            }
        self.max_value_bytes = max_value_bytes
        self.op_window_s = default_op_window_s() if op_window_s is None else op_window_s
        self.redis_url = redis_url
        self.safe_url = redact_url(redis_url)
        self.key_prefix = key_prefix
        self._socket_timeout_s = socket_timeout_s
        self._client = client
        self._client_lock = threading.Lock()
        self._groups_key = f"{key_prefix}:groups"
        self._triggers_key = f"{key_prefix}:triggers"
        self._version_key = f"{key_prefix}:triggers:version"
        self._scripts: dict[str, Script] = {}
        # (scope, key) -> the JSON text last written or seen there; None: seen absent.
        self._recent: dict[tuple[str, str], str | None] = {}
        self._recent_lock = threading.Lock()
        self._seen = threading.local()
        # Op record keys to settle, carried by the next mutation script (see settle).
        self._to_settle: builtins.list[str] = []
        self._to_settle_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisAdapter(redis_url={self.safe_url!r}, key_prefix={self.key_prefix!r})"

    # -- connection ----------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        """The process's client and connection pool, created on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self.redis_url,
                        decode_responses=True,
                        socket_timeout=self._socket_timeout_s,
                        socket_connect_timeout=self._socket_timeout_s,
                        health_check_interval=30,
                        **self._tls_options,
                    )
                    for name, body in (
                        ("set", LUA_SET),
                        ("delete", LUA_DELETE),
                        ("cas", LUA_CHECK_AND_SET),
                        ("settle", LUA_SETTLE),
                        ("trigger_put", LUA_TRIGGER_PUT),
                        ("trigger_delete", LUA_TRIGGER_DELETE),
                    ):
                        self._scripts[name] = self._client.register_script(body)
        return self._client

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
        except (redis.ConnectionError, redis.TimeoutError) as e:
            where = f" (scope {scope!r})" if scope is not None else ""
            refused = _tls_refusal(e)
            if refused is not None:
                # A certificate that does not verify will not verify on a retry either.
                raise AdapterError(
                    f"{what}{where}: TLS with Redis at {self.safe_url} failed: {refused}. "
                    "Check ssl_ca_certs (the CA that signed the server's certificate) and "
                    "that the certificate names the host in redis_url."
                ) from e
            raise AdapterUnavailable(
                f"{what}{where}: cannot reach Redis at {self.safe_url}: {e.__class__.__name__}. "
                "Check that the server runs and the URL is right; calls succeed again once "
                "it is back."
            ) from e
        except redis.RedisError as e:
            where = f" (scope {scope!r})" if scope is not None else ""
            raise AdapterError(
                f"{what}{where}: Redis at {self.safe_url} answered with an error: {e}"
            ) from e

    def _script(self, name: str) -> Script:
        self.client  # noqa: B018 - registers the scripts on first use
        script = self._scripts.get(name)
        if script is None:  # registering twice (two threads at once) is harmless
            script = self._scripts[name] = self.client.register_script(LAZY_SCRIPTS[name])
        return script

    def _op_key(self, op_id: str | None) -> str:
        return f"{self.key_prefix}:op:{op_id or ''}"

    def _op_ttl(self, op_id: str | None) -> str:
        return "" if op_id is None else str(max(1, round(self.op_window_s)))

    def scope_key(self, scope: str) -> str:
        """The Redis key of a scope's hash."""
        return f"{self.key_prefix}:s:{{{_escape(scope)}}}"

    def index_key(self, scope: str) -> str:
        """The Redis key of a scope's key index (same hash tag: same cluster slot)."""
        return f"{self.key_prefix}:k:{{{_escape(scope)}}}"

    def _mutation_keys(self, scope: str, op_id: str | None) -> builtins.list[str]:
        return [
            self.scope_key(scope),
            self._groups_key,
            self._version_key,
            self._op_key(op_id),
            self.index_key(scope),
        ]

    # -- the contract ----------------------------------------------------------------

    def get(self, scope: str, key: str) -> str | None:
        return cast(
            "str | None",
            self._run("get", scope, lambda: self.client.hget(self.scope_key(scope), key)),
        )

    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        args = [key, value_json, scope, self._op_ttl(op_id)]
        old, version = self._mutate("set", "set", scope, keys, args)
        if version is None:
            raise OperationSettled(op_id or "")
        self._remember((scope, key), value_json)
        self._seen.version = int(version)
        return cast("str | None", old)

    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        args = [key, scope, self._op_ttl(op_id)]
        old, version = self._mutate("delete", "delete", scope, keys, args)
        if version is None:
            raise OperationSettled(op_id or "")
        self._remember((scope, key), None)
        self._seen.version = int(version)
        return cast("str | None", old)

    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        ttl = self._op_ttl(op_id)
        slot = (scope, key)
        guessed = slot in self._recent
        old = self._recent.get(slot) if guessed else self.get(scope, key)
        while True:
            try:
                new = apply_ops_json(old, ops, self.max_value_bytes)
            except StateError:
                self._recent.pop(slot, None)
                if not guessed:
                    raise
                # The ops failed on a remembered value, which may be stale: judge them
                # on the value Redis holds now.
                guessed, old = False, self.get(scope, key)
                continue
            args = [key, "1" if old is None else "0", old or "", new, scope, ttl]
            reply: list[Any] = self._mutate("update", "cas", scope, keys, args)
            if reply[0] == 1:
                self._remember(slot, new)
                self._seen.version = int(reply[1])
                return old, new
            if reply[0] == 2:  # applied before, by an earlier delivery of the same task
                self._recent.pop(slot, None)
                return reply[1] or None, reply[2]
            if reply[0] == 3:  # ... and settled since
                self._recent.pop(slot, None)
                raise OperationSettled(op_id or "")
            guessed, old = False, reply[1] or None  # Lua false -> None: deleted meanwhile

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
        settles the rest.
        """
        with self._to_settle_lock:
            self._to_settle.extend(self._op_key(op_id) for op_id in op_ids)
            full = len(self._to_settle) >= SETTLE_BATCH_MAX
        if full:
            self._flush_settles()

    def _flush_settles(self) -> None:
        keys = self._take_settles()
        if not keys:
            return
        script = self._script("settle")
        try:
            self._run("settle", None, lambda: script(keys=keys, args=[]))
        except BaseException:
            self._requeue_settles(keys)
            raise

    def _take_settles(self) -> builtins.list[str]:
        with self._to_settle_lock:
            keys, self._to_settle = self._to_settle, []
        return keys

    def _requeue_settles(self, keys: builtins.list[str]) -> None:
        if keys:
            with self._to_settle_lock:
                self._to_settle[:0] = keys

    def _mutate(
        self,
        what: str,
        script_name: str,
        scope: str,
        keys: builtins.list[str],
        args: builtins.list[str],
    ) -> Any:
        """Run a mutation script, carrying the records waiting to be settled (KEYS[5..])."""
        script = self._script(script_name)
        settles = self._take_settles()
        try:
            return self._run(what, scope, lambda: script(keys=keys + settles, args=args))
        except BaseException:
            self._requeue_settles(settles)
            raise

    def list(self, scope: str) -> builtins.list[str]:
        return cast(
            "list[str]", self._run("list", scope, lambda: self.client.hvals(self.scope_key(scope)))
        )

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        found = self._run("get_many", scope, lambda: self.client.hmget(self.scope_key(scope), keys))
        return cast("list[str | None]", found)

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        """One Lua script writes the whole batch (one scope is one hash slot).

        A batch of sets and deletes is one round trip: the script reports the old values.
        A batch with updates reads its keys first (HMGET), computes the new values with the
        shared ops, and has the script write them only if those keys still hold what was
        read (else it computes again from what they hold), as ``update`` does.
        """
        self._seen.version = None
        keys = self._mutation_keys(scope, op_id)
        distinct = batch_keys(operations)
        checked = any(op.kind == "update" for op in operations)
        before: dict[str, str | None] = dict.fromkeys(distinct)
        if checked:
            before = dict(zip(distinct, self.get_many(scope, distinct), strict=True))
        while True:
            results = apply_batch(before, operations, self.max_value_bytes)
            args = [scope, self._op_ttl(op_id), str(len(distinct) if checked else 0)]
            for key in distinct if checked else ():
                old = before[key]
                args += [key, "1" if old is None else "0", old or ""]
            for op, (_, new) in zip(operations, results, strict=True):
                args += ["d", op.key, ""] if new is None else ["s", op.key, new]
            reply: builtins.list[Any] = self._mutate("batch", "batch", scope, keys, args)
            if reply[0] == 0:  # a checked key moved on: compute again from what it holds
                before = dict(zip(distinct, (text or None for text in reply[1]), strict=True))
                continue
            for key in distinct:
                self._recent.pop((scope, key), None)
            if reply[0] == 3:
                raise OperationSettled(op_id or "")
            if reply[0] == 2:  # applied before, by an earlier delivery of the same task
                record = dict(zip(reply[1][::2], reply[1][1::2], strict=True))
                count = int(record["c"])
                return [(record.get(f"o{i}"), record.get(f"n{i}")) for i in range(1, count + 1)]
            self._seen.version = int(reply[1])
            return [(old or None, new) for old, (_, new) in zip(reply[2], results, strict=True)]

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        script = self._script("page")
        keys = [self.scope_key(scope), self.index_key(scope)]
        args = [prefix, after or "", "0" if after is None else "1", limit + 1]
        found, texts = self._run("list", scope, lambda: script(keys=keys, args=args))
        rows = [(key, text) for key, text in zip(found, texts, strict=True) if text is not None]
        return rows[:limit], len(found) > limit

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        # Bytes, not str: the upper bound ends in the byte 0xFF, which no UTF-8 text holds.
        low = b"(" + after.encode() if after is not None else b"[" + prefix.encode()
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        scopes = cast(
            "list[str]",
            self._run(
                "list_groups",
                None,
                lambda: self.client.zrangebylex(self._groups_key, low, high, 0, limit + 1),
            ),
        )
        more, scopes = len(scopes) > limit, scopes[:limit]
        counts: builtins.list[int | None] = [None] * len(scopes)
        if with_counts and scopes:
            pipe = self.client.pipeline(transaction=False)
            for scope in scopes:
                pipe.hlen(self.scope_key(scope))
            counts = self._run("list_groups", None, pipe.execute)
        return builtins.list(zip(scopes, counts, strict=True)), more

    def list_groups(self) -> builtins.list[str]:
        groups = self._run("list_groups", None, lambda: self.client.zrange(self._groups_key, 0, -1))
        return cast("list[str]", groups)

    def triggers_load(self) -> dict[str, str]:
        found = self._run("triggers_load", None, lambda: self.client.hgetall(self._triggers_key))
        return cast("dict[str, str]", found)

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        script = self._script("trigger_put")
        keys = [self._triggers_key, self._version_key]
        return bool(
            self._run(
                "triggers_put", None, lambda: script(keys=keys, args=[trigger_id, trigger_json])
            )
        )

    def triggers_delete(self, trigger_id: str) -> bool:
        script = self._script("trigger_delete")
        keys = [self._triggers_key, self._version_key]
        return bool(
            self._run("triggers_delete", None, lambda: script(keys=keys, args=[trigger_id]))
        )

    def triggers_version(self) -> int:
        # The version the last mutation of this thread read atomically with its change
        # (used once), else a read of its own.
        seen: int | None = getattr(self._seen, "version", None)
        if seen is not None:
            self._seen.version = None
            return seen
        return int(
            self._run("triggers_version", None, lambda: self.client.get(self._version_key)) or 0
        )
