"""What differs between one Redis server (or the master Sentinel names) and a Redis
Cluster, in one place: how a script runs once per bucket, how a write waits for its
replicas, how a failure is reported, and how an operation record is found to settle.

The adapter holds one :class:`OneServer` or :class:`Cluster` and never asks which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from state_tasks.adapters.redis.connection import (
    CLUSTER_BACKOFF_BASE_S,
    CLUSTER_BACKOFF_CAP_S,
    CLUSTER_RETRIES,
    DRIVER_ERRORS,
    UNAVAILABLE,
    is_unavailable,
    node_error,
    tls_refusal,
)
from state_tasks.adapters.redis.layout import BucketLayout, KeyLayout
from state_tasks.adapters.redis.scripts import script_command
from state_tasks.core.connect_errors import is_permanent, likely_cause
from state_tasks.core.errors import AdapterError, AdapterUnavailable, StateError

logger = logging.getLogger(__name__)

#: Redis Cluster: operation records live in their scope's bucket, so settling one needs its
#: key; a process remembers the keys of this many of its recent operations (an operation it
#: forgot is not settled: its record stays whole until it expires, which is correct).
CLUSTER_OP_KEYS_MAX = 4096
#: Redis Cluster: how often, at most, settling warns of the ids it could not settle because
#: the process no longer remembered their records' keys (a count since the last warning).
CLUSTER_FORGOTTEN_LOG_EVERY_S = 60.0

#: One script call: its KEYS and ARGV.
Call = tuple[list[str], list[Any]]


class OneServer:
    """One Redis server, or the master the sentinels name: every key on one connection
    pool, so a script per bucket is a script (there is one bucket, tag ``""``)."""

    cluster = False
    #: Where the keys are (see :mod:`state_tasks.adapters.redis.layout`).
    layout_class: type[KeyLayout] = KeyLayout

    def __init__(
        self,
        client: Callable[[], Any],
        safe_url: str,
        prefix: str,
        wait_replicas: int,
        wait_timeout_ms: int,
    ) -> None:
        self._client = client
        self.safe_url = safe_url
        self.layout = self.layout_class(prefix)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._lock = threading.Lock()

    def eval_each(self, script: Script, calls: Sequence[Call]) -> list[Any]:
        """Run ``script`` once per call (one after the other); their replies."""
        return [script(keys=keys, args=args) for keys, args in calls]

    def eval_each_node(self, what: str, script: Script, calls: Sequence[Call]) -> list[Any]:
        """:meth:`eval_each` for the expiry sweep, which on a cluster goes on while a master
        is down; on one server the same."""
        return self.eval_each(script, calls)

    def write(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a script that writes; with ``wait_replicas``, ``WAIT`` for the replicas.

        ``WAIT`` counts the writes of its own connection, so it rides in one pipeline with
        the script. A write that no replica confirmed in time may be lost in a failover: it
        fails as :class:`AdapterUnavailable`, and the pool is dropped so that the retry
        asks the sentinels anew (the master may be one that was just replaced).
        """
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        client = self._client()
        pipe = client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        reply, confirmed = pipe.execute()
        if int(confirmed) < self.wait_replicas:
            client.connection_pool.disconnect()
            raise AdapterUnavailable(
                f"Redis at {self.safe_url}: the write reached {confirmed} of the "
                f"{self.wait_replicas} replicas that wait_replicas asks for within "
                f"{self.wait_timeout_ms} ms; it is retried (and applied once)"
            )
        return reply

    def raise_trigger_versions(self, script: Script, version: int) -> None:
        """After a trigger change: on one server the scripts read the one counter."""

    def unavailable(self, what: str, scope: str | None, error: BaseException) -> StateError:
        """The error for a server that cannot take the call now."""
        where = f" (scope {scope!r})" if scope is not None else ""
        refused = tls_refusal(error)
        if refused is not None:
            # A certificate that does not verify will not verify on a retry either.
            return AdapterError(
                f"{what}{where}: TLS with Redis at {self.safe_url} failed: {refused}. "
                "Check ssl_ca_certs (the CA that signed the server's certificate) and "
                "that the certificate names the host in redis_url."
            )
        cause = likely_cause(error, self.safe_url)
        if is_permanent(cause):
            # A wrong password or a TLS mismatch will not mend on a retry: say so at once.
            return AdapterError(
                f"{what}{where}: Redis at {self.safe_url} refused the connection: {cause} "
                f"({node_error(error)})"
            )
        if cause is not None:
            return AdapterUnavailable(
                f"{what}{where}: cannot reach Redis at {self.safe_url}: {cause} "
                f"({node_error(error)}); calls are retried"
            )
        return AdapterUnavailable(
            f"{what}{where}: cannot reach Redis at {self.safe_url}: "
            f"{error.__class__.__name__}. Check that the server runs and the URL is "
            "right; calls succeed again once it is back."
        )

    def op_key(self, op_id: str | None, scope: str) -> str:
        """The key of an operation's record (remembered, on a cluster, for settling)."""
        return self.layout.op_key(op_id or "", "")

    def record_to_settle(self, op_id: str) -> tuple[str, str] | None:
        """``(tag, key)`` of a record to settle; ``None`` when it cannot be found."""
        return "", self.layout.op_key(op_id, "")

    def forgotten(self) -> int:
        """How many records could not be settled since the last call (then logged)."""
        return 0


