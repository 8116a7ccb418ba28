"""The adapter contract every storage backend implements.

Values cross this boundary as JSON text (``str``), already validated and
size-checked by the core; ``None`` means "no such key" (the JSON value null is
the text ``"null"``). Every method may raise
:class:`~state_tasks.core.errors.AdapterError` when the storage fails; no other
exception may escape an adapter, apart from :class:`OperationSettled`, the answer
to a repeat of an operation whose record was settled.

Applied operations. Each ``set``/``delete``/``update``/``batch`` with an ``op_id`` (the
Celery task id, which a redelivered or retried task keeps) is recorded atomically with its
change: *whole* (a repeat returns the recorded result and the service sends the change's
trigger work again, with the same ``event_id``) until the service calls
:meth:`StateAdapter.settle`, then *settled* (a repeat changes nothing and raises
:class:`OperationSettled`, with the versions the operation gave). The protocol, its
markers and its window are :mod:`state_tasks.adapters.records`.

Versions and expiry (the ``*_versioned`` methods, :meth:`StateAdapter.get_entry` and
:meth:`StateAdapter.expire_due`). Every key has a version: a positive integer that grows
with every change of the key and is never reused for it, even after a delete and a
re-create (the built-in adapters take it from one counter per scope). ``if_version``
makes a write conditional (``0``: only if the key is absent) and raises
:class:`~state_tasks.core.errors.VersionConflict` otherwise, having written nothing.
``ttl_ms`` makes a key expire: from its due time on, no read returns it, and
:meth:`StateAdapter.expire_due` (run by every worker's sweeper) removes it and hands it
over, exactly once, for its ``state:deleted`` event. A write that finds a key expired and
not yet removed treats it as absent and returns it in :attr:`Change.expired`, so that its
event fires all the same. An adapter that implements only the plain methods keeps working:
the defaults give version 1 and refuse ``if_version`` and ``ttl_ms``.

Pending expiries (optional: :meth:`StateAdapter.pending_expiries` and
:meth:`StateAdapter.expiries_sent`). A key is removed before its event is sent, so a process
that dies (or cannot reach the broker) in between would lose that event. An adapter that
keeps a *pending* record of each expiry it hands over (with the removal, atomically) and
drops it when told the event was sent lets the next sweep of any worker send it again,
with the same ``event_id``, once it is older than the service's resend delay. The KvStore
(the file store keeps them across restarts) and the RedisAdapter (a hash and a sorted set
of claim times, per bucket on a cluster) do; the defaults keep none.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from state_tasks.core.changes import ChangeLogSettings, ChangesPage
from state_tasks.core.errors import AdapterError

if TYPE_CHECKING:
    from state_tasks.core.batch import BatchOp, BatchResult, VersionedBatchResult
    from state_tasks.core.ops import Op

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """A stored key: its JSON text, its version, and the milliseconds until it expires
    (``None``: never)."""

    value_json: str
    version: int
    expires_in_ms: int | None = None


@dataclass(frozen=True)
class Expired:
    """A key removed because its ``ttl_ms`` ran out: what it held and its last version."""

    scope: str
    key: str
    value_json: str
    version: int


@dataclass(frozen=True)
class Change:
    """What a versioned write did: the old and the new JSON text (``new`` is ``None`` for a
    delete), and ``version``: the key's new version, or for a delete the version deleted
    (``0`` when there was nothing to delete). ``expired``: a key the write found expired
    and not yet removed (it counted as absent); its ``state:deleted`` event is due."""

    old: str | None
    new: str | None
    version: int
    expired: Expired | None = None
    #: The triggers' version read in the same atomic step as the change, when the adapter
    #: has it at no cost (the RedisAdapter's scripts do): matching the change's triggers
    #: then needs no read of its own. ``None``: matching reads it.
    trigger_version: int | None = None


@dataclass(frozen=True)
class BatchChange:
    """What a versioned batch did: one ``(old, new, version)`` per operation, the keys it
    found expired (their events are due), and the triggers' version as for
    :class:`Change`."""

    results: list[VersionedBatchResult]
    expired: list[Expired]
    trigger_version: int | None = None


class OperationSettled(Exception):
    """A repeat of an operation that was applied and whose trigger work was sent.

    Raised by ``set``/``delete``/``update``/``batch`` when ``op_id`` names a settled
    record: nothing was changed, and the record no longer holds the operation's values.

    ``versions``: the versions the operation gave, one per ``set`` or ``update`` (for a
    batch, its sets and updates in order; a delete has none), which the settled marker
    keeps; ``None`` when the marker does not know them (a marker from before versions were
    kept, or a delete).
    """

    def __init__(self, op_id: str, versions: Sequence[int] | None = None) -> None:
        super().__init__(f"operation {op_id!r} was applied before and its record is settled")
        self.op_id = op_id
        self.versions = None if versions is None else tuple(versions)


class StateAdapter(ABC):
    """Scoped key-value storage plus a reserved space for trigger registrations.

    Implementations must make each method atomic on its own: a concurrent
    ``set`` never loses an ``update`` and ``set`` returns exactly the value it
    replaced. Triggers live in a space of their own that ``list_groups`` never
    shows and that no scope name can reach.
    """

    #: Largest JSON text of one value, in bytes of UTF-8.
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    #: True when ``list`` returns values in the order their keys were first set.
    ordered_list: bool = False

    #: False when ``set``/``update`` cannot tell a key holding JSON null from a missing key
    #: (the Bridge: the remote answers ``old_value: null`` for both).
    knows_null_from_missing: bool = True

    #: True when the data lives inside this process only (one process may own it).
    process_local: bool = False

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (locks, background savers). Called once before first use."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release everything; the adapter is not used afterwards."""

    @abstractmethod
    def get(self, scope: str, key: str) -> str | None:
        """Return the JSON text stored under ``(scope, key)``, or ``None`` if absent."""

    @abstractmethod
    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        """Store ``value_json``; return the JSON text it replaced, or ``None`` if new.

        ``op_id`` (here and in ``delete`` and ``update``) names the operation: Celery's task
        id, which a redelivered task keeps. An adapter records it atomically with the change,
        whole, for ``op_window_s`` seconds at least (see the module docs); a second call with
        the same id changes nothing and returns what the first returned while the record is
        whole, or raises :class:`OperationSettled` once it is settled. ``None``: no record,
        no deduplication.
        """

    @abstractmethod
    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        """Remove the key; return the JSON text it held, or ``None`` if it was absent.

        The built-in adapters record a delete of an absent key under an ``op_id`` settled at
        once (it has no trigger work), so that a repeat does not delete a value set since.
        """

    @abstractmethod
    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        """Apply parsed update ops atomically; return ``(old_json or None, new_json)``.

        Implementations compute the new value with
        :func:`state_tasks.core.codec.apply_ops_json` so every adapter shares one
        definition of the ops. It raises
        :class:`~state_tasks.core.errors.UpdateOpError` or
        :class:`~state_tasks.core.errors.ValueTooLarge`; then nothing is written.
        """

    # -- versions and expiry (the defaults serve adapters without them) -------------------

    #: True when the adapter keeps versions and expiries (the built-in ones do).
    supports_versions: bool = False

    def get_entry(self, scope: str, key: str) -> Entry | None:
        """The key's text, version and time to expiry; ``None`` if absent (or expired)."""
        text = self.get(scope, key)
        return None if text is None else Entry(text, 1, None)

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
        """``set`` with versions: only if the key is at ``if_version`` (else
        :class:`~state_tasks.core.errors.VersionConflict`); ``ttl_ms``: expire that long after
        this write (``None``: the key becomes permanent). Returns the :class:`Change`."""
        self._plain_only(if_version, ttl_ms)
        return Change(self.set(scope, key, value_json, op_id), value_json, 1)

    def delete_versioned(
        self, scope: str, key: str, op_id: str | None = None, *, if_version: int | None = None
    ) -> Change:
        """``delete`` with versions: only if the key is at ``if_version``."""
        self._plain_only(if_version, None)
        old = self.delete(scope, key, op_id)
        return Change(old, None, 0 if old is None else 1)

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
        """``update`` with versions: only if the key is at ``if_version``; ``ttl_ms``: a new
        expiry (``None``: the key keeps the one it has)."""
        self._plain_only(if_version, ttl_ms)
        old, new = self.update(scope, key, ops, op_id)
        return Change(old, new, 1)

    def batch_versioned(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> BatchChange:
        """``batch`` with versions: one ``(old, new, version)`` per operation, and the keys
        it found expired (their events are due). A conflict of an operation's
        ``if_version`` fails the whole batch, naming the operation's index."""
        for op in operations:
            self._plain_only(op.if_version, op.ttl_ms)
        results = self.batch(scope, operations, op_id)
        return BatchChange(
            [(old, new, 0 if new is None and old is None else 1) for old, new in results], []
        )

    def expire_due(self, limit: int) -> tuple[builtins.list[Expired], float | None]:
        """Remove up to ``limit`` keys whose expiry is due, atomically (two workers never
        both get one); return them and the milliseconds until the next due expiry (``None``:
        none is scheduled here, or the adapter cannot tell)."""
        return [], None

    def pending_expiries(self, older_than_ms: int, limit: int) -> builtins.list[Expired]:
        """Up to ``limit`` expiries handed over (by :meth:`expire_due` or in a write's
        :attr:`Change.expired`) at least ``older_than_ms`` milliseconds ago whose events are
        not known to be sent, oldest first. Each is claimed again, atomically: its age starts
        over, so another sweeper does not take it too while this one sends it. The default
        keeps no pending expiries: none."""
        return []

    def expiries_sent(self, expired: Sequence[Expired]) -> None:  # noqa: B027 - optional
        """The ``state:deleted`` events of ``expired`` were sent: drop their pending records
        (an expiry is known by its scope, key and version). Unknown ones are ignored. May
        raise :class:`~state_tasks.core.errors.AdapterError`; the records then stay and
        their events are sent again (same ``event_id``). The default keeps none."""

    def _plain_only(self, if_version: int | None, ttl_ms: int | None) -> None:
        if if_version is not None or ttl_ms is not None:
            raise AdapterError(
                f"{type(self).__name__} keeps no versions or expiries: if_version and ttl_ms "
                "need an adapter that implements the *_versioned methods of "
                "state_tasks.adapters.base.StateAdapter"
            )

    def settle(self, op_ids: Sequence[str]) -> None:  # noqa: B027 - optional
        """Shrink the records of ``op_ids`` to markers: their trigger work has been sent.

        Called by the service once the change's trigger work was sent (or there was none
        to send) and the thread that made the change has moved on to its next call. A
        marker costs a small, fixed amount whatever the value's size, and still refuses a
        repeat (:class:`OperationSettled`) until the record's window ends. Ids that are
        unknown, expired or already settled are ignored. May raise
        :class:`~state_tasks.core.errors.AdapterError`; the records then stay whole. The
        default keeps every record whole until it expires: correct, but each costs the
        size of its values.
        """

    @abstractmethod
    def list(self, scope: str) -> builtins.list[str]:
        """Return the JSON texts of every value in ``scope`` (empty scope: ``[]``)."""

    @abstractmethod
    def list_groups(self) -> builtins.list[str]:
        """Return the scopes holding at least one key, sorted and unique."""

    # -- bulk and paging (optional: the defaults are correct but not all of them atomic) --

    def get_many(self, scope: str, keys: Sequence[str]) -> builtins.list[str | None]:
        """Return the JSON text under each of ``keys`` (``None`` where absent), in their
        order. The built-in adapters read them in one round trip; this default calls
        :meth:`get` per key."""
        return [self.get(scope, key) for key in keys]

    def batch(
        self, scope: str, operations: Sequence[BatchOp], op_id: str | None = None
    ) -> builtins.list[BatchResult]:
        """Apply ``operations`` in order, all or nothing, atomically; return one
        ``(old_json, new_json)`` per operation (``new_json`` is ``None`` for a delete).

        Implementations read the values the batch's keys hold, compute the outcome with
        :func:`state_tasks.core.batch.apply_batch` (which raises, naming the failing
        operation, before anything is written) and write it in one atomic step. ``op_id``
        is recorded once for the whole batch, as for ``set`` (whole, then settled): a repeat
        returns the recorded results or raises :class:`OperationSettled`.
        """
        raise AdapterError(
            f"{type(self).__name__} does not implement state::batch (an atomic batch needs "
            "the adapter's own write path; see state_tasks.adapters.base.StateAdapter.batch)"
        )

    def list_page(
        self, scope: str, prefix: str, after: str | None, limit: int
    ) -> tuple[builtins.list[tuple[str, str]], bool]:
        """Return up to ``limit`` ``(key, json_text)`` of ``scope`` whose keys start with
        ``prefix`` and sort after ``after`` (``None``: from the first), in code point order,
        and whether more follow. Its cost grows with ``limit`` and the keys matching
        ``prefix``, not with the size of the scope."""
        raise AdapterError(f"{type(self).__name__} does not implement paging of state::list")

    def list_groups_page(
        self, prefix: str, after: str | None, limit: int, with_counts: bool
    ) -> tuple[builtins.list[tuple[str, int | None]], bool]:
        """Like :meth:`list_page` for the scopes holding at least one key: ``(scope, number
        of keys or None unless with_counts)``, and whether more follow."""
        raise AdapterError(f"{type(self).__name__} does not implement paging of state::list_groups")

    # -- the change log (optional) -----------------------------------------------------

    #: True when the adapter can keep a change log (see :mod:`state_tasks.core.changes`).
    supports_change_log: bool = False
    #: What the log keeps; ``None``: no log (set by :meth:`use_change_log`).
    change_log: ChangeLogSettings | None = None

    def use_change_log(self, settings: ChangeLogSettings | None) -> None:
        """Keep a change log with ``settings`` (``None``: keep none). Called before
        :meth:`open`. The built-in adapters keep one with the default settings unless told
        otherwise; an adapter that cannot keeps none whatever it is told."""
        if self.supports_change_log:
            self.change_log = settings

    def changes(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        """Up to ``limit`` entries of the change log after the position ``after``
        (``None``: from the oldest kept), of ``scope`` or of the scopes starting with
        ``prefix`` (``None``: all), in the order the changes were applied, each as its
        event with the position right after it. A position whose next entries were
        trimmed raises :class:`~state_tasks.core.changes.ChangesCompacted`. Positions are
        the adapter's own strings (the service signs them into cursors)."""
        raise AdapterError(
            f"{type(self).__name__} keeps no change log (state::changes needs an adapter "
            "that implements StateAdapter.changes; the built-in ones do)"
        )

    # -- the reserved trigger space -------------------------------------------------

    @abstractmethod
    def triggers_load(self) -> dict[str, str]:
        """Return every stored trigger as ``{trigger_id: json_text}``."""

    @abstractmethod
    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        """Store a trigger; return ``True`` if it was new. Bumps the version."""

    @abstractmethod
    def triggers_delete(self, trigger_id: str) -> bool:
        """Remove a trigger; return ``True`` if it existed. Bumps the version."""

    @abstractmethod
    def triggers_version(self) -> int:
        """A number that changes whenever the stored triggers change (cheap to read)."""


class VersionedStateAdapter(StateAdapter):
    """An adapter whose own methods are the versioned ones (the built-in adapters).

    ``set``, ``delete`` and ``update`` are derived from ``set_versioned``,
    ``delete_versioned`` and ``update_versioned``, which a subclass must override (the
    defaults above derive them the other way round).
    """

    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        return self.set_versioned(scope, key, value_json, op_id).old

    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        return self.delete_versioned(scope, key, op_id).old

    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        change = self.update_versioned(scope, key, ops, op_id)
        assert change.new is not None
        return change.old, change.new
