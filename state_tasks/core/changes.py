"""The change log's shared parts: its settings, an entry, and the event an entry reads as.

Every built-in adapter keeps a *change log* (see :mod:`state_tasks.adapters.changelog` and
the RedisAdapter's ``log`` stream): each change it applies (a set, an update, a delete, each
operation of a batch, an expiry) is appended in the same atomic step as the change itself,
so a change is in the log if and only if it was applied. ``state::changes`` reads it back
from any position still kept; a position older than what is kept is ``COMPACTED``, never a
silent gap.

An entry reads as the change's trigger event (SPEC §4) plus its ``cursor``; its
``event_id`` is the one its triggers were sent with: the operation id (``<id>:<index>`` for
an operation of a batch), the expiry's id for an expiry, and for a change made without an
operation id (an in-process call) one derived from the key and its version
(:func:`change_event_id`), which the service gives the trigger event too. Its ``timestamp``
is when the adapter applied the change (on Redis, the server's clock, to the millisecond).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from state_tasks.core import codec
from state_tasks.core.errors import ConfigError, StateError

#: How many entries a change log keeps at most, and for how long, unless configured.
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_AGE_S = 86_400
#: ``state::changes``: entries per answer, by default and at most.
DEFAULT_CHANGES_LIMIT = 100
MAX_CHANGES_LIMIT = 1000

#: ``after`` meaning "from the end": a read returns nothing and the position of the newest
#: entry (so the next read gives only the changes made from now on).
AT_END = "now"

#: What an entry records: created, updated, deleted, or expired (deleted by its ttl).
EntryKind = Literal["c", "u", "d", "x"]

_EVENT_TYPES: dict[str, str] = {
    "c": "state:created",
    "u": "state:updated",
    "d": "state:deleted",
    "x": "state:deleted",
}


class ChangeLogSettings(BaseModel):
    """``change_log`` in ``state.yaml`` (next to ``adapter``): how much the log keeps.

    Entries beyond ``max_entries``, or older than ``max_age_s``, are trimmed as new ones
    are appended (in whole blocks, so a trim costs the same however long the log is: a log
    may keep a few more than ``max_entries`` for a while). ``change_log: false`` turns the
    log off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1, le=100_000_000)
    max_age_s: int = Field(default=DEFAULT_MAX_AGE_S, ge=1, le=10 * 365 * 86_400)


class ChangesCompacted(Exception):
    """The position asked for is older than the oldest entry kept: entries after it were
    trimmed. ``oldest``: the position just before the oldest entry kept (reading from it
    gives everything still kept)."""

    def __init__(self, oldest: str) -> None:
        super().__init__(f"the change log no longer holds that position (oldest: {oldest})")
        self.oldest = oldest


class Compacted(StateError):
    """``state::changes`` was asked to read from a cursor older than the oldest entry kept.
    ``details["oldest"]``: a cursor from which everything still kept can be read."""

    default_code = "COMPACTED"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One change as an adapter's log keeps it: JSON texts, not values."""

    kind: EntryKind
    scope: str
    key: str
    old: str | None
    new: str | None
    version: int
    #: The operation's event id (``None``: derived, see :func:`entry_event_id`).
    event_id: str | None
    timestamp_ms: int


@dataclass(frozen=True)
class ChangesPage:
    """What an adapter's ``changes`` gives: events, each with the adapter's position right
    after it, and the position to read on from (the last one's, or where the read stopped
    looking when filtered entries were passed over, or the one given when there is none)."""

    entries: list[tuple[dict[str, Any], str]]
    position: str


def change_event_id(event_type: str, scope: str, key: str, version: int) -> str:
    """The ``event_id`` of a change made without an operation id: derived from what makes it
    unique (a key's versions are never reused), so the trigger event and the log agree."""
    digest = hashlib.sha256(json.dumps([event_type, scope, key, version]).encode()).hexdigest()
    return f"v-{digest[:32]}"


def expiry_event_id(scope: str, key: str, version: int) -> str:
    """The ``event_id`` of the expiry of ``version`` of ``(scope, key)``: the same whoever
    fires it, so a handler deduplicating on ``event_id`` sees one expiry once."""
    digest = hashlib.sha256(json.dumps([scope, key, version]).encode()).hexdigest()[:32]
    return f"expired-{digest}"


def entry_event_id(entry: LogEntry) -> str:
    if entry.kind == "x":
        return expiry_event_id(entry.scope, entry.key, entry.version)
    if entry.event_id:
        return entry.event_id
    return change_event_id(_EVENT_TYPES[entry.kind], entry.scope, entry.key, entry.version)


def iso_timestamp(ms: int) -> str:
    """An event's ``timestamp`` from milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds")


def entry_event(entry: LogEntry) -> dict[str, Any]:
    """The trigger event an entry reads as (without its cursor)."""
    event_type = _EVENT_TYPES[entry.kind]
    event: dict[str, Any] = {
        "type": "state",
        "event_type": event_type,
        "scope": entry.scope,
        "key": entry.key,
        "old_value": codec.decode(entry.old),
        "new_value": codec.decode(entry.new),
        "event_id": entry_event_id(entry),
        "timestamp": iso_timestamp(entry.timestamp_ms),
        "version": entry.version,
    }
    if event_type == "state:deleted":
        event["reason"] = "expired" if entry.kind == "x" else "deleted"
    return event


def matches(scope: str, want_scope: str | None, prefix: str | None) -> bool:
    """Whether an entry of ``scope`` is asked for by a ``scope``/``prefix`` filter."""
    if want_scope is not None and scope != want_scope:
        return False
    return prefix is None or scope.startswith(prefix)


def change_log_off(adapter: str) -> ConfigError:
    """The error of ``state::changes`` when the log is off."""
    return ConfigError(
        f"state::changes: the change log of this {adapter} is off (change_log: false in "
        "state.yaml); turn it on (change_log: {max_entries: ..., max_age_s: ...}, or remove "
        "the line for the defaults) to read changes"
    )
