"""The file-based KvStore: per-scope files plus a write-ahead journal.

Folder layout (``file_path``)::

    LOCK                      held (flock) by the one process that owns the store; holds its pid
    journal-<n>.log           write-ahead journal segments, replayed in order at start-up
    changes-<n>.log           journal segments a save covered, kept for the change log
    triggers.json             the stored triggers
    ops.json                  applied operation ids still remembered (see below)
    versions.json             the store's version counter (the last version given)
    scope-<name>.json         one file per scope

Every mutation is applied in memory and appended to the current journal segment with
one ``write()`` before the call returns, so an acknowledged write survives a ``kill -9``
of the worker (the bytes are in the kernel's page cache). ``fsync`` decides what
survives a crash of the machine itself, like Redis's ``appendfsync``:

- ``always``: fsync after every write. Nothing acknowledged is lost; slowest.
- ``interval`` (default): fsync at most once a second. A power loss can lose the last second.
- ``never``: leave it to the operating system (usually within 30 s).

Every ``save_interval_ms`` a save starts a new journal segment, snapshots only the
scopes changed since the last save (under the lock: a shallow copy of their dicts),
then, outside the lock, writes each to a temporary file, fsyncs it, renames it over
the old one, removes the files of scopes left empty, fsyncs the folder, and deletes
the journal segments the save covered (with the change log on, renames them
``changes-<n>.log``: see below). A crash at any point leaves files from which
start-up rebuilds the same state: journal records hold absolute values, so replaying a
segment over a file that already includes it changes nothing.

A scope file is JSON with a format name and a version::

    {"format": "state_tasks.kv_scope", "version": 2, "scope": "users",
     "entries": [["user-1", {...}, 7, null], ["user-2", {...}, 9, 1767225600000]]}

Each entry is the key, its value, its version and its due time (wall-clock milliseconds
since the epoch, ``null``: permanent). Files of version 1 (``[key, value]`` entries, from
before versions) load with every key at version 1 and no expiry. Journal records of sets
carry ``"ver"`` and, for a key with a ttl, ``"due"``; batch entries are ``[key, value, ver,
due]``. Expiries survive a restart: a key whose due time passed while the store was closed
is hidden at once and expired (its event fired) by the first sweep.

Its name encodes the scope: lowercase ASCII letters, digits, ``-`` and ``_`` stand for
themselves, every other byte of the UTF-8 is ``%XX`` (so no name is ``.``, ``..``, holds
a ``/`` or differs from another only by case). A name that would be too long for the
file system keeps a prefix and ends in a hash of the scope. The scope itself is read
back from the file's ``scope`` field.

Applied operation ids (see :mod:`state_tasks.adapters.base`) travel in the journal record of their
change as ``"id"`` and ``"exp"`` (wall-clock expiry, whole seconds), without the old
value: replay derives it from the state the record is replayed over. Settling is not a
write of its own: the ids settled since the last record ride in front of the next one, in
the same ``write()``, as ``{"op": "settled", "ops": {id: exp or [exp, versions], ...}}``
(a delete of an absent key, settled at once, is journaled so at once: it has no other
record)
(``versions``: what the operation gave, the version of a set or an update as a number, a
batch's as :func:`state_tasks.adapters.base.settled_marker` text; a settled repeat answers with
them; plain ``exp``, as written before they were kept, answers without). If a crash loses
them, those records come back whole, which is the safe direction (the repeat re-sends the
trigger work). A save writes ``ops.json`` first, when any record changed, as::

    {"format": "state_tasks.applied_ops", "version": 2, "covered": <last journal segment>,
     "settled": {id: exp or [exp, versions], ...}, "whole": {id: [old text, new text, exp], ...},
     "expiring": [[scope, key, version, value], ...]}

A settled operation is its id and a few numbers there; only those not yet settled carry
their values. ``expiring`` (optional) holds the expiries whose events are pending (see
:meth:`state_tasks.adapters.base.StateAdapter.pending_expiries`): a ``del`` record with ``"reason":
"expired"`` makes one on replay, and the ids of expiries whose events were sent ride in
front of the next record like settled ids, as ``{"op": "sent", "expiries": [[scope, key,
version], ...]}``. Pending expiries loaded at start-up were handed over by a process that
is gone: the first sweep sends them again.

Journal segments up to ``covered`` are then described by ``ops.json``, so replay takes only
their data, and derives old values (and pending expiries) only from later segments, whose
records follow the scope files' state exactly.

A batch (``state::batch``) is one record, ``{"op": "batch", "scope", "ops": [[key, value]
or [key], ...]}`` (a set or a delete per operation, in order, with the batch's ``id`` and
``exp``): one line, one CRC, so after a crash the batch is there whole or not at all, and
replay derives its results (and its operation record) as it applies it.

A journal record is one line: the CRC-32 of the JSON (8 hex digits), a space, the JSON.
A torn last line (a crash mid-append) is cut off at start-up with a warning; a bad
record before the end, or a scope file that cannot be parsed, stops start-up with a
message naming the file, unless ``move_corrupt_aside`` is set, which renames the file
to ``<name>.corrupt-<time>`` (and says so in the log) and goes on without it.

The change log (:mod:`state_tasks.adapters.changelog`) rides in the same records: with it
on, a ``set``, ``del`` or ``batch`` record also carries ``"lsn"`` (the entry's number; a
batch's first), ``"ts"`` (when it was applied, ms) and ``"was"`` (the old value; for a batch
one ``[]``, ``[version]`` or ``[version, old value]`` per operation), so a change is in the
log exactly when its record is in the journal. A save keeps the segments it covered as
``changes-<n>.log`` until every entry in them is trimmed; start-up reads them and the
journal back into the log, whose epoch and last number ``versions.json`` keeps
(``log_epoch``, ``log_last``). A store opened with the log off removes both, so a log turned
on again is a new one: cursors of the old one are ``COMPACTED``, never read on past the
changes made meanwhile.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import zlib
from collections.abc import (
    Callable,
    Sequence,
)
from pathlib import Path
from typing import (
    Any,
)

from state_tasks.adapters.base import (
    Expired,
)
from state_tasks.adapters.changelog import MemoryChangeLog
from state_tasks.adapters.kv_store import (
    FsyncPolicy,
    KvStore,
    KvStoreSettings,
    make_slot,
    slot_parts,
    wall_clock_ms,
)
from state_tasks.adapters.records import (
    BATCH_RECORD,
    OpRecord,
    Settled,
    SettledOp,
    batch_record,
    settled_expiry,
)
from state_tasks.core.batch import (
    BatchOp,
    VersionedBatchResult,
)
from state_tasks.core.changes import ChangeLogSettings, EntryKind, LogEntry
from state_tasks.core.codec import dumps
from state_tasks.core.errors import AdapterError
from state_tasks.core.ownership import (
    OwnedElsewhere,
    take_ownership,
)

logger = logging.getLogger(__name__)


FORMAT_NAME = "state_tasks.kv_scope"
FORMAT_VERSION = 2
VERSIONS_FORMAT_NAME = "state_tasks.kv_versions"
OPS_FORMAT_NAME = "state_tasks.applied_ops"
OPS_FORMAT_VERSION = 2
#: ``fsync: interval`` syncs the journal at most this often.
FSYNC_INTERVAL_S = 1.0
#: Longest encoded scope kept whole in a file name (names stay under 255 bytes).
MAX_ENCODED_NAME = 180

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")
_SEGMENT = re.compile(r"^journal-(\d{12})\.log$")
#: A journal segment kept, after a save covered it, for the change log entries it holds.
_LOG_SEGMENT = re.compile(r"^changes-(\d{12})\.log$")


def scope_file_name(scope: str) -> str:
    """The file name of a scope: reversible for short names, hash-suffixed for long ones."""
    raw = scope.encode("utf-8")
    encoded = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)
    if len(encoded) > MAX_ENCODED_NAME:
        digest = hashlib.sha256(raw).hexdigest()[:32]
        encoded = f"{encoded[:120].rstrip('%0123456789ABCDEF')}~{digest}"
    return f"scope-{encoded}.json"


class FileKvStore(KvStore):
    """A KvStore whose data survives restarts and ``kill -9`` (see the module docs)."""

    def __init__(
        self,
        settings: KvStoreSettings | None = None,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        **options: Any,
    ) -> None:
        if settings is None:
            if "file_path" in options:  # a Path is a path
                options = {**options, "file_path": os.fspath(options["file_path"])}
            settings = KvStoreSettings.validated({"store_method": "file_based", **options})
        super().__init__(settings, clock_ms=clock_ms)
        self.path = Path(settings.file_path).absolute()
        self.save_interval_ms = settings.save_interval_ms
        self.fsync: FsyncPolicy = settings.fsync
        self.move_corrupt_aside = settings.move_corrupt_aside
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._segment = 0
        self._unsynced = False
        self._dirty_scopes: set[str] = set()
        self._triggers_dirty = False
        self._ops_dirty = False
        self._counter_saved = 0
        # Journal segments up to this one are described by ops.json (set while loading).
        self._ops_covered = 0
        # Operations settled since the last journal record: (id, wall-clock expiry, versions).
        self._settled_unjournaled: builtins.list[tuple[str, int, int | str | None]] = []
        # Expiries whose events were sent since the last journal record: (scope, key, version).
        self._sent_unjournaled: builtins.list[tuple[str, str, int]] = []
        self._save_lock = threading.Lock()  # one save at a time
        # The change log's epoch and last number as versions.json had them, and the last
        # entry number of each segment kept for the log (see the module docs).
        self._log_saved: tuple[str | None, int] = (None, 0)
        self._log_segments: dict[int, int] = {}
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None
        self._opened = False

    def __repr__(self) -> str:
        return f"FileKvStore(file_path={str(self.path)!r}, fsync={self.fsync!r})"

    # -- life cycle ----------------------------------------------------------------

    def open(self) -> None:
        """Take ownership of the folder, load scope files, replay the journal, start saving."""
        if self._opened:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdapterError(f"cannot create file_path {str(self.path)!r}: {e.strerror}") from e
        self._take_ownership()
        try:
            self._load_scope_files()
            self._load_counter()
            self._load_triggers()
            self._load_ops()
            segments = self._segments()
            for number, segment in segments:
                self._replay(
                    segment, is_last=number == segments[-1][0], ops=number > self._ops_covered
                )
            self._load_log()
            kept = [number for number, _ in self._log_files()]
            self._segment = max([n for n, _ in segments] + kept + [0]) + 1
            self._journal_fd = self._open_segment(self._segment)
        except BaseException:
            self._release_ownership()
            raise
        self._opened = True
        self._saver = threading.Thread(target=self._run_saver, name="kvstore-saver", daemon=True)
        self._saver.start()
        logger.info(
            "KvStore file_based: %d scopes loaded from %s (fsync=%s, save every %d ms)",
            len(self._scopes),
            self.path,
            self.fsync,
            self.save_interval_ms,
        )

    def close(self) -> None:
        """Stop the saver, save everything, and let go of the folder."""
        if not self._opened:
            return
        self._stop.set()
        if self._saver is not None:
            self._saver.join()
        self.save()
        with self._lock:
            if self._journal_fd is not None:
                os.fsync(self._journal_fd)
                os.close(self._journal_fd)
                self._journal_fd = None
        self._release_ownership()
        self._opened = False

    def _take_ownership(self) -> None:
        lock_path = self.path / "LOCK"
        try:
            self._lock_fd = take_ownership(lock_path)
        except OwnedElsewhere as e:
            raise AdapterError(
                f"the KvStore at {str(self.path)!r} is already open in another process "
                f"(pid {e.owner}). A KvStore lives in one process: stop that one, give this one "
                "another file_path, or use the RedisAdapter to share state between processes."
            ) from e
        except OSError as e:
            raise AdapterError(f"cannot lock {str(lock_path)!r}: {e.strerror}") from e

    def _release_ownership(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- loading -------------------------------------------------------------------

    def _corrupt(self, path: Path, why: str) -> None:
        if not self.move_corrupt_aside:
            raise AdapterError(
                f"{str(path)!r} is corrupt ({why}). Nothing was loaded. Repair or remove the "
                "file, or set move_corrupt_aside: true in the KvStore config to move it aside "
                "and start without it."
            )
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.rename(aside)
        logger.error("moved corrupt %s aside to %s (%s); its data is NOT loaded", path, aside, why)

    def _load_scope_files(self) -> None:
        for path in sorted(self.path.glob("scope-*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                if document.get("format") != FORMAT_NAME:
                    raise ValueError(f"format is {document.get('format')!r}, not {FORMAT_NAME}")
                version = document.get("version")
                if version not in (1, FORMAT_VERSION):
                    raise ValueError(f"unsupported version {version!r}")
                scope = document["scope"]
                rows = document["entries"]
                if not isinstance(scope, str) or scope_file_name(scope) != path.name:
                    raise ValueError(f"holds scope {scope!r}, which does not belong in this file")
                # Keys from before versions (rows of two) are at 1.
                entries = {
                    str(row[0]): make_slot(dumps(row[1]), int(row[2]) if len(row) > 2 else 1)
                    for row in rows
                }
                highest = max((int(row[2]) for row in rows if len(row) > 2), default=1)
                dues = {str(row[0]): int(row[3]) for row in rows if len(row) > 3 and row[3]}
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
                self._corrupt(path, str(e))
                continue
            if entries:
                self._scopes[scope] = entries
                # Keys from before versions are at 1: the counter starts above.
                self._counter = max(self._counter, 1, highest)
                for key, due in dues.items():
                    self._set_due(scope, key, due)

    def _load_counter(self) -> None:
        path = self.path / "versions.json"
        if not path.exists():
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != VERSIONS_FORMAT_NAME:
                raise ValueError(f"format is {document.get('format')!r}")
            self._counter = max(self._counter, int(document["counter"]))
            epoch = document.get("log_epoch")
            self._log_saved = (str(epoch) if epoch else None, int(document.get("log_last", 0)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._corrupt(path, str(e))
        self._counter_saved = self._counter

    # -- the change log ---------------------------------------------------------------

    def use_change_log(self, settings: ChangeLogSettings | None) -> None:
        if getattr(self, "_opened", False):
            raise AdapterError("use_change_log: call it before the store is opened")
        super().use_change_log(settings)

    def _log_files(self) -> builtins.list[tuple[int, Path]]:
        found = []
        for path in self.path.iterdir():
            match = _LOG_SEGMENT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _load_log(self) -> None:
        """The change log from the segments kept for it and the journal, in order."""
        if self.change_log is None:
            for _, path in self._log_files():  # the log was turned off: its files go
                path.unlink()
            if self._log_saved[0] is not None:
                # and its epoch, now: a log turned on again is a new one, whose readers
                # are told that changes were not logged (COMPACTED), never read on past them
                self._write_versions(self._counter)
                _fsync_dir(self.path)
            return
        epoch, last = self._log_saved
        log = MemoryChangeLog(self.change_log, self.clock_ms, epoch, last)
        numbered = sorted([*self._log_files(), *self._segments()])
        entries: builtins.list[tuple[int, LogEntry]] = []
        for number, path in numbered:
            highest = 0
            for line in path.read_bytes().split(b"\n"):
                record = _parse_record(line) if line else None
                if record is None or "lsn" not in record:
                    continue
                for entry in _log_entries(record):
                    entries.append(entry)
                    highest = entry[0]
            # (a journal segment becomes a kept one at the next save)
            self._log_segments[number] = max(highest, self._log_segments.get(number, 0))
        log.load(entries)
        self._log = log
        self._log_saved = (log.epoch, log.last)
        self._counter_saved = -1  # versions.json gets the epoch at the next save

    def _load_ops(self) -> None:
        path = self.path / "ops.json"
        if not path.exists():
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != OPS_FORMAT_NAME:
                raise ValueError(f"format is {document.get('format')!r}, not {OPS_FORMAT_NAME}")
            version = document.get("version")
            if version == 1:  # whole records only, no coverage
                covered, settled, whole = 0, {}, document["ops"]
            elif version == OPS_FORMAT_VERSION:
                covered, settled = document["covered"], document["settled"]
                whole = document["whole"]
            else:
                raise ValueError(f"unsupported version {version!r}")
            for op_id, row in whole.items():
                old, new, expires_wall = row[:3]
                version = int(row[3]) if len(row) > 3 else 0
                if _alive(expires_wall):
                    self._ops.add(str(op_id), (old, new, _monotonic(expires_wall), version))
            for op_id, row in settled.items():
                expires_wall, versions = _settled_row(row)
                if _alive(expires_wall):
                    self._ops.mark(str(op_id), _monotonic(expires_wall), versions)
            for scope, key, version, value in document.get("expiring", []):
                # Handed over by a process that is gone: sent again by the first sweep.
                gone = Expired(str(scope), str(key), dumps(value), int(version))
                self._expiring[(gone.scope, gone.key, gone.version)] = (gone, -math.inf)
            self._ops_covered = int(covered)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._corrupt(path, str(e))

    def _load_triggers(self) -> None:
        path = self.path / "triggers.json"
        if not path.exists():
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            self._triggers = {str(k): str(v) for k, v in document["triggers"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._corrupt(path, str(e))

    def _segments(self) -> builtins.list[tuple[int, Path]]:
        found = []
        for path in self.path.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _replay(self, segment: Path, is_last: bool, ops: bool) -> None:
        """Apply a journal segment; ``ops``: take its operation records too."""
        data = segment.read_bytes()
        offset = 0
        while offset < len(data):
            end = data.find(b"\n", offset)
            line = data[offset:] if end < 0 else data[offset:end]
            record = _parse_record(line) if end >= 0 else None
            if record is None:
                if is_last and (end < 0 or data.find(b"\n", end + 1) < 0):
                    # A torn tail: the crash came mid-append, before the call returned.
                    logger.warning(
                        "journal %s: cut a torn last record of %d bytes (from a crash mid-write)",
                        segment,
                        len(data) - offset,
                    )
                    with segment.open("r+b") as handle:
                        handle.truncate(offset)
                    break
                self._corrupt(segment, f"bad record at byte {offset}")
                return
            # Marks what it touches dirty: the next save compacts it.
            self._apply_record(record, ops)
            offset = end + 1

    def _apply_record(self, record: dict[str, Any], ops: bool) -> None:
        kind = record["op"]
        if ops and kind in ("set", "del") and "id" in record and _alive(record["exp"]):
            # The old value is what the key holds now (records of version 1 carry it).
            scope, key = record["scope"], record["key"]
            stored = self._stored(scope, key)
            old = record["old"] if "old" in record else None if stored is None else stored[0]
            new = dumps(record["value"]) if kind == "set" else None
            version = record.get("ver", 1) if kind == "set" else self._version(scope, key)
            self._ops.add(record["id"], (old, new, _monotonic(record["exp"]), version))
            self._ops_dirty = True
        if kind == "settled":
            if ops:
                for op_id, row in record["ops"].items():
                    expires_wall, versions = _settled_row(row)
                    if _alive(expires_wall):
                        self._ops.mark(op_id, _monotonic(expires_wall), versions)
                self._ops_dirty = True
        elif kind == "set":
            version = record.get("ver", 1)  # a record from before versions: 1
            self._counter = max(self._counter, version)
            self._apply(
                record["scope"], record["key"], dumps(record["value"]), version, record.get("due")
            )
            self._dirty_scopes.add(record["scope"])
        elif kind == "del":
            scope, key = record["scope"], record["key"]
            stored = self._stored(scope, key)
            if ops and stored is not None and record.get("reason") == "expired":
                # Its event was pending when the segment was written; whoever was sending it
                # is gone, so the first sweep sends it again (see pending_expiries).
                gone = Expired(scope, key, stored[0], stored[1])
                self._expiring[(scope, key, stored[1])] = (gone, -math.inf)
                self._ops_dirty = True
            self._remove(scope, key)
            self._dirty_scopes.add(scope)
        elif kind == "sent":
            if ops:
                for scope, key, version in record["expiries"]:
                    self._expiring.pop((scope, key, version), None)
                self._ops_dirty = True
        elif kind == "batch":
            # Each entry is [key, value] (a set) or [key] (a delete), in the batch's order;
            # its results are derived while it is applied, as for set and del.
            scope = record["scope"]
            results: builtins.list[VersionedBatchResult] = []
            for entry in record["ops"]:
                key = entry[0]
                stored = self._stored(scope, key)
                before = None if stored is None else stored[0]
                if len(entry) >= 2:
                    text = dumps(entry[1])
                    version = entry[2] if len(entry) > 2 else 1
                    self._counter = max(self._counter, version)
                    self._apply(scope, key, text, version, entry[3] if len(entry) > 3 else None)
                    results.append((before, text, version))
                else:
                    deleted = 0 if stored is None else stored[1]
                    self._remove(scope, key)
                    results.append((before, None, deleted))
            self._dirty_scopes.add(scope)
            if ops and "id" in record and _alive(record["exp"]):
                expires = _monotonic(record["exp"])
                self._ops.add(record["id"], (batch_record(results), BATCH_RECORD, expires, 0))
                self._ops_dirty = True
        elif kind == "tset":
            self._triggers[record["id"]] = record["value"]
            self._triggers_dirty = True
        elif kind == "tdel":
            self._triggers.pop(record["id"], None)
            self._triggers_dirty = True

    # -- journaling (called under the store's lock) ----------------------------------

    def _open_segment(self, number: int) -> int:
        path = self.path / f"journal-{number:012d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fsync_dir(self.path)
        return fd

    def _append(self, body: str) -> None:
        """Append one record, after the settled ids waiting for a ride, in one ``write()``."""
        if self._journal_fd is None:
            raise AdapterError(f"the KvStore at {str(self.path)!r} is not open")
        bodies = [body]
        if self._settled_unjournaled:
            settled = ",".join(
                f"{dumps(op_id)}:{_settled_json(exp, versions)}"
                for op_id, exp, versions in self._settled_unjournaled
            )
            bodies.insert(0, f'{{"op":"settled","ops":{{{settled}}}}}')
        if self._sent_unjournaled:
            bodies.insert(0, f'{{"op":"sent","expiries":{dumps(self._sent_unjournaled)}}}')
        line = b"".join(_frame(text) for text in bodies)
        try:
            written = os.write(self._journal_fd, line)
            if written != len(line):
                raise OSError(errno.EIO, f"short write ({written} of {len(line)} bytes)")
            if self.fsync == "always":
                os.fsync(self._journal_fd)
            else:
                self._unsynced = True
            self._settled_unjournaled = []
            self._sent_unjournaled = []
        except OSError as e:
            raise AdapterError(
                f"cannot append to the journal in {str(self.path)!r}: {e.strerror or e}"
            ) from e

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
        scope_json, key_json = dumps(scope), dumps(key)
        applied = ""
        if op_id is not None:
            # The operation's id travels with the change, so a task redelivered after a
            # crash and a restart is still recognised (its old value is derived on replay).
            applied = f',"id":{dumps(op_id)},"exp":{_wall(op_expires)}'
        if self._log is not None:
            # the change log's entry: its number, time and the old value
            was = "" if old is None else f',"was":{old}'
            applied += f',"lsn":{self._log.last + 1},"ts":{at_ms}{was}'
        if value_json is None:
            why = ',"reason":"expired"' if reason == "expired" else ""
            if why:  # its event is pending: ops.json keeps it
                self._ops_dirty = True
            self._append(
                f'{{"op":"del","scope":{scope_json},"key":{key_json},"ver":{version}'
                f"{applied}{why}}}"
            )
        else:
            due = "" if due_ms is None else f',"due":{due_ms}'
            self._append(
                f'{{"op":"set","scope":{scope_json},"key":{key_json},"value":{value_json}'
                f',"ver":{version}{due}{applied}}}'
            )
        self._dirty_scopes.add(scope)
        if op_id is not None:
            self._ops_dirty = True

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
        # One record, one line, one CRC: after a crash the batch is all there or not at all.
        entries = ",".join(
            f"[{dumps(op.key)}]"
            if new is None
            else f"[{dumps(op.key)},{new},{version},{dumps(dues.get(op.key))}]"
            for op, (_, new, version) in zip(operations, results, strict=True)
        )
        applied = "" if op_id is None else f',"id":{dumps(op_id)},"exp":{_wall(op_expires)}'
        if self._log is not None:
            # per operation: [] (it changed nothing), [version] (it created the key) or
            # [version, old value]
            was = ",".join(
                "[]"
                if old is None and new is None
                else f"[{version}]"
                if old is None
                else f"[{version},{old}]"
                for old, new, version in results
            )
            applied += f',"lsn":{self._log.last + 1},"ts":{at_ms},"was":[{was}]'
        self._append(f'{{"op":"batch","scope":{dumps(scope)},"ops":[{entries}]{applied}}}')
        self._dirty_scopes.add(scope)
        if op_id is not None:
            self._ops_dirty = True

    def _settled_at_once(self, op_id: str, expires: float) -> None:
        # Unlike a settle, this is the operation's only trace: journaled now, not with the
        # next record (a crash before one would forget it, and its repeat would delete a
        # value set since).
        row = _settled_json(_wall(expires), None)
        self._append(f'{{"op":"settled","ops":{{{dumps(op_id)}:{row}}}}}')
        super()._settled_at_once(op_id, expires)
        self._ops_dirty = True

    def _ops_settled(self, moved: builtins.list[SettledOp]) -> None:
        # Journaled with the next record: no write of its own (see the module docs).
        self._settled_unjournaled.extend(
            (op_id, _wall(expires), versions) for op_id, expires, versions in moved
        )
        self._ops_dirty = True

    def _expiries_dropped(self, sent: builtins.list[tuple[str, str, int]]) -> None:
        # Journaled with the next record, like settled operations: if a crash loses it, the
        # event is sent again with the same event id (the safe direction).
        self._sent_unjournaled.extend(sent)
        self._ops_dirty = True

    def _triggers_changed(self, trigger_id: str, trigger_json: str | None) -> None:
        id_json = dumps(trigger_id)
        if trigger_json is None:
            self._append(f'{{"op":"tdel","id":{id_json}}}')
        else:
            self._append(f'{{"op":"tset","id":{id_json},"value":{dumps(trigger_json)}}}')
        self._triggers_dirty = True

    # -- saving ----------------------------------------------------------------------

    def _run_saver(self) -> None:
        tick_s = min(FSYNC_INTERVAL_S, self.save_interval_ms / 1000)
        next_save = time.monotonic() + self.save_interval_ms / 1000
        while not self._stop.wait(tick_s):
            try:
                if self.fsync == "interval":
                    self._sync_journal()
                if time.monotonic() >= next_save:
                    self.save()
                    next_save = time.monotonic() + self.save_interval_ms / 1000
            except Exception:
                logger.exception(
                    "KvStore save in %s failed; the journal still holds the data", self.path
                )

    def _sync_journal(self) -> None:
        with self._lock:
            if not self._unsynced or self._journal_fd is None:
                return
            fd, self._unsynced = self._journal_fd, False
        os.fsync(fd)

    def save(self) -> int:
        """Write the scopes changed since the last save; return how many files were written.

        Blocks writers only while it snapshots the changed scopes and starts a new
        journal segment.
        """
        with self._save_lock:
            with self._lock:
                if not (
                    self._dirty_scopes
                    or self._triggers_dirty
                    or self._ops_dirty
                    or self._counter != self._counter_saved
                ):
                    return 0
                snapshot = {
                    scope: (dict(self._scopes.get(scope, {})), dict(self._dues.get(scope, {})))
                    for scope in self._dirty_scopes
                }
                counter = self._counter if self._counter != self._counter_saved else None
                triggers = dict(self._triggers) if self._triggers_dirty else None
                ops = (
                    (
                        dict(self._ops.whole),
                        dict(self._ops.settled),
                        [gone for gone, _ in self._expiring.values()],
                    )
                    if self._ops_dirty
                    else None
                )
                self._ops_dirty = False
                self._dirty_scopes = set()
                self._triggers_dirty = False
                covered = self._segment
                if self._log is not None:
                    self._log.trim()
                    self._log_segments[covered] = self._log.last
                    log_state = (self._log.epoch, self._log.last)
                    if log_state != self._log_saved and counter is None:
                        counter = self._counter
                    first_kept = self._log.first
                if self._journal_fd is not None:
                    old_fd = self._journal_fd
                    self._segment += 1
                    self._journal_fd = self._open_segment(self._segment)
                    os.fsync(old_fd)
                    os.close(old_fd)
            try:
                ops_text = None if ops is None else _ops_document(*ops, covered=covered)
                written = self._write_files(snapshot, triggers, ops_text, counter)
            except BaseException:
                with self._lock:  # written again by the next save; the journal keeps it all
                    self._dirty_scopes |= set(snapshot)
                    self._triggers_dirty |= triggers is not None
                    self._ops_dirty |= ops is not None
                raise
            for number, segment in self._segments():
                if number <= covered:
                    if self._log is None:
                        segment.unlink()
                    else:  # kept for the change log until its entries are trimmed
                        segment.rename(self.path / f"changes-{number:012d}.log")
            if self._log is not None:
                for number, path in self._log_files():
                    if self._log_segments.get(number, 0) < first_kept:
                        path.unlink()
                        self._log_segments.pop(number, None)
            return written

    def _write_versions(self, counter: int) -> None:
        """versions.json: the version counter, and the change log's epoch and last number."""
        document: dict[str, Any] = {
            "format": VERSIONS_FORMAT_NAME,
            "version": 1,
            "counter": counter,
        }
        log_state: tuple[str | None, int] = (None, 0)
        if self._log is not None:
            log_state = (self._log.epoch, self._log.last)
            document |= {"log_epoch": log_state[0], "log_last": log_state[1]}
        _write_atomically(self.path / "versions.json", dumps(document))
        self._log_saved = log_state
        self._counter_saved = counter

    def _write_files(
        self,
        snapshot: dict[str, tuple[dict[str, str], dict[str, int]]],
        triggers: dict[str, str] | None,
        ops: str | None,
        counter: int | None,
    ) -> int:
        # ops.json first: once it says which segments it covers, replay takes their data
        # only, whatever state the scope files were left in.
        written = 0
        if ops is not None:
            _write_atomically(self.path / "ops.json", ops)
            written += 1
        if counter is not None:
            self._write_versions(counter)  # bookkeeping: not counted
        for scope, (entries, dues) in snapshot.items():
            path = self.path / scope_file_name(scope)
            if entries:
                _write_atomically(path, _scope_document(scope, entries, dues))
                written += 1
            elif path.exists():
                path.unlink()
        if triggers is not None:
            text = dumps({"format": "state_tasks.triggers", "version": 1, "triggers": triggers})
            _write_atomically(self.path / "triggers.json", text)
            written += 1
        _fsync_dir(self.path)
        return written


