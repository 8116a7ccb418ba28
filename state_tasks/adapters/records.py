"""The operation record protocol: how every adapter applies a redelivered operation once.

A ``set``, ``update``, ``delete`` or ``batch`` with an ``op_id`` (the Celery task id, which
a redelivered or retried task keeps) is recorded atomically with its change, in two
phases (see :mod:`state_tasks.adapters.base` for the contract):

1. *Whole*: the record holds the result (the old and the new JSON text, and the version
   the change gave; a batch's results as one JSON text, :func:`batch_record`). A repeat
   answers that result and changes nothing; the service sends its trigger work again.
2. *Settled*: once that work is sent, the record shrinks to a *marker* of a few bytes that
   keeps only the versions the operation gave (:func:`settled_marker`: ``v12``, or runs
   ``v12-15,20`` for a batch; nothing for a delete). A repeat changes nothing and raises
   :class:`~state_tasks.adapters.base.OperationSettled` with those versions.

A record is kept for ``op_window_s`` seconds (:func:`default_op_window_s`), then
forgotten. The order of checks is the same everywhere: the record first (a repeat is
answered from it whatever the key holds now), then ``if_version``, then the ops.

This module holds the protocol once: the records of the KvStore (and so of the file
store, which journals them) and of the Bridge (:class:`OpRecords`), the markers and their
encoding, the batch record, the window. The Redis adapter's scripts implement the same
protocol in Lua (a hash per whole record, a string marker once settled); the golden
vectors of tests/conformance/test_record_protocol.py hold both to the same cases.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from state_tasks.adapters.base import OperationSettled
from state_tasks.core.environment import visibility_timeout_s

if TYPE_CHECKING:
    from state_tasks.core.batch import BatchResult, VersionedBatchResult

#: Added to the visibility timeout to make the default ``op_window_s``: a redelivered task
#: may still wait behind a backlog, and retry with backoff, before it runs.
OP_WINDOW_MARGIN_S = 3600

#: How many applied operation ids a KvStore remembers at most (the oldest go first).
DEFAULT_MAX_OPS = 100_000

#: A whole record of an applied operation: (old JSON text, new JSON text or None for a
#: delete, monotonic expiry, the version the change gave or deleted).
OpRecord = tuple[str | None, str | None, float, int]
#: A settled operation: its monotonic expiry, with what it gave when it gave versions.
Settled = float | tuple[float, int | str]
#: A just settled operation: (op id, monotonic expiry, versions or None).
SettledOp = tuple[str, float, int | str | None]

#: The "new" text of a batch's whole record, whose "old" text holds the batch's results
#: (:func:`batch_record`). Never valid JSON, so never a value.
BATCH_RECORD = "\x00batch"

_R = TypeVar("_R")


class OpRecords:
    """Applied operation ids, bounded by time (``window_s``) and by count (``max_ops``).

    Whole records (with the result) wait in one dict until they are settled; a settled
    operation is a marker in another: its id, its expiry and the version it gave (an int;
    a batch's versions as :func:`settled_marker` text), a few hundred bytes at most
    (the soak measures it: bench/README.md). Both dicts are ordered oldest first. Not
    thread-safe: the owner holds its lock.
    """

    def __init__(self, window_s: float, max_ops: int) -> None:
        self.window_s = window_s
        self.max_ops = max_ops
        #: op id -> whole record: applied, trigger work not yet known to be sent.
        self.whole: dict[str, OpRecord] = {}
        #: op id -> monotonic expiry, or (expiry, its versions): applied and settled.
        self.settled: dict[str, Settled] = {}

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
        settled = self.settled.get(op_id)
        if settled is not None and settled_expiry(settled) > now:
            mark = None if isinstance(settled, float) else settled[1]
            raise OperationSettled(op_id, settled_versions(mark))
        return None

    def expiry(self) -> float:
        """The monotonic time until which an operation applied now is remembered."""
        return time.monotonic() + self.window_s

    def new(self, old: str | None, new: str | None, version: int = 0) -> OpRecord:
        """A whole record for an operation applied now."""
        return (old, new, self.expiry(), version)

    def add(self, op_id: str, record: OpRecord) -> None:
        """Remember a whole record (once its change is made)."""
        _trim(self.whole, self.max_ops, lambda r: r[2])
        self.whole[op_id] = record

    def mark(self, op_id: str, expires: float, versions: int | str | None = None) -> None:
        """Remember ``op_id`` as settled until ``expires`` (monotonic), dropping its record;
        ``versions``: what it gave (see :func:`settled_mark`)."""
        self.whole.pop(op_id, None)
        _trim(self.settled, self.max_ops, settled_expiry)
        self.settled[op_id] = float(expires) if not versions else (expires, versions)

    def settle(self, op_ids: Iterable[str]) -> builtins.list[SettledOp]:
        """Turn the whole records of ``op_ids`` into markers; return the ``(id, expiry,
        versions)`` moved."""
        moved = []
        for op_id in op_ids:
            record = self.whole.get(op_id)
            if record is not None:
                versions = settled_mark(record)
                self.mark(op_id, record[2], versions)
                moved.append((op_id, record[2], versions))
        return moved


def settled_mark(record: OpRecord) -> int | str | None:
    """What the marker of a settled operation keeps of its whole ``record``: the version a
    set or an update gave (an int), a batch's versions of its sets and updates
    (:func:`settled_marker` text), nothing for a delete."""
    old, new, _, version = record
    if new == BATCH_RECORD:
        if old is None:
            return None
        versions = [v for _, n, v in parse_versioned_batch_record(old) if n is not None]
        return settled_marker(versions) or None
    if new is None or version <= 0:
        return None
    return version


def settled_expiry(settled: Settled) -> float:
    """The monotonic expiry of a settled marker."""
    return settled if isinstance(settled, float) else settled[0]


def _trim(records: dict[str, _R], max_ops: int, expiry: Callable[[_R], float]) -> None:
    """Forget the expired records at the head, and the oldest beyond ``max_ops - 1``."""
    now = time.monotonic()
    while records:
        oldest_id, oldest = next(iter(records.items()))
        if expiry(oldest) > now and len(records) < max_ops:
            return
        del records[oldest_id]


def settled_marker(versions: Sequence[int]) -> str:
    """The versions of a settled operation as a short text: ``v`` and runs of consecutive
    versions, ``v12`` or ``v12-15,20`` (a batch's versions come from one counter, so
    usually one run: a few bytes whatever its size). ``''`` for none."""
    runs: list[str] = []
    first = last = None
    for version in versions:
        if last is not None and version == last + 1:
            last = version
            continue
        if first is not None:
            runs.append(str(first) if first == last else f"{first}-{last}")
        first = last = version
    if first is not None:
        runs.append(str(first) if first == last else f"{first}-{last}")
    return "v" + ",".join(runs) if runs else ""


def settled_versions(marker: str | int | None) -> tuple[int, ...] | None:
    """The versions a settled marker keeps (:func:`settled_marker`, or one version as an
    int); ``None`` for a marker without them (``'1'``, written before markers kept them)."""
    if isinstance(marker, int) and not isinstance(marker, bool):
        return (marker,) if marker > 0 else None
    if not isinstance(marker, str) or not marker.startswith("v") or len(marker) < 2:
        return None
    versions: list[int] = []
    try:
        for run in marker[1:].split(","):
            first, _, last = run.partition("-")
            versions.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        return None
    return tuple(versions)


def default_op_window_s() -> float:
    """How long an applied operation is remembered when ``op_window_s`` is not given: the
    broker's redelivery window (``CELERY_VISIBILITY_TIMEOUT``) plus
    :data:`OP_WINDOW_MARGIN_S`. A Redis broker hands out a lost worker's task again after
    the visibility timeout; RabbitMQ at once when the worker's connection drops."""
    return float(visibility_timeout_s() + OP_WINDOW_MARGIN_S)


def batch_record(results: Sequence[BatchResult | VersionedBatchResult]) -> str:
    """The results of a batch as one JSON text (the whole record of its operation id)."""
    return json.dumps([list(result) for result in results], separators=(",", ":"))


def parse_batch_record(text: str) -> list[BatchResult]:
    """The results :func:`batch_record` encoded."""
    return [(row[0], row[1]) for row in json.loads(text)]


def parse_versioned_batch_record(text: str) -> list[VersionedBatchResult]:
    """The results :func:`batch_record` encoded, with versions (0 from a record without)."""
    return [(row[0], row[1], row[2] if len(row) > 2 else 0) for row in json.loads(text)]
