"""The KvStore's change log: entries in memory, in the order they were appended.

Each entry has a sequence number, one more than the last (so an entry is found by
arithmetic, not a search), and the log has an *epoch*: a random name given when it starts
empty (the file store keeps it with its data). A position is ``<epoch>.<sequence of the
last entry read>``; a position of another epoch (an in-memory store that restarted, a
folder swapped under a worker) or one whose next entry was trimmed is compacted: the reader
is told, and where it can start again.

Appending trims from the front: entries beyond ``max_entries``, and those older than
``max_age_s`` (the oldest are at the front, so a trim stops at the first one kept): each
append does a constant amount of work on average, however long the log.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

from state_tasks.core.changes import (
    AT_END,
    ChangeLogSettings,
    ChangesCompacted,
    ChangesPage,
    EntryKind,
    LogEntry,
    entry_event,
    matches,
)
from state_tasks.core.errors import ValidationError

#: How many entries one read looks at, at most, for each entry it may return (a filtered
#: read of a busy log returns fewer than asked, and a position past what it looked at).
SCAN_PER_ENTRY = 20
#: ... and at least this many.
SCAN_MIN = 2000


def scan_budget(limit: int) -> int:
    """How many entries a read of ``limit`` looks at, at most."""
    return max(SCAN_MIN, limit * SCAN_PER_ENTRY)


class MemoryChangeLog:
    """A bounded log of :class:`LogEntry`, guarded by the caller's lock (the store's)."""

    def __init__(
        self,
        settings: ChangeLogSettings,
        clock_ms: Callable[[], int],
        epoch: str | None = None,
        last: int = 0,
    ) -> None:
        self.settings = settings
        self.clock_ms = clock_ms
        self.epoch = epoch or secrets.token_hex(6)
        #: The sequence number of the last entry appended (0: none yet).
        self.last = last
        # The entries kept are _entries[_head:] (a list, so that an entry is found by its
        # index; the front is cut off once it is half the list).
        self._entries: list[LogEntry] = []
        self._head = 0
        self._lock = threading.Lock()  # readers copy under it; writers hold the store's too

    @property
    def first(self) -> int:
        """The sequence number of the oldest entry kept (``last + 1`` when none is)."""
        return self.last - len(self) + 1

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def append(
        self,
        kind: EntryKind,
        scope: str,
        key: str,
        old: str | None,
        new: str | None,
        version: int,
        event_id: str | None,
        timestamp_ms: int | None = None,
    ) -> LogEntry:
        """Append one change (under the store's lock, with the change); return it."""
        entry = LogEntry(
            kind,
            scope,
            key,
            old,
            new,
            version,
            event_id,
            self.clock_ms() if timestamp_ms is None else timestamp_ms,
        )
        with self._lock:
            self._entries.append(entry)
            self.last += 1
            self._trim(entry.timestamp_ms)
        return entry

    def load(self, entries: Iterable[tuple[int, LogEntry]]) -> None:
        """Put back entries read from disk, in order: ``(sequence, entry)``. A gap in the
        numbers (a file lost) starts the log again after it."""
        with self._lock:
            for sequence, entry in entries:
                if sequence <= self.last and len(self):
                    continue  # read twice (a segment and its copy): keep the first
                if sequence != self.last + 1:
                    self._entries, self._head = [], 0
                self._entries.append(entry)
                self.last = sequence
            self._trim(self.clock_ms())

    def _trim(self, now_ms: int) -> None:
        entries = self._entries
        head = max(self._head, len(entries) - self.settings.max_entries)
        oldest_kept = now_ms - self.settings.max_age_s * 1000
        while head < len(entries) and entries[head].timestamp_ms < oldest_kept:
            head += 1
        if head > 1024 and head * 2 > len(entries):
            del entries[:head]
            head = 0
        self._head = head

    def trim(self) -> None:
        """Drop what is too old now (appends do it too; an idle log calls this)."""
        with self._lock:
            self._trim(self.clock_ms())

    # -- positions ------------------------------------------------------------------

    def position(self, sequence: int) -> str:
        return f"{self.epoch}.{sequence}"

    def parse(self, position: str) -> int | None:
        """The sequence a position names; ``None`` if it is of another epoch."""
        epoch, dot, number = position.rpartition(".")
        if not dot or not number.isdigit() or len(number) > 19:
            raise ValidationError(
                "state::changes: 'after' is not a position of this change log; pass the "
                "'cursor' of a previous answer unchanged"
            )
        return int(number) if epoch == self.epoch else None

    # -- reading --------------------------------------------------------------------

    def read(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        """Up to ``limit`` entries after ``after`` (``None``: from the oldest kept) of
        ``scope``/``prefix``, each with the position right after it."""
        with self._lock:
            self._trim(self.clock_ms())
            first = self.first
            if after == AT_END:
                return ChangesPage([], self.position(self.last))
            if after is None:
                start = first - 1
            else:
                parsed = self.parse(after)
                if parsed is None or parsed < first - 1 or parsed > self.last:
                    # another epoch, trimmed past, or ahead of this log (a log that
                    # restarted with fewer entries): the reader cannot go on unawares
                    raise ChangesCompacted(self.position(first - 1))
                start = parsed
            budget = scan_budget(limit)
            stop = min(self.last, start + budget)
            offset = self._head - first
            window = self._entries[start + 1 + offset : stop + 1 + offset]
        found: list[tuple[dict[str, Any], str]] = []
        sequence = start
        for sequence, entry in enumerate(window, start + 1):
            if matches(entry.scope, scope, prefix):
                found.append((entry_event(entry), self.position(sequence)))
                if len(found) == limit:
                    break
        return ChangesPage(found, self.position(sequence))
