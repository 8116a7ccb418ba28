"""KvStore: the embedded store, held in the memory of the one process that owns it."""

from __future__ import annotations

import bisect
import builtins
import heapq
import threading
import time
from collections.abc import (
    Callable,
    Iterable,
    Sequence,
)
from typing import Any, ClassVar, Literal

from pydantic import Field

from state_tasks.adapters.base import (
    BatchChange,
    Change,
    Entry,
    Expired,
    VersionedStateAdapter,
)
from state_tasks.adapters.changelog import MemoryChangeLog
from state_tasks.adapters.records import (
    BATCH_RECORD,
    DEFAULT_MAX_OPS,
    OpRecords,
    SettledOp,
    batch_record,
    parse_versioned_batch_record,
)
from state_tasks.adapters.settings import AdapterSettings
from state_tasks.core.batch import (
    BatchOp,
    BatchResult,
    VersionedBatchResult,
    apply_batch_versioned,
    batch_keys,
)
from state_tasks.core.changes import ChangeLogSettings, ChangesPage, EntryKind, change_log_off
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import version_conflict
from state_tasks.core.ops import Op

# A key's slot in its scope's dict is one string: its version in hex, ":", its JSON text.
# One object a key instead of a text plus a version kept apart (a second dict entry and an
# int object): less memory a key, for a slice when the text is read.


def make_slot(text: str, version: int) -> str:
    return f"{version:x}:{text}"


def slot_text(slot: str) -> str:
    return slot.partition(":")[2]


