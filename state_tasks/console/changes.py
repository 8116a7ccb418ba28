"""The console's live feed: the deployment's change log, read by one poller thread.

What it shows is what ``state::changes`` gives (see :mod:`state_tasks.core.changes`): every
change the adapter applied, with its exact old and new value, its version and its event
id: each set, update and delete, each operation of a batch (each with its key), each
expiry (``reason: "expired"``), and the changes handlers make inside a worker. A value too
long to send whole is a preview with its size (:mod:`state_tasks.console.values`); the
page loads it whole on demand (``/api/change``, which reads that one entry back from the
log with the cursor right before it, the row's ``from``).

How it reads: one thread per console (:class:`ChangeFeed`) calls ``state::changes`` through
the console's gateway, as every other console read: a worker answers, whatever the
adapter. A read that returns a full page (:data:`DEFAULT_READ_LIMIT`) reads on at once;
otherwise the next one is :data:`DEFAULT_POLL_INTERVAL_S` later, so a change shows within
about half a second. The last :data:`DEFAULT_BACKLOG` rows are kept for the pages, and
whether the reads succeed is the page's live dot: the status's ``state`` (:data:`STATES`).

Where it resumes:

- The console: its position (the cursor after the last change it read) is saved, at most
  once a second and when it stops, in a small file of the user's state folder
  (``$XDG_STATE_HOME/state-tasks``, by default ``~/.local/state/state-tasks``), one file per
  deployment (named after a hash of its broker's address; the file holds the address with
  no password, the cursor and the time of that change). A console that restarts reads on
  from there: the changes made while it was down show, none twice. With no file yet (or a
  folder it cannot write: it then warns and keeps the position in memory) it starts from
  the oldest change the log keeps.
- A page: the id of each change event is that change's cursor, so the browser's own
  reconnection (``Last-Event-ID``) resumes right after the last change the page got, also
  across a console restart: when the console does not hold that position, it reads the log
  from it until it meets what it holds (:class:`CatchUp`). A page opened anew gets the
  changes the console holds, then the new ones.
- A position the log no longer holds (trimmed past it: ``COMPACTED``): the feed goes on from
  the oldest change kept (``details.oldest``) and says so with a notice row: "changes between
  ... and ... were trimmed from the log; continuing from the oldest kept". A page that fell
  more than the backlog behind gets a notice too: no gap is silent.
- The log is off (``change_log: false``; ``state::changes`` answers ``CONFIG_ERROR``): the
  feed's status says so and the page shows it in place of changes; the feed asks again every
  :data:`LOG_OFF_RETRY_S`.

Pure except :class:`ChangeFeed`'s thread and :class:`CursorFile`'s file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from state_tasks.console.gateway import ConsoleError
from state_tasks.console.values import view

logger = logging.getLogger(__name__)

#: Seconds between two reads of the log when the last one was not full.
DEFAULT_POLL_INTERVAL_S = 0.5
#: Changes one read asks for (``state::changes``'s ``limit``).
DEFAULT_READ_LIMIT = 200
#: Rows (changes and notices) the console holds for the pages that open or reconnect.
DEFAULT_BACKLOG = 500
#: Seconds before the next read after one failed (no worker, no broker).
RETRY_S = 2.0
#: Seconds between two reads while the change log is off.
LOG_OFF_RETRY_S = 10.0
#: Seconds between two saves of the position, at most.
SAVE_INTERVAL_S = 1.0
#: Changes a page that reconnects is sent from the log, at most, before it is told that it
#: missed more and is given the changes the console holds.
CATCH_UP_MAX = 1000
#: Failed reads after a ``COMPACTED`` in a row before a reader gives up (the log is trimmed
#: faster than it can be read).
MAX_COMPACTED_RETRIES = 3

#: The feed's states, as the page's dot shows them: ``connecting`` (no answer yet, hollow),
#: ``live`` (a worker answers the reads, green), ``no_worker`` (the broker takes the reads
#: but no worker answers within the call timeout, grey), ``unreachable`` (the broker cannot
#: be reached, red), ``error`` (another failure, red), ``off`` (the change log is off, amber).
STATES = ("connecting", "live", "no_worker", "unreachable", "error", "off")
#: The state of each failure code (any other: ``error``).
STATE_OF_CODE = {"TIMEOUT": "no_worker", "BROKER_UNREACHABLE": "unreachable", "CONFIG_ERROR": "off"}

Row = dict[str, Any]
Read = Callable[[dict[str, Any]], Any]
AsyncRead = Callable[[dict[str, Any]], Awaitable[Any]]
Listener = Callable[[], None]


def change_row(entry: Mapping[str, Any], previous: str | None) -> Row:
    """A feed row from one entry of ``state::changes``: its facts, its values as
    :func:`~state_tasks.console.values.view` shows them (``old`` is ``None`` for a created
    key, ``new`` for a deleted one), its ``cursor`` and ``from``, the cursor before it."""
    event_type = str(entry["event_type"])
    row: Row = {
        "event_type": event_type,
        "scope": entry["scope"],
        "key": entry["key"],
        "version": entry.get("version"),
        "event_id": entry["event_id"],
        "time": entry["timestamp"],
        "cursor": entry["cursor"],
        "from": previous,
        "old": None if event_type == "state:created" else view(entry.get("old_value")),
        "new": None if event_type == "state:deleted" else view(entry.get("new_value")),
    }
    if "reason" in entry:
        row["reason"] = entry["reason"]
    return row


def notice(kind: str, message: str, **facts: Any) -> Row:
    """A notice row: something the page must say in the feed (``kind``: ``compacted``,
    ``skipped``, ``reset``, ``unread``)."""
    return {"notice": kind, "message": message, **facts}


def compacted_notice(since: str | None, until: str | None) -> Row:
    """The notice for changes trimmed from the log before they were read: those after
    ``since`` (the last change read, if known) up to ``until`` (the oldest kept, if any)."""
    first = since or "the last change shown"
    last = until or "the oldest change kept"
    return notice(
        "compacted",
        f"changes between {first} and {last} were trimmed from the log; "
        "continuing from the oldest kept",
        since=since,
        until=until,
    )


def state_folder() -> Path:
    """The user's folder for state kept between runs (XDG): ``$XDG_STATE_HOME/state-tasks``,
    by default ``~/.local/state/state-tasks``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # unset, or relative (the XDG spec says: ignore it)
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "state-tasks"