class Cluster(OneServer):
    """A Redis Cluster: every scope in one of 256 buckets (:class:`BucketLayout`), a script
    per bucket in one pipeline (a round trip per master), writes that ``WAIT`` on the
    owning master's own connection, and the keys of recent operation records remembered
    for settling (a record's key holds its bucket's tag, which its id does not)."""

    cluster = True
    layout_class = BucketLayout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: op id -> (tag, key) of this process's recent operation records, oldest first.
        self._op_keys: dict[str, tuple[str, str]] = {}
        #: ids asked to settle that were not among them, since the last count.
        self._forgotten = 0

    def eval_each(self, script: Script, calls: Sequence[Call]) -> list[Any]:
        """One pipeline (about one round trip per master, whatever the number of buckets),
        loading the script on every master first if one lacks it."""
        client = self._client()
        replies: list[Any] = []
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command(*script_command(script, keys, args))
            replies = pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            client.script_load(script.script)  # on every master
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def eval_each_node(self, what: str, script: Script, calls: Sequence[Call]) -> list[Any]:
        """Each master's calls in a pipeline of their own, so the replies of the healthy
        masters are kept. A call that failed (its master does not answer, or its slot
        moved, after the slot map is refreshed once) has ``None`` for its reply; the failed
        buckets are logged once per call, naming their nodes. Raises only when every call
        failed."""
        if not calls:
            return []
        client = self._client()
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        errors: dict[str, tuple[int, BaseException]] = {}  # node -> (calls failed, an error)
        for attempt in range(2):
            errors = {}
            by_node: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                node = client.get_node_from_key(calls[i][0][0])
                by_node.setdefault(node.name, (node, []))[1].append(i)
            for node_name, (node, indexes) in by_node.items():
                try:
                    got = self._eval_on_node(script, node, [calls[i] for i in indexes])
                except DRIVER_ERRORS as e:
                    if not is_unavailable(e):
                        raise
                    errors[node_name] = (len(indexes), e)
                    continue
                for i, reply in zip(indexes, got, strict=True):
                    if isinstance(reply, Exception):
                        if not is_unavailable(reply):
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
            except DRIVER_ERRORS as e:
                if not is_unavailable(e):
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
                    f"node {node} ({failed}): {node_error(error)}"
                    for node, (failed, error) in errors.items()
                ),
            )
        return replies

    def _eval_on_node(self, script: Script, node: Any, calls: Sequence[Call]) -> list[Any]:
        """The script once per call, in one pipeline on ``node``'s connection (loading the
        script there first if it lacks it); the replies, errors among them."""
        connection = self._client().get_redis_connection(node)
        replies: list[Any] = []
        for attempt in range(2):
            pipe = connection.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command(*script_command(script, keys, args))
            replies = pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            connection.script_load(script.script)
        return replies

    def write(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """``wait_replicas`` on a cluster: the script and ``WAIT`` in one pipeline on the
        connection of the master that owns the keys' slot (the cluster client would send
        WAIT to any node). A node that does not answer or a slot that moved (MOVED/ASK)
        refreshes the slot map and is retried, :data:`CLUSTER_RETRIES` times with backoff,
        then fails (as :class:`AdapterUnavailable`)."""
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        client = self._client()
        for attempt in range(CLUSTER_RETRIES + 1):
            node = client.get_node_from_key(keys[0])
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            try:
                reply, confirmed = pipe.execute()
            except UNAVAILABLE as e:
                if attempt == CLUSTER_RETRIES:
                    raise
                logger.info(
                    "Redis Cluster node %s:%s: %s; slot map refreshed, retry %d of %d",
                    node.host,
                    node.port,
                    node_error(e),
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

    def raise_trigger_versions(self, script: Script, version: int) -> None:
        """Raise every bucket's copy of the trigger version (the mutation scripts read
        their bucket's copy: one shared key would be in another slot, and one hot key):
        one pipeline; with ``wait_replicas``, one per master, each ending in ``WAIT`` (a
        copy lost in a failover would leave a worker matching with the triggers of
        before)."""
        keys = [self.layout.version_key(tag) for tag in self.layout.tags]
        if not self.wait_replicas:
            self.eval_each(script, [([key], [version]) for key in keys])
            return
        client = self._client()
        by_node: dict[str, list[str]] = {}
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

    def unavailable(self, what: str, scope: str | None, error: BaseException) -> StateError:
        """The error for a cluster node that cannot take the call now, naming it."""
        if tls_refusal(error) is not None:
            return super().unavailable(what, scope, error)
        where = f" (scope {scope!r})" if scope is not None else ""
        node = self._node_of(scope) if scope is not None else None
        at = f"node {node} of " if node else ""
        logger.warning(
            "%s%s: Redis Cluster %s%s unavailable after %d retries: %s",
            what,
            where,
            at,
            self.safe_url,
            CLUSTER_RETRIES,
            node_error(error),
        )
        return AdapterUnavailable(
            f"{what}{where}: Redis Cluster {at}{self.safe_url} is unavailable: "
            f"{node_error(error)}. Check that its nodes run (a master that died is replaced "
            "by its replica after cluster-node-timeout); calls succeed again once it is back."
        )

    def _node_of(self, scope: str) -> str | None:
        """``host:port`` of the master holding ``scope`` in the client's slot map (no I/O)."""
        try:
            node = self._client().get_node_from_key(self.layout.scope_key(scope))
        except Exception:  # only for a message: no map, no name
            return None
        return f"{node.host}:{node.port}" if node is not None else None

    def op_key(self, op_id: str | None, scope: str) -> str:
        tag = self.layout.tag(scope)
        key = self.layout.op_key(op_id or "", tag)
        if op_id is not None:
            with self._lock:
                known = self._op_keys
                known.pop(op_id, None)
                known[op_id] = (tag, key)
                if len(known) > CLUSTER_OP_KEYS_MAX:
                    del known[next(iter(known))]
        return key

    def record_to_settle(self, op_id: str) -> tuple[str, str] | None:
        """The record of an operation this process made recently; ``None`` (counted, see
        :meth:`forgotten`) for one it did not or no longer remembers: it stays whole until
        it expires, which is correct."""
        with self._lock:
            known = self._op_keys.pop(op_id, None)
            if known is None:
                self._forgotten += 1
            return known

    def forgotten(self) -> int:
        with self._lock:
            count, self._forgotten = self._forgotten, 0
            return count
