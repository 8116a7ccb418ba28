"""The Redis adapter's change log reads (``state::changes``).

The log is a stream (``{prefix}:log``; on a cluster one per bucket, ``{prefix}:log:{tag}``)
that every script changing a scope appends to in the same step (see ``lib_mutation.lua``),
trimmed as it grows from its front. A position is the id of the last entry read and that
entry's number (the stream counts every entry it was ever given, ``entries-added``): on one
server (and behind Sentinel, where ``wait_replicas`` makes an acknowledged entry survive a
failover with its change) one such pair; on a cluster one per bucket, written for the
buckets that have moved (see :func:`encode_positions`). The oldest entry kept is number
``entries-added - length + 1``: a position whose next entry is older was trimmed past, and
the reader is told (``COMPACTED``). A position also carries the stream's gap count: a write
made with the log off counts itself there instead of appending
(:meth:`~state_tasks.adapters.redis.runner.RedisRunner.mutation_keys`), so a position given
before it is compacted too, never read on past changes the log does not hold.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from typing import Any

from state_tasks.adapters.changelog import scan_budget
from state_tasks.adapters.redis.layout import CLUSTER_BUCKETS, bucket_of
from state_tasks.adapters.redis.replies import Reply
from state_tasks.adapters.redis.runner import RedisRunner
from state_tasks.core.changes import (
    AT_END,
    ChangesCompacted,
    ChangesPage,
    LogEntry,
    change_log_off,
    entry_event,
)
from state_tasks.core.errors import ValidationError

#: A position in one stream: an entry id, that entry's number and the stream's gap count
#: (see ``changes.lua``).
_POSITION = re.compile(r"^(\d{1,20})-(\d{1,20}) (\d{1,20}) (\d{1,20})$")
#: A bucket never read: before its first entry, no gap.
ZERO = "0-0 0 0"


def _id_key(position: str) -> tuple[int, int]:
    """The entry id of a position, as numbers (they sort as the stream does)."""
    ms, _, rest = position.partition("-")
    return int(ms), int(rest.partition(" ")[0])


def _bad_position() -> ValidationError:
    return ValidationError(
        "state::changes: 'after' is not a position of this change log; pass the 'cursor' "
        "of a previous answer unchanged"
    )


def encode_positions(positions: dict[int, str]) -> str:
    """A cluster position: ``bucket:id`` of each bucket not at ``0-0``, compressed."""
    text = ",".join(f"{bucket}:{entry_id}" for bucket, entry_id in sorted(positions.items()))
    return "c" + base64.urlsafe_b64encode(zlib.compress(text.encode(), 9)).decode()


def decode_positions(position: str, buckets: int) -> dict[int, str]:
    if not position.startswith("c"):
        raise _bad_position()
    try:
        text = zlib.decompress(base64.urlsafe_b64decode(position[1:]), bufsize=1 << 16).decode()
    except (binascii.Error, zlib.error, ValueError):
        raise _bad_position() from None
    positions: dict[int, str] = {}
    for part in filter(None, text.split(",")):
        bucket, _, entry_id = part.partition(":")
        if not bucket.isdigit() or int(bucket) >= buckets or not _POSITION.match(entry_id):
            raise _bad_position()
        positions[int(bucket)] = entry_id
    return positions


class ChangeReads(RedisRunner):
    """``state::changes`` on Redis."""

    def changes(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        if self.change_log is None:
            raise change_log_off(type(self).__name__)
        if not self.is_cluster:
            if after is not None and after != AT_END and not _POSITION.match(after):
                raise _bad_position()
            reply = self._read([(0, after or "")], scope, prefix, limit)[0]
            if reply[0] == Reply.COMPACTED:
                raise ChangesCompacted(reply[1])
            entries = [(event, entry_id) for entry_id, event in self._events(reply[2])]
            return ChangesPage(entries, reply[1])
        return self._changes_across(scope, prefix, after, limit)

    def _read(
        self,
        starts: list[tuple[int, str]],
        want_scope: str | None,
        prefix: str | None,
        limit: int,
    ) -> list[Any]:
        """One ``changes`` script per ``(bucket, position)`` (one pipeline on a cluster)."""
        tags = self.layout.tags
        budget = scan_budget(limit)
        calls = [
            (
                [self.layout.log_key(tags[bucket]), self.layout.log_gaps_key(tags[bucket])],
                [start, limit, budget, want_scope or "", prefix or ""],
            )
            for bucket, start in starts
        ]
        return self.eval_each("changes", "changes", calls)

    @staticmethod
    def _events(rows: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        """``(entry id, event)`` of the rows a ``changes`` script returned."""
        found = []
        for entry_id, kind, scope, key, old, new, version, event_id in rows:
            entry = LogEntry(
                kind,
                scope,
                key,
                old or None,
                new or None,
                int(version),
                event_id or None,
                _id_key(entry_id)[0],
            )
            found.append((entry_id, entry_event(entry)))
        return found

    def _changes_across(
        self, scope: str | None, prefix: str | None, after: str | None, limit: int
    ) -> ChangesPage:
        """A cluster: the buckets read at once, their entries merged in id order (roughly
        the order of the masters' clocks; within a bucket, exactly the order applied)."""
        given = None if after in (None, AT_END) else decode_positions(after, CLUSTER_BUCKETS)
        buckets = [bucket_of(scope)] if scope is not None else list(range(CLUSTER_BUCKETS))
        first = AT_END if after == AT_END else ""
        starts = [
            (bucket, first if given is None else given.get(bucket, ZERO)) for bucket in buckets
        ]
        replies = self._read(starts, scope, prefix, limit)
        compacted = {
            bucket: reply[1]
            for (bucket, _), reply in zip(starts, replies, strict=True)
            if reply[0] == Reply.COMPACTED
        }
        if compacted:
            oldest = dict(given or {}) | compacted
            raise ChangesCompacted(encode_positions(_moved(oldest)))
        # where each bucket was read from (a first read: before its oldest entry kept)
        started = dict(given or {}) | {
            bucket: reply[3] for (bucket, _), reply in zip(starts, replies, strict=True)
        }
        positions = dict(started)
        merged: list[tuple[tuple[int, int], int, str, dict[str, Any]]] = []
        for (bucket, _), reply in zip(starts, replies, strict=True):
            positions[bucket] = reply[1]  # where it stopped looking, if all of it is taken
            for entry_id, event in self._events(reply[2]):
                merged.append((_id_key(entry_id), bucket, entry_id, event))
        merged.sort(key=lambda row: (row[0], row[1]))
        taken, left = merged[:limit], merged[limit:]
        for bucket in {row[1] for row in left}:
            # entries of this bucket were left: it resumes after its last one taken
            mine = [row[2] for row in taken if row[1] == bucket]
            positions[bucket] = mine[-1] if mine else started[bucket]
        entries = []
        walking = dict(started)
        for _, bucket, entry_id, event in taken:
            walking[bucket] = entry_id
            entries.append((event, encode_positions(_moved(walking))))
        return ChangesPage(entries, encode_positions(_moved(positions)))


def _moved(positions: dict[int, str]) -> dict[int, str]:
    return {bucket: entry_id for bucket, entry_id in positions.items() if entry_id != ZERO}
