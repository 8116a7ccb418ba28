"""KvStore: the embedded store, held in the memory of the one process that owns it."""

from __future__ import annotations

import bisect
import builtins
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from adapters.base import (
    DEFAULT_MAX_VALUE_BYTES,
    OperationSettled,
    StateAdapter,
    default_op_window_s,
)
from state_tasks.core.batch import (
    BatchOp,
    BatchResult,
    apply_batch,
    batch_keys,
    batch_record,
    parse_batch_record,
)
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.ops import Op

#: How many applied operation ids a KvStore remembers at most (the oldest go first).
DEFAULT_MAX_OPS = 100_000

#: A whole record of an applied operation: (old JSON text, new JSON text or None for a
#: delete, monotonic expiry).
OpRecord = tuple[str | None, str | None, float]

#: The "new" text of a batch's whole record, whose "old" text holds the batch's results
#: (:func:`state_tasks.core.batch.batch_record`). Never valid JSON, so never a value.
BATCH_RECORD = "\x00batch"

_R = TypeVar("_R")


class SortedNames:
    """Names in code point order, for pages: finding a page costs O(log n) plus its
    length; adding or removing a name moves the pointers after it (one ``memmove``)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(names)

    def add(self, name: str) -> None:
        at = bisect.bisect_left(self.names, name)
        if at == len(self.names) or self.names[at] != name:
            self.names.insert(at, name)

    def discard(self, name: str) -> None:
        at = bisect.bisect_left(self.names, name)
        if at < len(self.names) and self.names[at] == name:
            del self.names[at]

    def page(self, prefix: str, after: str | None, limit: int) -> tuple[builtins.list[str], bool]:
        """Up to ``limit`` names starting with ``prefix`` after ``after``; and whether more
        follow."""
        start = bisect.bisect_left(self.names, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self.names, after))
        found = []
        for name in self.names[start : start + limit + 1]:
            if not name.startswith(prefix):
                break
            found.append(name)
        return found[:limit], len(found) > limit


class OpRecords:
    """Applied operation ids, bounded by time (``window_s``) and by count (``max_ops``).

    Whole records (with the result) wait in one dict until they are settled; a settled
    operation is a marker in another: its id and its expiry, about 150 bytes in all.
    Both dicts are ordered oldest first. Not thread-safe: the owner holds its lock.
    """

    def __init__(self, window_s: float, max_ops: int) -> None:
        self.window_s = window_s
        self.max_ops = max_ops
        #: op id -> whole record: applied, trigger work not yet known to be sent.
        self.whole: dict[str, OpRecord] = {}
        #: op id -> monotonic expiry: applied and settled.
        self.settled: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.whole) + len(self.settled)

    def find(self, op_id: str | None) -> OpRecord | None:
        """The whole record of ``op_id``, or ``None`` if it is unknown or expired.

        Raises :class:`OperationSettled` when it is settled and not yet expired.
        """
        if op_id is None:
            return None
        now = time.monotonic()
        record = self.whole.get(op_id)
        if record is not None and record[2] > now:
            return record
        expires = self.settled.get(op_id)
        if expires is not None and expires > now:
            raise OperationSettled(op_id)
        return None

    def expiry(self) -> float:
        """The monotonic time until which an operation applied now is remembered."""
        return time.monotonic() + self.window_s

    def new(self, old: str | None, new: str | None) -> OpRecord:
        """A whole record for an operation applied now."""
        return (old, new, self.expiry())

    def add(self, op_id: str, record: OpRecord) -> None:
        """Remember a whole record (once its change is made)."""
        _trim(self.whole, self.max_ops, lambda r: r[2])
        self.whole[op_id] = record

    def mark(self, op_id: str, expires: float) -> None:
        """Remember ``op_id`` as settled until ``expires`` (monotonic), dropping its record."""
        self.whole.pop(op_id, None)
        _trim(self.settled, self.max_ops, lambda e: e)
        self.settled[op_id] = expires

    def settle(self, op_ids: Iterable[str]) -> builtins.list[tuple[str, float]]:
        """Turn the whole records of ``op_ids`` into markers; return the ``(id, expiry)`` moved."""
        moved = []
        for op_id in op_ids:
            record = self.whole.get(op_id)
            if record is not None:
                self.mark(op_id, record[2])
                moved.append((op_id, record[2]))
        return moved


def _trim(records: dict[str, _R], max_ops: int, expiry: Callable[[_R], float]) -> None:
    """Forget the expired records at the head, and the oldest beyond ``max_ops - 1``."""
    now = time.monotonic()
    while records:
        oldest_id, oldest = next(iter(records.items()))
        if expiry(oldest) > now and len(records) < max_ops:
            return
        del records[oldest_id]


class KvStore(StateAdapter):
    """Scopes as dicts of JSON text, guarded by one lock.

    Lives in one process: a worker using it must run a threads or solo pool
    (the default configuration does), never several prefork children, each of
    which would otherwise hold a separate store.

    :param op_window_s: how long an applied operation id is remembered (default: the
        broker's redelivery window, :func:`adapters.base.default_op_window_s`).
    :param max_ops: how many applied operation ids are remembered at most.
    """

    ordered_list = True
    process_local = True

    def __init__(
        self,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        op_window_s: float | None = None,
        max_ops: int = DEFAULT_MAX_OPS,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.op_window_s = default_op_window_s() if op_window_s is None else op_window_s
        self.max_ops = max_ops
        self._ops = OpRecords(self.op_window_s, max_ops)
        self._scopes: dict[str, dict[str, str]] = {}
        # Sorted names for pages, built by the first page of a scope (or of list_groups)
        # and kept up to date from then on: a store never paged pays nothing for them.
        self._sorted_keys: dict[str, SortedNames] = {}
        self._sorted_scopes: SortedNames | None = None
        self._triggers: dict[str, str] = {}
        self._triggers_version = 0
        # Re-entrant so that subclasses may call back into these methods under it.
        self._lock = threading.RLock()

    def get(self, scope: str, key: str) -> str | None:
        entries = self._scopes.get(scope)
        return None if entries is None else entries.get(key)

    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None:
                return done[0]
            old = self.get(scope, key)
            record = self._ops.new(old, value_json)
            self._changed(scope, key, value_json, op_id, record[2])
            self._put(scope, key, value_json)
            if op_id is not None:
                self._ops.add(op_id, record)
            return old

    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None:
                return done[0]
            entries = self._scopes.get(scope)
            if entries is None or key not in entries:
                if op_id is not None:  # nothing to send: settled at once
                    self._settled_at_once(op_id, self._ops.expiry())
                return None
            record = self._ops.new(entries[key], None)
            self._changed(scope, key, None, op_id, record[2])
            old = self._remove(scope, key)
            if op_id is not None:
                self._ops.add(op_id, record)
            return old

    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None and done[1] is not None:
                return done[0], done[1]
            old = self.get(scope, key)
            new = apply_ops_json(old, ops, self.max_value_bytes)
            record = self._ops.new(old, new)
            self._changed(scope, key, new, op_id, record[2])
            self._put(scope, key, new)
            if op_id is not None:
                self._ops.add(op_id, record)
            return old, new

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        with self._lock:
            entries = self._scopes.get(scope, {})
            return [entries.get(key) for key in keys]

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None and done[1] == BATCH_RECORD and done[0] is not None:
                return parse_batch_record(done[0])
            entries = self._scopes.get(scope, {})
            before = {key: entries.get(key) for key in batch_keys(operations)}
            results = apply_batch(before, operations, self.max_value_bytes)
            record = self._ops.new(batch_record(results), BATCH_RECORD)
            self._batch_changed(scope, operations, results, op_id, record[2])
            for op, (old, new) in zip(operations, results, strict=True):
                if new is not None:
                    self._put(scope, op.key, new)
                elif old is not None:
                    self._remove(scope, op.key)
            if op_id is not None:
                self._ops.add(op_id, record)
            return results

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        with self._lock:
            entries = self._scopes.get(scope)
            if not entries:
                return [], False
            names = self._sorted_keys.get(scope)
            if names is None:
                names = self._sorted_keys[scope] = SortedNames(entries)
            keys, more = names.page(prefix, after, limit)
            return [(key, entries[key]) for key in keys], more

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        with self._lock:
            if self._sorted_scopes is None:
                self._sorted_scopes = SortedNames(self._scopes)
            scopes, more = self._sorted_scopes.page(prefix, after, limit)
            return [
                (scope, len(self._scopes[scope]) if with_counts else None) for scope in scopes
            ], more

    def _put(self, scope: str, key: str, value_json: str) -> None:
        """Store a value, keeping the sorted names (if built) up to date."""
        entries = self._scopes.get(scope)
        if entries is None:
            entries = self._scopes[scope] = {}
            if self._sorted_scopes is not None:
                self._sorted_scopes.add(scope)
        if key not in entries:
            names = self._sorted_keys.get(scope)
            if names is not None:
                names.add(key)
        entries[key] = value_json

    def _remove(self, scope: str, key: str) -> str | None:
        """Remove a key (a scope left empty goes too); return what it held."""
        entries = self._scopes.get(scope)
        if entries is None or key not in entries:
            return None
        old = entries.pop(key)
        names = self._sorted_keys.get(scope)
        if names is not None:
            names.discard(key)
        if not entries:
            del self._scopes[scope]
            self._sorted_keys.pop(scope, None)
            if self._sorted_scopes is not None:
                self._sorted_scopes.discard(scope)
        return old

    def settle(self, op_ids: Sequence[str]) -> None:
        with self._lock:
            moved = self._ops.settle(op_ids)
            if moved:
                self._ops_settled(moved)

    def list(self, scope: str) -> builtins.list[str]:
        with self._lock:
            return list(self._scopes.get(scope, {}).values())

    def list_groups(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self._scopes)

    def triggers_load(self) -> dict[str, str]:
        with self._lock:
            return dict(self._triggers)

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        with self._lock:
            is_new = trigger_id not in self._triggers
            self._triggers_changed(trigger_id, trigger_json)
            self._triggers[trigger_id] = trigger_json
            self._triggers_version += 1
            return is_new

    def triggers_delete(self, trigger_id: str) -> bool:
        with self._lock:
            existed = trigger_id in self._triggers
            if existed:
                self._triggers_changed(trigger_id, None)
                del self._triggers[trigger_id]
            self._triggers_version += 1
            return existed

    def triggers_version(self) -> int:
        return self._triggers_version

    # -- hooks for a persistent store: called under the lock ---------------------------
    # If _changed or _triggers_changed raises, the change is not made (nor its op record).

    def _changed(
        self,
        scope: str,
        key: str,
        value_json: str | None,
        op_id: str | None = None,
        op_expires: float = 0.0,
    ) -> None:
        """A key is about to be set (``value_json``) or deleted (``None``), by ``op_id``
        (remembered until the monotonic time ``op_expires``)."""

    def _batch_changed(
        self,
        scope: str,
        operations: Sequence[BatchOp],
        results: Sequence[BatchResult],
        op_id: str | None,
        op_expires: float,
    ) -> None:
        """A batch is about to be applied: its ``results``, one ``(old, new)`` per
        operation, by ``op_id`` (remembered until the monotonic time ``op_expires``)."""

    def _settled_at_once(self, op_id: str, expires: float) -> None:
        """``op_id`` changed nothing (a delete of an absent key): remember it settled."""
        self._ops.mark(op_id, expires)

    def _ops_settled(self, moved: builtins.list[tuple[str, float]]) -> None:
        """These operations were just settled: ``(op id, monotonic expiry)``."""

    def _triggers_changed(self, trigger_id: str, trigger_json: str | None) -> None:
        """A trigger is about to be stored (``trigger_json``) or removed (``None``)."""
