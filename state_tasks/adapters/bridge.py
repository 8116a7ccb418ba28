"""Bridge: forward every state operation to a remote deployment of state_tasks.

The adapter knows nothing of Celery: it is handed a ``remote`` callable that runs one
remote state function (``remote("state::get", {"scope": ..., "key": ...})``) and returns
its JSON result or raises a :class:`~state_tasks.core.errors.StateError`. The Celery client
behind it lives in :mod:`state_tasks.remote`.

Each operation costs one round trip to the remote. The remote fires its own triggers;
this side fires the local ones from the old and new values the remote returned. Local
triggers are kept in this process (the remote's trigger registry is the remote's), so a
worker using the Bridge registers them at start-up like any KvStore worker.

One limit of forwarding: the remote answers ``old_value: null`` both for a new key and for
a key that held JSON ``null``, so a change of a key that held ``null`` fires
``state:created`` locally.

Versions and expiry: ``if_version``, ``ttl_ms`` and ``with_version`` are forwarded, and the
remote's versions come back in its answers (a ``VERSION_CONFLICT`` arrives as the same
error). The remote's ``state::delete`` answers with the deleted value only, so a local
``state:deleted`` event carries the version deleted only when the call gave ``if_version``
(else ``0``). Keys expire on the remote, whose workers fire the ``reason: "expired"``
events; the local side cannot see them and fires no local trigger for an expiry.

Applied operations: the remote records them (see below). This side also keeps its own
records in this process, like a KvStore: the remote's result while the local trigger work
is not yet sent (so that a retry after a failed local dispatch sends the local triggers
with the values the remote returned, even if the remote has settled its record since),
then a marker. A remote that answers a repeat with ``replayed`` (its record is settled;
this process had none, e.g. after a restart) makes the repeat a settled one here too,
with the versions the remote answered.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import (
    Callable,
    Mapping,
    Sequence,
)
from typing import Any

from state_tasks.adapters.base import (
    DEFAULT_MAX_VALUE_BYTES,
    BatchChange,
    Change,
    Entry,
    OperationSettled,
    VersionedStateAdapter,
)
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.records import (
    BATCH_RECORD,
    DEFAULT_MAX_OPS,
    OpRecord,
    OpRecords,
    batch_record,
    default_op_window_s,
    parse_versioned_batch_record,
)
from state_tasks.core.batch import (
    BatchOp,
    BatchResult,
    VersionedBatchResult,
    apply_batch_versioned,
    batch_keys,
    batch_operation_error,
    decode_cursor,
    encode_cursor,
)
from state_tasks.core.changes import (
    AT_END,
    ChangeLogSettings,
    ChangesCompacted,
    ChangesPage,
    change_log_off,
)
from state_tasks.core.codec import (
    apply_ops_json,
    decode,
    dumps,
    unstorable,
    writable,
)
from state_tasks.core.errors import (
    StateError,
    ValidationError,
    version_conflict,
)
from state_tasks.core.ops import Op

#: Runs one remote state function: ``(function_id, payload, op_id or None) -> result``.
RemoteCall = Callable[[str, Mapping[str, Any], str | None], Any]


def _text(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _options(if_version: int | None = None, ttl_ms: int | None = None) -> dict[str, int]:
    """The optional arguments given, as the remote's payload takes them."""
    given = {"if_version": if_version, "ttl_ms": ttl_ms}
    return {name: value for name, value in given.items() if value is not None}


def _version_of(result: Any) -> int | None:
    version = result.get("version") if isinstance(result, Mapping) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _settled_versions(
    answer: Mapping[str, Any], operations: Sequence[BatchOp] | None
) -> tuple[int, ...] | None:
    """The versions a remote's settled repeat answered (none when it did not give them
    all: a remote whose records settled before they kept versions)."""
    if operations is None:
        version = _version_of(answer)
        return None if version is None else (version,)
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != len(operations):
        return None
    versions = []
    for op, result in zip(operations, results, strict=True):
        if op.kind != "delete":
            version = _version_of(result)
            if version is None:
                return None
            versions.append(version)
    return tuple(versions)


def _wire_ops(ops: Sequence[Op]) -> builtins.list[dict[str, Any]]:
    """Update ops as the remote takes them. An op that JSON cannot carry (possible only from
    Python: an integer over 4,300 digits, a lone surrogate) could not reach the remote; it
    is the UPDATE_OP_ERROR the other adapters give for the value it would make."""
    wire = []
    for index, op in enumerate(ops):
        form = op.to_wire_form()
        try:
            writable(form, what="updated value")
        except ValidationError as e:
            raise unstorable(index, ops, e) from None
        wire.append(form)
    return wire


def _forwarded(index: int, op: BatchOp) -> dict[str, Any]:
    """A batch operation as the remote's ``state::batch`` takes it."""
    options = _options(op.if_version, op.ttl_ms)
    if op.kind == "set":
        return {"op": "set", "key": op.key, "value": decode(op.value_json), **options}
    if op.kind == "update":
        try:
            ops = _wire_ops(op.ops)
        except StateError as e:
            raise batch_operation_error(index, op.key, e) from None
        return {"op": "update", "key": op.key, "ops": ops, **options}
    return {"op": "delete", "key": op.key, **options}


