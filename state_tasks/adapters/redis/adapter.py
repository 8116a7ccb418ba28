"""The Redis adapter's writes, and the adapter itself.

Every write is one Lua script (``lua/*.lua``): the record of its operation is looked at
first, then ``if_version``, then the change is made with its record, its versions, its
expiry and the indexes, in one atomic step that also reads the triggers' version (which
travels with the :class:`~state_tasks.adapters.base.Change`: matching the change's
triggers costs no read).

``update`` runs the shared Python ops (:func:`state_tasks.core.codec.apply_ops_json`, one
definition for every adapter; Lua's cjson would lose big integers and confuse ``[]`` with
``{}``) inside a check-and-set loop: compute from the old text, and have the script write
only if the key still holds it (else it returns what the key holds now, and the loop
computes again). Without contention that is two round trips (a read, the write), or one
when this process remembers the key's text (:mod:`.recent`). The ops are judged only on a
read that looked at the operation record and ``if_version`` first, so a redelivered
update is answered from its record whatever the key holds now. A batch with updates does
the same for its keys.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from state_tasks.adapters.base import (
    BatchChange,
    Change,
    Expired,
    OperationSettled,
)
from state_tasks.adapters.records import settled_versions
from state_tasks.adapters.redis.changes import ChangeReads
from state_tasks.adapters.redis.expiring import Expiring
from state_tasks.adapters.redis.listing import Listing
from state_tasks.adapters.redis.replies import Reply
from state_tasks.core.batch import (
    BatchOp,
    BatchResult,
    VersionedBatchResult,
    apply_batch,
    apply_batch_versioned,
    batch_conflict,
    batch_keys,
)
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import StateError, version_conflict
from state_tasks.core.ops import Op


def _arg(number: int | None) -> str:
    """An optional number as a script argument ('' for none)."""
    return "" if number is None else str(number)


class _Applied(Exception):
    """A repeat of an operation whose whole record a read found: its fields (``HGETALL``
    of the record: ``o``/``n``/``v``, or a batch's ``c`` and numbered ones)."""

    def __init__(self, record: dict[str, str]) -> None:
        super().__init__("applied before")
        self.record = record


def _record_fields(flat: Any) -> dict[str, str]:
    """A record as ``HGETALL`` returned it (a flat list, or a dict), as a dict."""
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisAdapter(Listing, Expiring, ChangeReads):
    """State in Redis, shared by every worker process on every machine.

    Versions and expiry use Redis's own clock (``TIME`` inside the scripts), so workers on
    machines whose clocks disagree still agree on what has expired.

    :param redis_url: ``redis://`` or ``rediss://``, with password and db number if needed;
        ``sentinel://`` (see ``master_name``); or ``redis+cluster://`` /
        ``rediss+cluster://`` with comma-separated seed nodes for a Redis Cluster
        (:mod:`state_tasks.core.cluster`; the keys then use the bucketed layout of
        :mod:`state_tasks.adapters.redis.layout`).
    :param key_prefix: first part of every key (no braces).
    :param max_value_bytes: the largest JSON text of one value, in bytes of UTF-8.
    :param socket_timeout_s: how long a connection or a reply is waited for.
    :param use_functions: run the scripts as the Redis functions of this release's library
        (``FCALL``), which an administrator loads once per release with ``state-tasks redis
        install-functions``; the adapter's user then needs no ``EVALSHA`` or ``SCRIPT``
        (docs/security.md). Without the library, calls fail with an ``ADAPTER_ERROR`` that
        names the command.
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
        as :class:`~state_tasks.core.errors.AdapterUnavailable` (a state task retries it;
        its operation record makes the retry apply nothing twice).
    :param wait_timeout_ms: how long a write waits for ``wait_replicas`` replicas.
    :param cluster: ``True``: ``redis_url`` (``redis://`` or ``rediss://``) is one seed
        node of a Redis Cluster, as if written ``redis+cluster://``.
    :param client: an existing ``redis.Redis`` (or ``redis.cluster.RedisCluster`` with
        ``cluster``) to use instead of ``redis_url`` (tests).

    The options are checked by :class:`~state_tasks.adapters.redis.settings.RedisSettings`
    (which ``state.yaml`` uses too): a wrong one is a
    :class:`~state_tasks.core.errors.ConfigError` naming it. ``RedisAdapter(settings)``
    takes them already checked.
    """

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
        keys = self.mutation_keys(scope, op_id)
        args = [key, value_json, scope, _arg(if_version), _arg(ttl_ms), self._op_ttl(op_id)]
        reply: builtins.list[Any] = self.mutate("set", "set", scope, keys, args, op_id)
        if reply[0] == Reply.SETTLED:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == Reply.VERSION_CONFLICT:
            raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::set")
        self._recent.remember((scope, key), value_json)
        if reply[0] == Reply.APPLIED:
            return Change(reply[1] or None, value_json, int(reply[3]), None, int(reply[2]))
        gone = self._expired(scope, key, reply[4], reply[5])
        return Change(reply[1] or None, value_json, int(reply[3]), gone, int(reply[2]))

    def delete_versioned(
        self, scope: str, key: str, op_id: str | None = None, *, if_version: int | None = None
    ) -> Change:
        keys = self.mutation_keys(scope, op_id)
        args = [key, scope, _arg(if_version), self._op_ttl(op_id)]
        reply: builtins.list[Any] = self.mutate("delete", "delete", scope, keys, args, op_id)
        if reply[0] == Reply.SETTLED:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == Reply.VERSION_CONFLICT:
            raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::delete")
        self._recent.remember((scope, key), None)
        gone = None if reply[0] == Reply.APPLIED else self._expired(scope, key, *reply[4:6])
        return Change(reply[1] or None, None, int(reply[3]), gone, int(reply[2]))

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
            self._recent.forget((scope, key))
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
        keys = self.mutation_keys(scope, op_id)
        slot = (scope, key)
        # A remembered value only saves the first read: ops that fail on it are judged
        # again on a fresh read (the record, then if_version, then the ops).
        guessed = slot in self._recent
        old = (
            self._recent.get(slot) if guessed else self._update_start(scope, key, op_id, if_version)
        )
        while True:
            try:
                new = apply_ops_json(old, ops, self.max_value_bytes)
            except StateError:
                self._recent.forget(slot)
                if not guessed:
                    raise
                guessed, old = False, self._update_start(scope, key, op_id, if_version)
                continue
            args = [key, "1" if old is None else "0", old or "", new, scope]
            args += [_arg(if_version), _arg(ttl_ms), self._op_ttl(op_id)]
            reply: list[Any] = self.mutate("update", "check_and_set", scope, keys, args, op_id)
            if reply[0] == Reply.WRITTEN:
                self._recent.remember(slot, new)
                gone = self._expired(scope, key, *reply[3:5])
                return Change(old, new, int(reply[2]), gone, int(reply[1]))
            self._recent.forget(slot)
            if reply[0] == Reply.APPLIED:  # by an earlier delivery of the same task
                return Change(reply[1] or None, reply[2], int(reply[3]))
            if reply[0] == Reply.SETTLED:
                raise OperationSettled(op_id or "", settled_versions(reply[1]))
            if reply[0] == Reply.VERSION_CONFLICT:
                raise version_conflict(scope, key, if_version or 0, int(reply[1]), "state::update")
            # MOVED_ON: the script found no record and if_version matching, so the ops are
            # judged on the value it returned.
            guessed, old = False, reply[1] or None  # Lua false -> None: deleted meanwhile

    def _read_for_write(
        self, scope: str, keys: Sequence[str], op_id: str | None
    ) -> tuple[builtins.list[str | None], builtins.list[int], int]:
        """The live texts and versions of ``keys`` and the scope's version counter, read in
        one step after the operation record: a whole record raises :class:`_Applied`, a
        settled one :class:`OperationSettled`. Carries the records waiting to be settled
        (not waited for with ``wait_replicas``: a settle lost in a failover leaves a whole
        record, which answers a repeat all the same)."""
        script = self.script("read_for_write")
        tag = self.layout.tag(scope)
        settles = self._take_settles(tag)
        names = [*self.layout.read_keys(scope), self._topology.op_key(op_id, scope), *settles]
        args = ["" if op_id is None else "1", *keys]
        try:
            reply = self.run("update", scope, lambda: script(keys=names, args=args))
        except BaseException:
            self._requeue_settles(tag, settles)
            raise
        if reply[0] == Reply.APPLIED:
            raise _Applied(_record_fields(reply[1]))
        if reply[0] == Reply.SETTLED:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        texts = [text or None for text in reply[1]]
        return texts, [int(version) for version in reply[2]], int(reply[3])

    def _update_start(
        self, scope: str, key: str, op_id: str | None, if_version: int | None
    ) -> str | None:
        """What an update computes from: the key's text, read after its operation record
        and checked against its if_version (a conflict raises)."""
        texts, versions, _ = self._read_for_write(scope, [key], op_id)
        if if_version is not None and if_version != versions[0]:
            raise version_conflict(scope, key, if_version, versions[0], "state::update")
        return texts[0]

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        results = self.batch_versioned(scope, operations, op_id).results
        return [(old, new) for old, new, _ in results]

    def batch_versioned(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> BatchChange:
        """One script writes the whole batch (one scope is one hash slot).

        A batch of sets and deletes is one round trip: the script looks at the operation
        record, checks each ``if_version`` and reports the old values. A batch with updates
        first reads (after the operation record) its keys' texts and versions, checks the
        operations on them in order (each its ``if_version``, then its ops: the first that
        fails is the answer, as on every adapter), and has the script write the new values
        only if those keys still hold what was read (else it reads and checks again), as
        ``update`` does.
        """
        keys = self.mutation_keys(scope, op_id)
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
                if reply[0] != Reply.MOVED_ON:
                    break
        except _Applied as done:
            reply = [Reply.APPLIED, done.record]
        finally:
            for key in distinct:
                self._recent.forget((scope, key))
        if reply[0] == Reply.SETTLED:
            raise OperationSettled(op_id or "", settled_versions(reply[1]))
        if reply[0] == Reply.VERSION_CONFLICT:
            index, expected, current = (int(n) for n in reply[1:4])
            raise batch_conflict(index, scope, operations[index].key, expected, current)
        if reply[0] == Reply.APPLIED:  # by an earlier delivery of the same task
            record = _record_fields(reply[1])
            return BatchChange(
                [
                    (record.get(f"o{i}"), record.get(f"n{i}"), int(record.get(f"v{i}", 0)))
                    for i in range(1, int(record["c"]) + 1)
                ],
                [],
            )
        gone = [Expired(scope, key, text, int(version)) for key, text, version in reply[4]]
        versioned: builtins.list[VersionedBatchResult] = [
            (old or None, new, int(version))
            for old, version, (_, new) in zip(reply[2], reply[3], results, strict=True)
        ]
        return BatchChange(versioned, gone, int(reply[1]))

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
    ) -> builtins.list[Any]:
        """One run of the batch script with the ``results`` computed from ``before``."""
        checked = any(op.kind == "update" for op in operations)
        args = [scope, self._op_ttl(op_id), str(len(distinct) if checked else 0)]
        for key in distinct if checked else ():
            old = before[key]
            args += [key, "1" if old is None else "0", old or ""]
        for op, (_, new) in zip(operations, results, strict=True):
            kind = "d" if new is None else "s" if op.kind == "set" else "u"
            args += [kind, op.key, new or "", _arg(op.if_version), _arg(op.ttl_ms)]
        return self.mutate("batch", "batch", scope, keys, args, op_id)  # type: ignore[no-any-return]

    def _op_ttl(self, op_id: str | None) -> str:
        return "" if op_id is None else str(max(1, round(self.op_window_s)))

    # -- the reserved trigger space ---------------------------------------------------

    def triggers_load(self) -> dict[str, str]:
        key = self.layout.triggers_key
        return self.run("triggers_load", None, lambda: self.client.hgetall(key))  # type: ignore[no-any-return]

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        return self._trigger_change("triggers_put", "trigger_put", [trigger_id, trigger_json])

    def triggers_delete(self, trigger_id: str) -> bool:
        return self._trigger_change("triggers_delete", "trigger_delete", [trigger_id])

    def _trigger_change(self, what: str, name: str, args: builtins.list[str]) -> bool:
        """Change the triggers hash and bump the version in the same script.

        On a cluster the mutation scripts read their bucket's copy of the version, so after
        the hash and its counter every copy is raised to the new version before this
        returns (:meth:`~state_tasks.adapters.redis.topology.Cluster.raise_trigger_versions`).
        A change that runs meanwhile in a bucket not yet raised matches with the triggers
        of before: it ran before the registration returned, as on one server a change just
        before the ``INCR`` does. A raise that fails (a node down) fails the call;
        registering again raises every copy (a copy is raised, never lowered).
        """
        script = self.script(name)
        keys = [self.layout.triggers_key, self.layout.triggers_version_key]
        changed, version = self.run(what, None, lambda: self._topology.write(script, keys, args))
        raise_version = self.script("raise_version")
        self.run(
            what, None, lambda: self._topology.raise_trigger_versions(raise_version, int(version))
        )
        return bool(changed)

    def triggers_version(self) -> int:
        key = self.layout.triggers_version_key
        return int(self.run("triggers_version", None, lambda: self.client.get(key)) or 0)