def _log_entries(record: dict[str, Any]) -> builtins.list[tuple[int, LogEntry]]:
    """The change log entries of a journal record that carries them, numbered."""
    kind, scope, sequence, at_ms = record["op"], record["scope"], record["lsn"], record["ts"]
    op_id = record.get("id")
    if kind == "set":
        was = dumps(record["was"]) if "was" in record else None
        entry = LogEntry(
            "c" if was is None else "u",
            scope,
            record["key"],
            was,
            dumps(record["value"]),
            record.get("ver", 1),
            op_id,
            at_ms,
        )
        return [(sequence, entry)]
    if kind == "del":
        expired = record.get("reason") == "expired"
        was = dumps(record["was"]) if "was" in record else None
        entry = LogEntry(
            "x" if expired else "d",
            scope,
            record["key"],
            was,
            None,
            record.get("ver", 1),
            None if expired else op_id,
            at_ms,
        )
        return [(sequence, entry)]
    entries = []
    for index, (op, was) in enumerate(zip(record["ops"], record["was"], strict=True)):
        if not was:
            continue
        old = dumps(was[1]) if len(was) > 1 else None
        new = dumps(op[1]) if len(op) > 1 else None
        kind_of: EntryKind = "d" if new is None else "c" if old is None else "u"
        event_id = None if op_id is None else f"{op_id}:{index}"
        entries.append(
            (sequence, LogEntry(kind_of, scope, op[0], old, new, was[0], event_id, at_ms))
        )
        sequence += 1
    return entries