class Bridge(VersionedStateAdapter):
    """State kept by a remote deployment, reached through its broker.

    :param remote: runs one remote state function and returns its result.
    :param remote_name: how errors name the remote (no password).
    :param op_window_s: how long this side remembers an applied operation.
    """

    process_local = True  # the local trigger space lives in this process
    knows_null_from_missing = False
    supports_versions = True
    supports_change_log = True  # the remote's, read through it
    change_log = ChangeLogSettings()

    def __init__(
        self,
        *,
        remote: RemoteCall,
        remote_name: str = "the remote deployment",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        op_window_s: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.remote = remote
        self._on_close = on_close
        self.remote_name = remote_name
        self.op_window_s = default_op_window_s() if op_window_s is None else op_window_s
        self._local_triggers = KvStore(op_window_s=self.op_window_s)
        self._ops = OpRecords(self.op_window_s, DEFAULT_MAX_OPS)
        self._ops_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bridge(remote={self.remote_name!r})"

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    # An operation id travels to the remote as the id of the remote task (derived, so that
    # the two deployments' results never share a key): the remote's own record of applied
    # operations then makes a redelivered local task harmless there too.

    def get(self, scope: str, key: str) -> str | None:
        return _text(self.remote("state::get", {"scope": scope, "key": key}, None))

    def get_entry(self, scope: str, key: str) -> Entry | None:
        payload = {"scope": scope, "key": key, "with_version": True}
        found = self.remote("state::get", payload, None)
        if found["version"] == 0:
            return None
        return Entry(dumps(found["value"]), found["version"], found["expires_in_ms"])

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
        done = self._recorded(op_id)
        if done is not None:
            return Change(done[0], value_json, done[3])
        payload: dict[str, Any] = {"scope": scope, "key": key, "value": decode(value_json)}
        payload |= _options(if_version, ttl_ms)
        result = self._applied(op_id, self.remote("state::set", payload, op_id))
        old, version = _text(result["old_value"]), int(result.get("version") or 0)
        self._record(op_id, old, value_json, version)
        return Change(old, value_json, version)

    def delete_versioned(
        self, scope: str, key: str, op_id: str | None = None, *, if_version: int | None = None
    ) -> Change:
        # A settled repeat answers null, like an absent key: neither has local work to send.
        done = self._recorded(op_id)
        if done is not None:
            return Change(done[0], None, done[3])
        payload = {"scope": scope, "key": key} | _options(if_version)
        old = _text(self.remote("state::delete", payload, op_id))
        version = 0 if old is None else if_version or 0
        self._record(op_id, old, None, version)
        return Change(old, None, version)

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
        done = self._recorded(op_id)
        if done is not None and done[1] is not None:
            return Change(done[0], done[1], done[3])
        try:
            wire = _wire_ops(ops)
        except StateError as unsendable:
            update = BatchOp("update", key, ops=tuple(ops), if_version=if_version)
            raise self._judged_here(scope, [update], unsendable, batch=False) from None
        payload: dict[str, Any] = {"scope": scope, "key": key}
        payload |= {"ops": wire} | _options(if_version, ttl_ms)
        result = self._applied(op_id, self.remote("state::update", payload, op_id))
        old, new = _text(result["old_value"]), dumps(result["new_value"])
        version = int(result.get("version") or 0)
        self._record(op_id, old, new, version)
        return Change(old, new, version)

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        values = self.remote("state::get_many", {"scope": scope, "keys": list(keys)}, None)
        return [_text(value) for value in values]

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        results = self.batch_versioned(scope, operations, op_id).results
        return [(old, new) for old, new, _ in results]

    def _judged_here(
        self,
        scope: str,
        operations: Sequence[BatchOp],
        unsendable: StateError,
        *,
        batch: bool = True,
    ) -> StateError:
        """The answer to operations whose last cannot be sent (its ops hold what JSON cannot
        carry: only from Python), in the order every adapter checks: each operation's
        ``if_version``, then its ops, on the versions and values the remote holds now (read
        here; nothing is written, so the answer is that of this moment). ``unsendable`` when
        every check passes. ``batch``: the operations are a batch's (else one update)."""
        before: dict[str, tuple[str, int] | None] = {}
        for key in batch_keys(operations):
            found = self.remote(
                "state::get", {"scope": scope, "key": key, "with_version": True}, None
            )
            version = int(found["version"])
            before[key] = None if version == 0 else (dumps(found["value"]), version)
        try:
            if batch:
                highest = max((entry[1] for entry in before.values() if entry), default=0)
                given = itertools.count(highest + 1)
                apply_batch_versioned(
                    scope, before, operations, self.max_value_bytes, given.__next__
                )
            else:
                (op,) = operations
                current = before[op.key]
                version = 0 if current is None else current[1]
                if op.if_version is not None and op.if_version != version:
                    return version_conflict(scope, op.key, op.if_version, version, "state::update")
                text = None if current is None else current[0]
                apply_ops_json(text, op.ops, self.max_value_bytes)
        except StateError as e:
            return e
        return unsendable

    def batch_versioned(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> BatchChange:
        """One remote ``state::batch`` (atomic there); recorded here as one operation."""
        done = self._recorded(op_id)
        if done is not None and done[1] == BATCH_RECORD and done[0] is not None:
            return BatchChange(parse_versioned_batch_record(done[0]), [])
        forwarded = []
        for index, op in enumerate(operations):
            try:
                forwarded.append(_forwarded(index, op))
            except StateError as unsendable:
                raise self._judged_here(scope, operations[: index + 1], unsendable) from None
        payload = {"scope": scope, "operations": forwarded}
        answer = self._applied(op_id, self.remote("state::batch", payload, op_id), operations)
        results: builtins.list[VersionedBatchResult] = []
        for op, result in zip(operations, answer["results"], strict=True):
            if op.kind == "delete":
                old = _text(result)
                results.append((old, None, 0 if old is None else op.if_version or 0))
            else:
                version = int(result.get("version") or 0)
                results.append((_text(result["old_value"]), dumps(result["new_value"]), version))
        if op_id is not None:
            with self._ops_lock:
                self._ops.add(op_id, self._ops.new(batch_record(results), BATCH_RECORD))
        return BatchChange(results, [])

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        # Cursors are signed with a key every deployment shares, so the remote reads ours.
        payload: dict[str, Any] = {"scope": scope, "limit": limit, "with_keys": True}
        if prefix:
            payload["prefix"] = prefix
        if after is not None:
            payload["cursor"] = encode_cursor("list", scope, prefix, after)
        page = self.remote("state::list", payload, None)
        rows = [(item["key"], dumps(item["value"])) for item in page["items"]]
        return rows, page["cursor"] is not None

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        payload: dict[str, Any] = {"limit": limit, "with_counts": with_counts}
        if prefix:
            payload["prefix"] = prefix
        if after is not None:
            payload["cursor"] = encode_cursor("list_groups", "", prefix, after)
        page = self.remote("state::list_groups", payload, None)
        if with_counts:
            rows = [(item["scope"], item["count"]) for item in page["items"]]
        else:
            rows = [(scope, None) for scope in page["items"]]
        return rows, page["cursor"] is not None

    def changes(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        # The remote's log, read through it: cursors are signed with the key every
        # deployment shares, so a position here is the remote's and the cursors the same.
        if self.change_log is None:
            raise change_log_off(type(self).__name__)
        binding = (scope or "", prefix or "")
        payload: dict[str, Any] = {"limit": limit}
        if scope is not None:
            payload["scope"] = scope
        if prefix is not None:
            payload["prefix"] = prefix
        if after == AT_END:
            payload["after"] = AT_END
        elif after is not None:
            payload["after"] = encode_cursor("changes", *binding, after)
        try:
            page = self.remote("state::changes", payload, None)
        except StateError as e:
            oldest = (e.details or {}).get("oldest")
            if e.code == "COMPACTED" and isinstance(oldest, str):
                oldest = decode_cursor("changes", *binding, oldest, "after")
                raise ChangesCompacted(oldest) from None
            raise
        entries = []
        for change in page["changes"]:
            event = dict(change)
            position = decode_cursor("changes", *binding, event.pop("cursor"), "after")
            entries.append((event, position))
        return ChangesPage(entries, decode_cursor("changes", *binding, page["cursor"], "after"))

    def settle(self, op_ids: Sequence[str]) -> None:
        with self._ops_lock:
            self._ops.settle(op_ids)

    def _recorded(self, op_id: str | None) -> OpRecord | None:
        with self._ops_lock:
            return self._ops.find(op_id)

    def _record(self, op_id: str | None, old: str | None, new: str | None, version: int) -> None:
        if op_id is None:
            return
        with self._ops_lock:
            if old is None and new is None:  # a delete of an absent key: nothing to send
                self._ops.mark(op_id, self._ops.expiry())
            else:
                self._ops.add(op_id, self._ops.new(old, new, version))

    @staticmethod
    def _applied(
        op_id: str | None, result: Any, operations: Sequence[BatchOp] | None = None
    ) -> Any:
        """The remote's result, unless it says the operation was applied and settled there
        (then with the versions it answered: a set's or an update's, or a batch's
        ``operations``' sets and updates)."""
        if isinstance(result, Mapping) and result.get("replayed") is True:
            raise OperationSettled(op_id or "", _settled_versions(result, operations))
        return result

    def list(self, scope: str) -> builtins.list[str]:
        values = self.remote("state::list", {"scope": scope}, None)
        return [dumps(value) for value in values]

    def list_groups(self) -> builtins.list[str]:
        return builtins.list(self.remote("state::list_groups", {}, None)["groups"])

    def triggers_load(self) -> dict[str, str]:
        return self._local_triggers.triggers_load()

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        return self._local_triggers.triggers_put(trigger_id, trigger_json)

    def triggers_delete(self, trigger_id: str) -> bool:
        return self._local_triggers.triggers_delete(trigger_id)

    def triggers_version(self) -> int:
        return self._local_triggers.triggers_version()