def slot_parts(slot: str) -> tuple[str, int]:
    """(text, version) of a slot."""
    version, _, text = slot.partition(":")
    return text, int(version, 16)


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: the KvStore's clock for expiries (they survive a
    restart of the file store, so they are wall-clock times)."""
    return time.time_ns() // 1_000_000


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


#: The file store's folder, and how often it saves (see :mod:`state_tasks.adapters.file_store`).
DEFAULT_FILE_PATH = "./data/state_store"
DEFAULT_SAVE_INTERVAL_MS = 5000
FsyncPolicy = Literal["always", "interval", "never"]


class KvStoreSettings(AdapterSettings):
    """``modules::state::adapters::KvStore``: :class:`KvStore` (``in_memory``) or the file
    store (``file_based``: :class:`state_tasks.adapters.file_store.FileKvStore`, whose
    parameters the other fields are). Both constructors check their options here."""

    kind: ClassVar[str] = "KvStore"
    process_local: ClassVar[bool] = True

    store_method: Literal["in_memory", "file_based"] = "in_memory"
    file_path: str = DEFAULT_FILE_PATH
    save_interval_ms: int = Field(DEFAULT_SAVE_INTERVAL_MS, gt=0)
    fsync: FsyncPolicy = "interval"
    move_corrupt_aside: bool = False
    max_ops: int = Field(DEFAULT_MAX_OPS, gt=0)

    @property
    def adapter(self) -> str:  # type: ignore[override]
        if self.store_method == "in_memory":
            return "state_tasks.adapters.kv_store:KvStore"
        return "state_tasks.adapters.file_store:FileKvStore"


class KvStore(VersionedStateAdapter):
    """Scopes as dicts of JSON text, guarded by one lock.

    Lives in one process: a worker using it must run a threads or solo pool
    (the default configuration does), never several prefork children, each of
    which would otherwise hold a separate store.

    Versions come from one counter for the whole store (so a version is never reused, even
    after a key or its scope is deleted and re-created) and live in one string with the
    key's text (see :func:`make_slot`); expiries live in a dict per scope (only keys with a
    ``ttl_ms`` pay for one) and a heap of due times that :meth:`expire_due` pops.

    :param max_value_bytes: the largest JSON text of one value, in bytes of UTF-8.
    :param op_window_s: how long an applied operation id is remembered (default: the
        broker's redelivery window, :func:`state_tasks.adapters.records.default_op_window_s`).
    :param max_ops: how many applied operation ids are remembered at most.
    :param clock_ms: the clock of expiries, in wall-clock milliseconds (tests pass their own).

    The options are checked by :class:`KvStoreSettings` (``state.yaml`` uses it too);
    ``KvStore(settings)`` takes them already checked.
    """

    ordered_list = True
    process_local = True
    supports_versions = True
    supports_change_log = True

    def __init__(
        self,
        settings: KvStoreSettings | None = None,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        **options: Any,
    ) -> None:
        self.settings = settings = KvStoreSettings.given(settings, options)
        self.max_value_bytes = settings.max_value_bytes
        self.op_window_s = settings.op_window_s
        self.max_ops = settings.max_ops
        self.clock_ms = clock_ms
        self._ops = OpRecords(self.op_window_s, self.max_ops)
        # scope -> key -> slot (version and JSON text, see make_slot).
        self._scopes: dict[str, dict[str, str]] = {}
        # The last version given, in any scope.
        self._counter = 0
        # scope -> key -> due time (wall-clock ms), only for keys with a ttl.
        self._dues: dict[str, dict[str, int]] = {}
        # (due ms, scope, key); entries whose key has another due time since are skipped.
        self._due_heap: builtins.list[tuple[int, str, str]] = []
        # (scope, key, version) -> (the expiry, monotonic time it was handed over): expiries
        # whose event is not known to be sent, oldest first (see pending_expiries).
        self._expiring: dict[tuple[str, str, int], tuple[Expired, float]] = {}
        # Sorted names for pages, built by the first page of a scope (or of list_groups)
        # and kept up to date from then on: a store never paged pays nothing for them.
        self._sorted_keys: dict[str, SortedNames] = {}
        self._sorted_scopes: SortedNames | None = None
        self._triggers: dict[str, str] = {}
        self._triggers_version = 0
        # Re-entrant so that subclasses may call back into these methods under it.
        self._lock = threading.RLock()
        self._log: MemoryChangeLog | None = None
        self.use_change_log(ChangeLogSettings())

    # -- the change log -----------------------------------------------------------------

    def use_change_log(self, settings: ChangeLogSettings | None) -> None:
        """Keep a change log in memory (the file store keeps it on disk too)."""
        with self._lock:
            self.change_log = settings
            self._log = None if settings is None else MemoryChangeLog(settings, self.clock_ms)

    def changes(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        log = self._log
        if log is None:
            raise change_log_off(type(self).__name__)
        return log.read(scope, prefix, after, limit)

    def _logged(
        self,
        kind: EntryKind,
        scope: str,
        key: str,
        old: str | None,
        new: str | None,
        version: int,
        event_id: str | None,
        at_ms: int,
    ) -> None:
        """Append a change that was just journaled (under the lock)."""
        if self._log is not None:
            self._log.append(kind, scope, key, old, new, version, event_id, at_ms)

    # -- reading ----------------------------------------------------------------------

    def _expired(self, scope: str, key: str, now_ms: int | None = None) -> bool:
        dues = self._dues.get(scope)
        if not dues:
            return False
        due = dues.get(key)
        return due is not None and due <= (self.clock_ms() if now_ms is None else now_ms)

    def _live(self, scope: str, key: str) -> str | None:
        """The slot of a key that has not expired, or ``None``."""
        entries = self._scopes.get(scope)
        if entries is None:
            return None
        slot = entries.get(key)
        if slot is not None and scope in self._dues and self._expired(scope, key):
            return None
        return slot

    def _stored(self, scope: str, key: str) -> tuple[str, int] | None:
        """(text, version) of a key as stored, expired or not; ``None`` if absent."""
        slot = self._scopes.get(scope, {}).get(key)
        return None if slot is None else slot_parts(slot)

    def _version(self, scope: str, key: str) -> int:
        """The version of a stored key (1 for an absent one)."""
        slot = self._scopes.get(scope, {}).get(key)
        return 1 if slot is None else slot_parts(slot)[1]

    def get(self, scope: str, key: str) -> str | None:
        slot = self._live(scope, key)
        return None if slot is None else slot_text(slot)

    def get_entry(self, scope: str, key: str) -> Entry | None:
        with self._lock:
            slot = self._live(scope, key)
            if slot is None:
                return None
            text, version = slot_parts(slot)
            due = self._dues.get(scope, {}).get(key)
            left = None if due is None else max(0, due - self.clock_ms())
            return Entry(text, version, left)

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        with self._lock:
            if scope in self._dues:
                slots = [self._live(scope, key) for key in keys]
            else:
                entries = self._scopes.get(scope, {})
                slots = [entries.get(key) for key in keys]
            return [None if slot is None else slot_text(slot) for slot in slots]

    def list(self, scope: str) -> builtins.list[str]:
        with self._lock:
            entries = self._scopes.get(scope, {})
            if scope not in self._dues:
                return [slot_text(slot) for slot in entries.values()]
            now = self.clock_ms()
            return [
                slot_text(slot)
                for key, slot in entries.items()
                if not self._expired(scope, key, now)
            ]

    def _live_count(self, scope: str, now_ms: int) -> int:
        entries = self._scopes.get(scope, {})
        dues = self._dues.get(scope)
        if not dues:
            return len(entries)
        return len(entries) - sum(1 for due in dues.values() if due <= now_ms)

    def list_groups(self) -> builtins.list[str]:
        with self._lock:
            now = self.clock_ms()
            return sorted(
                scope
                for scope in self._scopes
                if scope not in self._dues or self._live_count(scope, now) > 0
            )

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
            now = self.clock_ms()
            rows: builtins.list[tuple[str, str]] = []
            while True:  # expired keys not yet removed are skipped, not counted
                keys, more = names.page(prefix, after, limit - len(rows))
                rows += [
                    (k, slot_text(entries[k])) for k in keys if not self._expired(scope, k, now)
                ]
                if not more or len(rows) == limit:
                    return rows, more
                after = keys[-1]

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        with self._lock:
            if self._sorted_scopes is None:
                self._sorted_scopes = SortedNames(self._scopes)
            now = self.clock_ms()
            rows: builtins.list[tuple[str, int | None]] = []
            while True:  # a scope whose keys all expired is skipped
                scopes, more = self._sorted_scopes.page(prefix, after, limit - len(rows))
                for scope in scopes:
                    count = self._live_count(scope, now)
                    if count > 0:
                        rows.append((scope, count if with_counts else None))
                if not more or len(rows) == limit:
                    return rows, more
                after = scopes[-1]

    # -- writing ----------------------------------------------------------------------

    def _current(self, scope: str, key: str, now_ms: int) -> tuple[str | None, int, bool]:
        """(live text or None, its version or 0, whether an expired value is waiting)."""
        slot = self._scopes.get(scope, {}).get(key)
        if slot is None:
            return None, 0, False
        if self._expired(scope, key, now_ms):
            return None, 0, True
        text, version = slot_parts(slot)
        return text, version, False

    def _next_version(self, scope: str) -> int:
        # Keys loaded from before versions are at 1: the counter is at least that (load).
        self._counter += 1
        return self._counter

    def _take_expired(self, scope: str, key: str) -> Expired:
        """Remove a key found expired (journaled as a delete); return it for its event,
        which is pending until :meth:`expiries_sent`."""
        text, version = slot_parts(self._scopes[scope][key])
        gone = Expired(scope, key, text, version)
        at_ms = self.clock_ms()
        self._changed(scope, key, None, version=version, reason="expired", old=text, at_ms=at_ms)
        self._logged("x", scope, key, text, None, version, None, at_ms)
        self._remove(scope, key)
        self._expiring[(scope, key, version)] = (gone, time.monotonic())
        return gone

    def _apply(self, scope: str, key: str, text: str | None, version: int, due: int | None) -> None:
        """Store (``text``) or remove (``None``) a key with its version and due time."""
        if text is None:
            self._remove(scope, key)
            return
        self._put(scope, key, make_slot(text, version))
        self._set_due(scope, key, due)

    def _set_due(self, scope: str, key: str, due: int | None) -> None:
        dues = self._dues.get(scope)
        if due is None:
            if dues is not None and dues.pop(key, None) is not None and not dues:
                del self._dues[scope]
            return
        if dues is None:
            dues = self._dues[scope] = {}
        dues[key] = due
        heapq.heappush(self._due_heap, (due, scope, key))
        if len(self._due_heap) > 2 * sum(map(len, self._dues.values())) + 1000:
            # Rewritten keys leave stale entries behind: drop them all at once.
            self._due_heap = [(d, s, k) for s, ds in self._dues.items() for k, d in ds.items()]
            heapq.heapify(self._due_heap)

    def _due_after(
        self, scope: str, key: str, ttl_ms: int | None, keep: bool, now: int
    ) -> int | None:
        if ttl_ms is not None:
            return now + ttl_ms
        return self._dues.get(scope, {}).get(key) if keep else None

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
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None:
                return Change(done[0], done[1] or value_json, done[3])
            now = self.clock_ms()
            old, current, expired = self._current(scope, key, now)
            if if_version is not None and if_version != current:
                raise version_conflict(scope, key, if_version, current, "state::set")
            gone = self._take_expired(scope, key) if expired else None
            due = None if ttl_ms is None else now + ttl_ms
            return self._store(scope, key, old, value_json, due, op_id, gone)

    def _store(
        self,
        scope: str,
        key: str,
        old: str | None,
        text: str,
        due: int | None,
        op_id: str | None,
        gone: Expired | None,
    ) -> Change:
        """A set or an update that passed its checks: a new version, the change handed to
        the hooks (a persistent store journals it; if that raises, nothing is changed),
        stored, and its record kept."""
        version = self._next_version(scope)
        record = self._ops.new(old, text, version)
        at_ms = self.clock_ms()
        self._changed(
            scope, key, text, op_id, record[2], version=version, due_ms=due, old=old, at_ms=at_ms
        )
        self._logged("c" if old is None else "u", scope, key, old, text, version, op_id, at_ms)
        self._apply(scope, key, text, version, due)
        if op_id is not None:
            self._ops.add(op_id, record)
        return Change(old, text, version, gone)

    def delete_versioned(
        self, scope: str, key: str, op_id: str | None = None, *, if_version: int | None = None
    ) -> Change:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None:
                return Change(done[0], None, done[3])
            old, current, expired = self._current(scope, key, self.clock_ms())
            if if_version is not None and if_version != current:
                raise version_conflict(scope, key, if_version, current, "state::delete")
            gone = self._take_expired(scope, key) if expired else None
            if old is None:
                if op_id is not None:  # nothing to send: settled at once
                    self._settled_at_once(op_id, self._ops.expiry())
                return Change(None, None, 0, gone)
            record = self._ops.new(old, None, current)
            at_ms = self.clock_ms()
            self._changed(scope, key, None, op_id, record[2], version=current, old=old, at_ms=at_ms)
            self._logged("d", scope, key, old, None, current, op_id, at_ms)
            self._remove(scope, key)
            if op_id is not None:
                self._ops.add(op_id, record)
            return Change(old, None, current)

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
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None and done[1] is not None:
                return Change(done[0], done[1], done[3])
            now = self.clock_ms()
            old, current, expired = self._current(scope, key, now)
            if if_version is not None and if_version != current:
                raise version_conflict(scope, key, if_version, current, "state::update")
            new = apply_ops_json(old, ops, self.max_value_bytes)
            gone = self._take_expired(scope, key) if expired else None
            due = self._due_after(scope, key, ttl_ms, old is not None, now)
            return self._store(scope, key, old, new, due, op_id, gone)

    def batch_versioned(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> BatchChange:
        with self._lock:
            done = self._ops.find(op_id)
            if done is not None and done[1] == BATCH_RECORD and done[0] is not None:
                return BatchChange(parse_versioned_batch_record(done[0]), [])
            now = self.clock_ms()
            before: dict[str, tuple[str, int] | None] = {}
            waiting: builtins.list[str] = []
            for key in batch_keys(operations):
                text, version, expired = self._current(scope, key, now)
                before[key] = None if text is None else (text, version)
                if expired:
                    waiting.append(key)
            results = apply_batch_versioned(
                scope, before, operations, self.max_value_bytes, lambda: self._next_version(scope)
            )
            gone = [self._take_expired(scope, key) for key in waiting]
            dues: dict[str, int | None] = {}
            for op, (old, new, _) in zip(operations, results, strict=True):
                if new is None:
                    dues[op.key] = None
                elif op.ttl_ms is not None:
                    dues[op.key] = now + op.ttl_ms
                elif op.kind == "set":
                    dues[op.key] = None
                else:  # an update without ttl keeps the expiry (none if the key was absent)
                    keep = dues[op.key] if op.key in dues else self._dues.get(scope, {}).get(op.key)
                    dues[op.key] = keep if old is not None else None
            record = self._ops.new(batch_record(results), BATCH_RECORD)
            at_ms = self.clock_ms()
            self._batch_changed(scope, operations, results, op_id, record[2], dues, at_ms)
            for index, (op, (old, new, version)) in enumerate(
                zip(operations, results, strict=True)
            ):
                if old is None and new is None:
                    continue  # a delete of an absent key changed nothing
                kind: EntryKind = "d" if new is None else "c" if old is None else "u"
                event_id = None if op_id is None else f"{op_id}:{index}"
                self._logged(kind, scope, op.key, old, new, version, event_id, at_ms)
            for op, (_, new, version) in zip(operations, results, strict=True):
                self._apply(scope, op.key, new, version, dues[op.key] if new is not None else None)
            if op_id is not None:
                self._ops.add(op_id, record)
            return BatchChange(results, gone)

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        results = self.batch_versioned(scope, operations, op_id).results
        return [(old, new) for old, new, _ in results]

    # -- expiry -------------------------------------------------------------------------

    def expire_due(self, limit: int) -> tuple[builtins.list[Expired], float | None]:
        with self._lock:
            now = self.clock_ms()
            gone: builtins.list[Expired] = []
            heap = self._due_heap
            while heap and heap[0][0] <= now and len(gone) < limit:
                due, scope, key = heapq.heappop(heap)
                if self._dues.get(scope, {}).get(key) != due:
                    continue  # rewritten or removed since
                if key in self._scopes.get(scope, {}):
                    gone.append(self._take_expired(scope, key))
                else:
                    self._set_due(scope, key, None)
            return gone, None if not heap else float(max(0, heap[0][0] - now))

    def pending_expiries(self, older_than_ms: int, limit: int) -> builtins.list[Expired]:
        with self._lock:
            now = time.monotonic()
            oldest = now - older_than_ms / 1000
            found: builtins.list[Expired] = []
            for gone, handed_over in self._expiring.values():  # oldest first
                if handed_over > oldest or len(found) >= limit:
                    break
                found.append(gone)
            for gone in found:  # claimed again: now the newest
                pending = (gone.scope, gone.key, gone.version)
                del self._expiring[pending]
                self._expiring[pending] = (gone, now)
            return found

    def expiries_sent(self, expired: Sequence[Expired]) -> None:
        with self._lock:
            sent = [
                pending
                for pending in ((gone.scope, gone.key, gone.version) for gone in expired)
                if self._expiring.pop(pending, None) is not None
            ]
            if sent:
                self._expiries_dropped(sent)

    # -- helpers --------------------------------------------------------------------------

    def _put(self, scope: str, key: str, slot: str) -> None:
        """Store a key's slot, keeping the sorted names (if built) up to date."""
        entries = self._scopes.get(scope)
        if entries is None:
            entries = self._scopes[scope] = {}
            if self._sorted_scopes is not None:
                self._sorted_scopes.add(scope)
        if key not in entries:
            names = self._sorted_keys.get(scope)
            if names is not None:
                names.add(key)
        entries[key] = slot

    def _remove(self, scope: str, key: str) -> None:
        """Remove a key and its due time (a scope left empty goes too)."""
        entries = self._scopes.get(scope)
        if entries is None or key not in entries:
            return
        del entries[key]
        self._set_due(scope, key, None)
        names = self._sorted_keys.get(scope)
        if names is not None:
            names.discard(key)
        if not entries:
            del self._scopes[scope]
            self._sorted_keys.pop(scope, None)
            if self._sorted_scopes is not None:
                self._sorted_scopes.discard(scope)

    def settle(self, op_ids: Sequence[str]) -> None:
        with self._lock:
            moved = self._ops.settle(op_ids)
            if moved:
                self._ops_settled(moved)

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
        *,
        version: int = 0,
        due_ms: int | None = None,
        reason: str = "deleted",
        old: str | None = None,
        at_ms: int = 0,
    ) -> None:
        """A key is about to be set (``value_json``, at ``version``, expiring at ``due_ms``)
        or deleted (``None``; ``reason`` ``"expired"`` when its ttl ran out), by ``op_id``
        (remembered until the monotonic time ``op_expires``); it held ``old``, and the change
        log (if kept) gets it as its next entry, at ``at_ms``."""

    def _batch_changed(
        self,
        scope: str,
        operations: Sequence[BatchOp],
        results: Sequence[VersionedBatchResult],
        op_id: str | None,
        op_expires: float,
        dues: dict[str, int | None],
        at_ms: int = 0,
    ) -> None:
        """A batch is about to be applied: its ``results``, one ``(old, new, version)`` per
        operation, the keys' due times after it, by ``op_id`` (remembered until the
        monotonic time ``op_expires``); the change log gets an entry for each operation that
        changed something, at ``at_ms``."""

    def _settled_at_once(self, op_id: str, expires: float) -> None:
        """``op_id`` changed nothing (a delete of an absent key): remember it settled."""
        self._ops.mark(op_id, expires)

    def _ops_settled(self, moved: builtins.list[SettledOp]) -> None:
        """These operations were just settled: ``(op id, monotonic expiry, versions)``."""

    def _expiries_dropped(self, sent: builtins.list[tuple[str, str, int]]) -> None:
        """The events of these expiries ``(scope, key, version)`` were sent: their pending
        records were just dropped."""

    def _triggers_changed(self, trigger_id: str, trigger_json: str | None) -> None:
        """A trigger is about to be stored (``trigger_json``) or removed (``None``)."""