def _scope_document(scope: str, slots: dict[str, str], dues: dict[str, int]) -> str:
    """A scope file's text from its keys' slots (version and text, see the KvStore)."""
    rows = []
    for key, slot in slots.items():
        text, version = slot_parts(slot)
        rows.append(f"[{dumps(key)},{text},{version},{dumps(dues.get(key))}]")
    body = ",".join(rows)
    return (
        f'{{"format":"{FORMAT_NAME}","version":{FORMAT_VERSION},'
        f'"scope":{dumps(scope)},"entries":[{body}]}}'
    )


def _ops_document(
    whole: dict[str, OpRecord],
    settled: dict[str, Settled],
    expiring: builtins.list[Expired],
    covered: int,
) -> str:
    """Applied operation ids still remembered, with wall-clock expiry times, and the
    expiries whose events are pending (module docs)."""
    now = time.monotonic()
    whole_body = ",".join(
        f"{dumps(op_id)}:[{dumps(old)},{dumps(new)},{_wall(expires)},{version}]"
        for op_id, (old, new, expires, version) in whole.items()
        if expires > now
    )
    settled_body = ",".join(
        f"{dumps(op_id)}:{_settled_json(_wall(expiry), mark)}"
        for op_id, mark, expiry in (
            (op_id, None if isinstance(row, float) else row[1], settled_expiry(row))
            for op_id, row in settled.items()
        )
        if expiry > now
    )
    expiring_body = ",".join(
        f"[{dumps(gone.scope)},{dumps(gone.key)},{gone.version},{gone.value_json}]"
        for gone in expiring
    )
    return (
        f'{{"format":"{OPS_FORMAT_NAME}","version":{OPS_FORMAT_VERSION},"covered":{covered},'
        f'"settled":{{{settled_body}}},"whole":{{{whole_body}}},"expiring":[{expiring_body}]}}'
    )


