"""The values a process last wrote or saw, to skip the first read of an update.

An update computes its new value in Python from the old one and has a script write it
only if the key still holds that old value (a check-and-set). When this process
remembers what it last wrote or saw there, the check-and-set either confirms the guess or
returns the current text to compute from: a stale guess costs one round trip, never a
wrong write, and a worker that keeps updating the same keys pays one round trip per
update instead of two. A guess never decides an error: ops that fail on one are judged
again on a fresh read (see :meth:`state_tasks.adapters.redis.RedisAdapter.update_versioned`).
"""

from __future__ import annotations

import threading

#: How many recently updated values a process remembers.
RECENT_MAX_ENTRIES = 4096
#: Larger values are not remembered.
RECENT_VALUE_MAX_CHARS = 16 * 1024

#: (scope, key)
Slot = tuple[str, str]


class RecentValues:
    """A small bounded map ``(scope, key) -> JSON text`` (``None``: seen absent), oldest
    forgotten first; safe to share between threads."""

    def __init__(self, max_entries: int = RECENT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._values: dict[Slot, str | None] = {}
        self._lock = threading.Lock()

    def __contains__(self, slot: Slot) -> bool:
        return slot in self._values

    def get(self, slot: Slot) -> str | None:
        return self._values.get(slot)

    def remember(self, slot: Slot, text: str | None) -> None:
        if text is not None and len(text) > RECENT_VALUE_MAX_CHARS:
            self.forget(slot)
            return
        with self._lock:
            self._values.pop(slot, None)
            self._values[slot] = text
            if len(self._values) > self.max_entries:
                del self._values[next(iter(self._values))]

    def forget(self, slot: Slot) -> None:
        self._values.pop(slot, None)
