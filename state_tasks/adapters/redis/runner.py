"""What every part of the Redis adapter runs on: the client, the scripts, the translation
of driver errors, and the records waiting to be settled.

:class:`RedisRunner` is the base of :class:`state_tasks.adapters.redis.RedisAdapter`; the
reads (:mod:`.listing`), the expiry (:mod:`.expiring`) and the writes (:mod:`.adapter`)
are its subclasses' methods, each calling :meth:`RedisRunner.run` (one call, its errors
made :class:`~state_tasks.core.errors.AdapterError` or
:class:`~state_tasks.core.errors.AdapterUnavailable`) and :meth:`RedisRunner.mutate` (a
script that changes a scope, carrying the records to settle).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.cluster
from redis.commands.core import Script

from state_tasks.adapters.base import VersionedStateAdapter
from state_tasks.adapters.redis import scripts
from state_tasks.adapters.redis.connection import (
    DRIVER_ERRORS,
    is_unavailable,
    node_error,
)
from state_tasks.adapters.redis.layout import KeyLayout
from state_tasks.adapters.redis.recent import RecentValues
from state_tasks.adapters.redis.settings import RedisSettings
from state_tasks.adapters.redis.topology import (
    CLUSTER_FORGOTTEN_LOG_EVERY_S,
    CLUSTER_OP_KEYS_MAX,
    Call,
    Cluster,
    OneServer,
)
from state_tasks.core.changes import ChangeLogSettings
from state_tasks.core.errors import AdapterError, StateError

logger = logging.getLogger("state_tasks.adapters.redis")

#: Records to settle wait for the next write of this process to carry them (no round trip
#: of their own) unless this many are waiting.
SETTLE_BATCH_MAX = 64


class RedisRunner(VersionedStateAdapter):
    """The client, scripts and settling of a Redis adapter (see
    :class:`state_tasks.adapters.redis.RedisAdapter` for the parameters)."""

    supports_versions = True
    supports_change_log = True

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
        **options: Any,
    ) -> None:
        self.settings = settings = RedisSettings.given(settings, options)
        self.target = settings.target()
        redis_url, key_prefix = settings.redis_url, settings.key_prefix
        wait_replicas, wait_timeout_ms = settings.wait_replicas, settings.wait_timeout_ms
        master_name, max_value_bytes = settings.master_name, settings.max_value_bytes
        self.redis_url = redis_url
        self.safe_url = self.target.safe_url
        self.master_name = master_name
        self.key_prefix = key_prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.max_value_bytes = max_value_bytes
        self.op_window_s = settings.op_window_s
        topology = Cluster if self.target.cluster_target is not None else OneServer
        self._topology: OneServer = topology(
            lambda: self.client, self.safe_url, key_prefix, wait_replicas, wait_timeout_ms
        )
        self.layout: KeyLayout = self._topology.layout
        self._client: Any = client
        self._client_lock = threading.Lock()
        self._scripts: dict[str, Script] = {}
        self.change_log: ChangeLogSettings | None = ChangeLogSettings()
        self._recent = RecentValues()
        # Op record keys to settle, by tag, carried by the next mutation script of the same
        # tag (see settle).
        self._to_settle: dict[str, list[str]] = {}
        self._to_settle_lock = threading.Lock()
        self._forgotten_logged_at = float("-inf")
        self._forgotten_since = 0

    @property
    def is_cluster(self) -> bool:
        """True on a Redis Cluster (the bucketed layout of
        :mod:`state_tasks.adapters.redis.layout`)."""
        return self._topology.cluster

    def __repr__(self) -> str:
        cluster = ", cluster" if self.is_cluster else ""
        return f"RedisAdapter(redis_url={self.safe_url!r}, key_prefix={self.key_prefix!r}{cluster})"

    # -- the client and the scripts ---------------------------------------------------

    @property
    def client(self) -> Any:
        """The process's client and connection pool, created on first use: a
        ``redis.Redis``, or on a cluster a ``redis.cluster.RedisCluster``."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self.target.connect()
        return self._client

    def script(self, name: str) -> Any:
        """The script ``lua/<name>.lua``, registered with the client on first use
        (registering twice, by two threads at once, is harmless)."""
        found: Any = self._scripts.get(name)
        if found is None:
            if self.settings.use_functions:  # (least privilege: FCALL of the installed library)
                found = scripts.FunctionScript(self.client, name)
            else:
                found = scripts.LuaScript(self.client, scripts.source(name))
            self._scripts[name] = found
        return found

    def close(self) -> None:
        if self._client is not None:
            try:
                self._flush_settles()
            except StateError as e:  # they stay whole until they expire
                logger.warning("could not settle operation records on close: %s", e)
            self._client.close()

    # -- running calls ------------------------------------------------------------------

    def run(self, what: str, scope: str | None, call: Callable[[], Any]) -> Any:
        """``call()``, its driver errors made ours: a server that cannot take it now is
        :class:`AdapterUnavailable` (retried), anything else :class:`AdapterError`."""
        try:
            return call()
        except scripts.MissingLibrary as e:
            raise AdapterError(f"{what}: Redis at {self.safe_url}: {e}") from e
        except DRIVER_ERRORS as e:
            missing = scripts.missing_library(e)
            if isinstance(missing, scripts.MissingLibrary):
                raise AdapterError(f"{what}: Redis at {self.safe_url}: {missing}") from e
            if is_unavailable(e):
                raise self._topology.unavailable(what, scope, e) from e
            where = f" (scope {scope!r})" if scope is not None else ""
            if isinstance(e, redis.exceptions.RedisClusterException):  # not a RedisError
                raise AdapterError(
                    f"{what}{where}: the Redis Cluster client refused the call to "
                    f"{self.safe_url}: {node_error(e)}"
                ) from e
            raise AdapterError(
                f"{what}{where}: Redis at {self.safe_url} answered with an error: {e}"
            ) from e

    def eval_each(self, what: str, name: str, calls: Sequence[Call]) -> list[Any]:
        """Script ``name`` once per call (on a cluster: one pipeline)."""
        script = self.script(name)
        return self.run(what, None, lambda: self._topology.eval_each(script, calls))  # type: ignore[no-any-return]

    def mutate(
        self,
        what: str,
        name: str,
        scope: str,
        keys: list[str],
        args: list[Any],
        op_id: str | None,
    ) -> Any:
        """Run a script that changes ``scope`` (KEYS as
        :meth:`~state_tasks.adapters.redis.layout.KeyLayout.mutation_keys` gives them),
        carrying the records waiting to be settled of the scope's tag (KEYS[12..]; on a
        cluster its bucket: one script is one slot), and the change log's arguments after
        ``args``; with ``wait_replicas``, ``WAIT``."""
        script = self.script(name)
        tag = self.layout.tag(scope)
        settles = self._take_settles(tag)
        keys = keys + settles
        args = args + self.log_args(op_id)
        try:
            return self.run(what, scope, lambda: self._topology.write(script, keys, args))
        except BaseException:
            self._requeue_settles(tag, settles)
            raise

    def log_args(self, event_id: str | None) -> list[str]:
        """The last three ARGV of a script that changes a scope: the change's event id ('':
        derived), what the change log keeps ('' and '': no log)."""
        log = self.change_log
        if log is None:
            return ["", "", ""]
        return [event_id or "", str(log.max_entries), str(log.max_age_s * 1000)]

    def mutation_keys(self, scope: str, op_id: str | None) -> list[str]:
        """KEYS[1..11] of a script that changes ``scope``, its op record remembered for
        settling on a cluster. With the change log off, KEYS[11] is the log's gap counter
        instead of the log: the script counts its unlogged changes there, so a reader of
        the log is told of them (see :mod:`state_tasks.adapters.redis.changes`)."""
        keys = self.layout.mutation_keys(scope, op_id)
        keys[3] = self._topology.op_key(op_id, scope)
        if self.change_log is None:
            keys[10] = self.layout.log_gaps_key(self.layout.tag(scope))
        return keys

    # -- settling ---------------------------------------------------------------------

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
                found = self._topology.record_to_settle(op_id)
                if found is not None:
                    tag, key = found
                    self._to_settle.setdefault(tag, []).append(key)
            full = sum(map(len, self._to_settle.values())) >= SETTLE_BATCH_MAX
        self._warn_forgotten()
        if full:
            self._flush_settles()

    def _warn_forgotten(self) -> None:
        self._forgotten_since += self._topology.forgotten()
        now = time.monotonic()
        if not self._forgotten_since or now - self._forgotten_logged_at < (
            CLUSTER_FORGOTTEN_LOG_EVERY_S
        ):
            return
        logger.warning(
            "Redis Cluster %s: %d operation records not settled: this process no longer "
            "knew their keys (it remembers its last %d operations); they stay whole "
            "until they expire (logged at most every %.0f s)",
            self.safe_url,
            self._forgotten_since,
            CLUSTER_OP_KEYS_MAX,
            CLUSTER_FORGOTTEN_LOG_EVERY_S,
        )
        self._forgotten_since, self._forgotten_logged_at = 0, now

    def _flush_settles(self) -> None:
        with self._to_settle_lock:
            waiting, self._to_settle = self._to_settle, {}
        if not waiting:
            return
        try:
            self.eval_each("settle", "settle", [(keys, []) for keys in waiting.values()])
        except BaseException:
            for tag, keys in waiting.items():
                self._requeue_settles(tag, keys)
            raise

    def _take_settles(self, tag: str) -> list[str]:
        with self._to_settle_lock:
            return self._to_settle.pop(tag, [])

    def _requeue_settles(self, tag: str, keys: list[str]) -> None:
        if keys:
            with self._to_settle_lock:
                self._to_settle.setdefault(tag, [])[:0] = keys