def _settled_json(expires_wall: int, versions: int | str | None) -> str:
    """A settled operation's row in the journal and ``ops.json``: its expiry, with what it
    gave when it gave versions."""
    return str(expires_wall) if versions is None else f"[{expires_wall},{dumps(versions)}]"


def _settled_row(row: Any) -> tuple[Any, int | str | None]:
    """(wall-clock expiry, versions or None) of a settled row: ``exp`` (as written before
    markers kept versions) or ``[exp, versions]``."""
    if isinstance(row, list):
        versions = row[1] if len(row) > 1 and isinstance(row[1], (int, str)) else None
        return row[0], None if isinstance(versions, bool) else versions
    return row, None


def _wall(expires: float) -> int:
    """A monotonic expiry as wall-clock seconds (rounded up: never forgotten early)."""
    return math.ceil(time.time() + (expires - time.monotonic()))


def _monotonic(expires_wall: float) -> float:
    """A wall-clock expiry as a monotonic one."""
    return time.monotonic() + (expires_wall - time.time())


def _alive(expires_wall: float) -> bool:
    return bool(expires_wall > time.time())


def _frame(body: str) -> bytes:
    """One journal line: CRC-32 in hex, a space, the JSON, a newline."""
    payload = body.encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _parse_record(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "op" in record else None


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