class CursorFile:
    """Where a console keeps its feed's position between runs: one small JSON file per
    deployment, ``{"broker", "cursor", "time"}``, replaced whole at each save."""

    def __init__(self, path: Path, broker: str = "") -> None:
        self.path = path
        self.broker = broker
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def for_deployment(cls, broker: str, folder: Path | None = None) -> CursorFile:
        """The file of the deployment whose broker is ``broker`` (as shown: no password)."""
        digest = hashlib.sha256(broker.encode()).hexdigest()[:16]
        return cls((folder or state_folder()) / f"console-feed-{digest}.json", broker)

    def load(self) -> tuple[str, str | None] | None:
        """``(cursor, time of that change)`` as last saved, or ``None``."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("live feed: cannot read %s (%s); starting from the oldest", self.path, e)
            return None
        if not isinstance(data, dict):
            data = {}
        cursor, moment = data.get("cursor"), data.get("time")
        if not isinstance(cursor, str) or not cursor or not isinstance(moment, str | None):
            logger.warning("live feed: %s holds no cursor; starting from the oldest", self.path)
            return None
        return cursor, moment

    def save(self, cursor: str, moment: str | None) -> None:
        """Write the position (a failure is warned about once, never raised)."""
        text = json.dumps({"broker": self.broker, "cursor": cursor, "time": moment})
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                partial.write_text(text)
                os.replace(partial, self.path)
            except OSError as e:
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "live feed: cannot save its position in %s (%s); a restarted console "
                        "will start again from the oldest change kept",
                        self.path,
                        e,
                    )


class ChangeFeed:
    """The change log read by one thread, its last rows kept, and every page told of new
    ones (see the module docs).

    :param read: one ``state::changes`` call (the gateway's, blocking), raising
        :class:`~state_tasks.console.gateway.ConsoleError`.
    :param cursor_file: where the position is kept between runs (``None``: in memory only).
    """

    def __init__(
        self,
        read: Read,
        *,
        cursor_file: CursorFile | None = None,
        backlog: int = DEFAULT_BACKLOG,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        read_limit: int = DEFAULT_READ_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._file = cursor_file
        self._backlog = backlog
        self.poll_interval_s = poll_interval_s
        self.read_limit = read_limit
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: deque[Row] = deque()
        self._next_seq = 1
        # A position -> the seq of the row right after it (and back, to forget them with
        # the row); an event id -> its row's seq.
        self._seq_after: dict[str, int] = {}
        self._positions_of: dict[int, list[str]] = {}
        self._seq_of_event: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._status: dict[str, Any] = {
            "connected": False,
            "error": None,
            "log": None,
            "state": "connecting",
        }
        #: The position after the last change read (``None``: from the oldest kept).
        self.cursor: str | None = None
        self._last_time: str | None = None  # the timestamp of the last change read
        loaded = cursor_file.load() if cursor_file is not None else None
        if loaded is not None:
            self.cursor, self._last_time = loaded
        self._saved = self.cursor
        self._saved_at = clock()
        # After a COMPACTED: the notice is published with the next read (which tells the
        # oldest change kept); since: the time of the last change read before the gap.
        self._in_gap = False
        self._gap_since: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the pages read ---------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener()`` (from the poller's thread) when rows come or the status
        changes; returns the function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """``connected`` (the last read was answered), ``error`` (why not, no password),
        ``log`` (``"on"``, ``"off"``, or ``None`` before the first answer), ``state`` (one of
        :data:`STATES`)."""
        with self._lock:
            return dict(self._status)

    @property
    def next_seq(self) -> int:
        """The number the next row will get."""
        with self._lock:
            return self._next_seq

    def first_seq(self) -> int:
        """The number of the oldest row held (:attr:`next_seq` when none is)."""
        with self._lock:
            return self._rows[0]["seq"] if self._rows else self._next_seq

    def rows_from(self, seq: int) -> list[Row]:
        """The rows held numbered ``seq`` or more, oldest first."""
        with self._lock:
            if not self._rows or seq > self._rows[-1]["seq"]:
                return []
            return list(itertools.islice(self._rows, max(0, seq - self._rows[0]["seq"]), None))

    def seq_after(self, cursor: str) -> int | None:
        """The number of the row right after the position ``cursor``, if the feed knows that
        position (a row's cursor, the position a row was read from, or the feed's own)."""
        with self._lock:
            if cursor == self.cursor:
                return self._next_seq
            return self._seq_after.get(cursor)

    def seq_of_event(self, event_id: str) -> int | None:
        """The number of the row of the change ``event_id``, if it is held."""
        with self._lock:
            return self._seq_of_event.get(event_id)

    # -- the poller --------------------------------------------------------------------

    def poll(self) -> float:
        """One read after :attr:`cursor`: its rows published; returns how long to wait
        before the next (0 after a full page)."""
        payload: dict[str, Any] = {"limit": self.read_limit}
        if self.cursor is not None:
            payload["after"] = self.cursor
        try:
            answer = self._read(payload)
        except ConsoleError as e:
            return self._failed(e)
        except Exception as e:  # the thread must go on: say what it was
            logger.exception("live feed: reading the change log failed")
            return self._failed(ConsoleError("CONSOLE_ERROR", f"{type(e).__name__}: {e}"))
        entries = list(answer.get("changes") or ())
        rows: list[Row] = []
        if self._in_gap:
            until = entries[0]["timestamp"] if entries else None
            rows.append(compacted_notice(self._gap_since, until))
            self._in_gap = False
        previous = self.cursor
        for entry in entries:
            rows.append(change_row(entry, previous))
            previous = entry["cursor"]
        with self._lock:
            self.cursor = answer.get("cursor") or previous
            if entries:
                self._last_time = entries[-1]["timestamp"]
        self._publish(rows, {"connected": True, "error": None, "log": "on", "state": "live"})
        self.save()
        return 0.0 if len(entries) >= self.read_limit else self.poll_interval_s

    def _failed(self, error: ConsoleError) -> float:
        """Take a failed read: go on after a compaction, start over from a refused
        position, else show the error; returns how long to wait."""
        oldest = (error.details or {}).get("oldest")
        if error.code == "COMPACTED" and isinstance(oldest, str):
            logger.warning(
                "live feed: the change log was trimmed past the feed's position; "
                "continuing from the oldest change kept"
            )
            again = self._in_gap  # trimmed again before a read: not at once
            if not self._in_gap:
                self._in_gap, self._gap_since = True, self._last_time
            with self._lock:
                self.cursor = oldest
            return self.poll_interval_s if again else 0.0
        if error.code == "VALIDATION_ERROR" and self.cursor is not None:
            # A position this deployment does not take (a file of another deployment).
            message = (
                f"the feed's position was refused ({error.message}); reading again from the "
                "oldest change kept"
            )
            logger.warning("live feed: %s", message)
            with self._lock:
                self.cursor = None
            self._publish([notice("reset", message)], None)
            return 0.0
        if error.code == "CONFIG_ERROR":
            self._publish(
                [], {"connected": True, "error": error.message, "log": "off", "state": "off"}
            )
            return LOG_OFF_RETRY_S
        self._publish(
            [],
            {
                "connected": False,
                "error": f"{error.code}: {error.message}",
                "state": STATE_OF_CODE.get(error.code, "error"),
            },
        )
        return RETRY_S

    def _publish(self, rows: list[Row], status: dict[str, Any] | None) -> None:
        """Number and keep the rows, update the status, tell every listener if anything
        changed."""
        with self._lock:
            before = dict(self._status)
            if status is not None:
                self._status.update(status)
            changed = bool(rows) or self._status != before
            for row in rows:
                row["seq"] = seq = self._next_seq
                self._next_seq += 1
                self._rows.append(row)
                if "cursor" in row:
                    if row["from"] is not None:
                        self._point(row["from"], seq)
                    self._point(row["cursor"], seq + 1)
                    self._seq_of_event[row["event_id"]] = seq
            while len(self._rows) > self._backlog:
                self._forget(self._rows.popleft())
            listeners = list(self._listeners) if changed else []
            error = self._status["error"]
        if error and error != before["error"]:
            logger.warning("live feed: %s", error)
        for listener in listeners:
            try:
                listener()
            except Exception:  # one broken page must not stop the feed
                logger.exception("a live-feed listener failed")

    def _point(self, position: str, seq: int) -> None:
        """Remember that the row after ``position`` is ``seq`` (the first row known wins)."""
        if position not in self._seq_after:
            self._seq_after[position] = seq
            self._positions_of.setdefault(seq, []).append(position)

    def _forget(self, row: Row) -> None:
        """Drop what points at a row no longer held."""
        seq = row["seq"]
        for position in self._positions_of.pop(seq, ()):
            if self._seq_after.get(position) == seq:
                del self._seq_after[position]
        if "event_id" in row and self._seq_of_event.get(row["event_id"]) == seq:
            del self._seq_of_event[row["event_id"]]

    def save(self, force: bool = False) -> None:
        """Save the position to the cursor file (at most every :data:`SAVE_INTERVAL_S`,
        unless ``force``)."""
        with self._lock:
            cursor, moment = self.cursor, self._last_time
            due = force or self._clock() - self._saved_at >= SAVE_INTERVAL_S
            if self._file is None or cursor is None or cursor == self._saved or not due:
                return
            self._saved, self._saved_at = cursor, self._clock()
        self._file.save(cursor, moment)

    def start(self) -> None:
        """Read in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="console-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading (returns at once) and save the position."""
        self._stop.set()
        self.save(force=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.poll()
            if wait:
                self._stop.wait(wait)


class CatchUp:
    """A page's way back to the feed from its own position, when the feed does not hold it
    (the page was away longer than the backlog, or the console restarted meanwhile): the log
    is read from there (``read``: the gateway's ``state::changes``, async) until an entry is
    one the feed holds; then the page goes on with the feed's rows from
    :attr:`start_seq`, leaving out the changes in :attr:`sent`."""

    def __init__(
        self, feed: ChangeFeed, read: AsyncRead, after: str, max_rows: int = CATCH_UP_MAX
    ) -> None:
        self.feed = feed
        self._read = read
        self.after = after
        self.max_rows = max_rows
        #: Where the page goes on in the feed (set when :meth:`rows` ends).
        self.start_seq = feed.next_seq
        #: The event ids of the changes sent from the log.
        self.sent: set[str] = set()

    async def rows(self) -> AsyncIterator[Row]:
        """The rows from the log (changes, and notices of what cannot be read)."""
        after, gap, compacted = self.after, False, 0
        limit = min(DEFAULT_READ_LIMIT, self.max_rows)
        while True:
            before = self.feed.next_seq
            try:
                answer = await self._read({"after": after, "limit": limit})
            except ConsoleError as e:
                oldest = (e.details or {}).get("oldest")
                if e.code == "COMPACTED" and isinstance(oldest, str):
                    compacted += 1
                    if compacted <= MAX_COMPACTED_RETRIES:
                        after, gap = oldest, True
                        continue
                if e.code != "CONFIG_ERROR":  # the log off: the feed's status says so
                    yield notice(
                        "unread",
                        "the changes since this page's last one cannot be read now "
                        f"({e.code}: {e.message}); showing the ones the console holds",
                    )
                self.start_seq = self.feed.first_seq()
                return
            entries = list(answer.get("changes") or ())
            if gap:
                yield compacted_notice(None, entries[0]["timestamp"] if entries else None)
                gap = False
            previous = after
            for entry in entries:
                held = self.feed.seq_of_event(entry["event_id"])
                if held is not None:  # the feed has it, and what follows
                    self.start_seq = held
                    return
                if len(self.sent) >= self.max_rows:
                    yield notice(
                        "skipped",
                        f"more than {self.max_rows:,} changes since this page's last one: "
                        "the ones before those the console holds are not shown here",
                    )
                    self.start_seq = self.feed.first_seq()
                    return
                self.sent.add(entry["event_id"])
                yield change_row(entry, previous)
                previous = entry["cursor"]
            after = answer.get("cursor") or previous
            if not entries:  # the head of the log: the feed's next rows are new to the page
                self.start_seq = before
                return
