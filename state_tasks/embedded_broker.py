"""The embedded default: kombu's filesystem transport in order, and whole result files.

kombu names each message file by the millisecond it was written plus a random
uuid, so two messages sent within one millisecond (a ``void`` set followed by a
get) can be read in either order. This transport names files by nanosecond,
made strictly increasing within a process, and writes each one under a
temporary name first, so a reader never sees half a message.

A consumer takes a message by renaming its file into the ``processing`` folder beside
the queue folder (one atomic rename on the same file system, so two consumers never
both take it), reads it and removes it. kombu's own transport moves it to the system's
temporary folder instead (a copy when that is another file system, and a file left
there for good if the process dies in between). What a crash can leave behind in the
broker folder (a taken message, a half-written one, messages for the remote-control
and event queues of processes that are gone) is removed by :func:`remove_leftovers`,
which the worker calls periodically (``state_tasks.worker``).

Celery's file result backend writes a result file in place, so a client polling for it
can read half of it (a ``DecodeError``, seen under load with 10 KB values).
:class:`FileResultBackend` writes it under a temporary name and renames it over; it is
registered with Celery as ``statefile``, and the embedded default's result backend is
``statefile+file:///<data dir>/results`` (a plain ``file://`` URL keeps Celery's own).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from functools import cached_property
from queue import Empty
from typing import Any

from celery.app import backends as celery_backends
from celery.backends.filesystem import FilesystemBackend
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps, loads

#: The URL scheme of this transport, registered with kombu on import.
SCHEME = "statefs"
#: Polling the queue folder every 20 ms keeps a round trip well under a second while
#: costing an idle worker almost nothing.
POLLING_INTERVAL_S = 0.02
#: Prefix of a message being written (it does not end in ".<queue>.msg", so no reader
#: picks it up).
PARTIAL_PREFIX = "partial-"
#: Queues whose messages are transient by design: remote-control commands and replies
#: (``<node>.celery.pidbox``, ``<uuid>.reply.celery.pidbox``) and monitoring events
#: (``celeryev.<uuid>``). Their bindings outlive the processes that declared them, so
#: messages for a queue nobody reads any more would otherwise pile up.
TRANSIENT_QUEUE_SUFFIXES = (".celery.pidbox",)
TRANSIENT_QUEUE_PREFIXES = ("celeryev.",)

_last_stamp = 0
_stamp_lock = threading.Lock()


def _next_stamp() -> int:
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(_last_stamp + 1, time.time_ns())
        return _last_stamp


def transport_options(data_dir: str) -> dict[str, Any]:
    """The transport options of the embedded broker kept under ``data_dir``."""
    broker = os.path.join(data_dir, "broker")
    return {
        "data_folder_in": os.path.join(broker, "queue"),
        "data_folder_out": os.path.join(broker, "queue"),
        "control_folder": os.path.join(broker, "control"),
        "processing_folder": os.path.join(broker, "processing"),
        "polling_interval": POLLING_INTERVAL_S,
        "store_processed": False,
    }


#: The result backend name of :class:`FileResultBackend`, registered with Celery on import.
RESULT_SCHEME = "statefile"
_FILE_RESULT_PREFIXES = (f"{RESULT_SCHEME}+file://", "file://")


def result_url(folder: str) -> str:
    """The URL of whole-file results kept in ``folder`` (an absolute path)."""
    return f"{RESULT_SCHEME}+file://{folder}"


def result_folder(url: object) -> str | None:
    """The folder of a file result backend URL (ours or Celery's), else ``None``."""
    text = str(url or "")
    for prefix in _FILE_RESULT_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return None


def embedded_settings(data_dir: str) -> dict[str, Any]:
    """Celery settings of a client of the embedded default kept under ``data_dir``.

    The same broker and result folders a worker started with ``STATE_TASKS_DATA_DIR``
    set to ``data_dir`` uses: ``create_app("client", **embedded_settings(folder))``.
    """
    return {
        "broker_url": f"{SCHEME}://localhost/",
        "result_backend": result_url(os.path.join(os.path.abspath(data_dir), "results")),
        "broker_transport_options": transport_options(os.path.abspath(data_dir)),
    }


def _processing_folder(options: dict[str, Any]) -> str:
    folder = options.get("processing_folder")
    if folder:
        return str(folder)
    queue_folder = str(options.get("data_folder_in", "data_in"))
    return os.path.join(os.path.dirname(os.path.abspath(queue_folder)), "processing")


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{_next_stamp():020d}_{uuid.uuid4().hex}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"{PARTIAL_PREFIX}{uuid.uuid4().hex}.tmp")
        try:
            with open(partial, "wb") as handle:
                handle.write(str(dumps(payload)).encode("utf-8"))  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc

    @cached_property
    def processing_folder(self) -> str:
        """Where a consumer moves a message it takes, beside the queue folder."""
        folder = _processing_folder(dict(self.transport_options))
        os.makedirs(folder, exist_ok=True)
        return folder

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """Take the oldest message of ``queue``: rename it out of the queue, read, remove."""
        if self.store_processed:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processing_folder, name)
            try:
                os.replace(os.path.join(self.data_folder_in, name), taken)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(taken, "rb") as handle:
                    payload = handle.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read the message {taken!r}") from exc
            finally:
                try:
                    os.remove(taken)
                except OSError:
                    pass  # removed later by remove_leftovers
            return loads(payload.decode("utf-8"))  # type: ignore[no-untyped-call]
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel


def _is_transient_message(name: str) -> bool:
    queue, dot, extension = name.partition(".")[2].rpartition(".")
    return (
        bool(dot)
        and extension == "msg"
        and (queue.endswith(TRANSIENT_QUEUE_SUFFIXES) or queue.startswith(TRANSIENT_QUEUE_PREFIXES))
    )


def remove_leftovers(options: dict[str, Any], older_than_s: float) -> int:
    """Remove what no consumer will read any more from the broker folders; return how many.

    Removed when older than ``older_than_s``: messages left in the processing folder (a
    consumer died between taking and removing one), half-written messages (a producer
    died mid-write), and messages for transient queues (remote-control commands and
    replies, monitoring events), whose consumers may be long gone. Task messages waiting
    in a queue are never removed, however old: a worker may come back for them.
    """
    cutoff = time.time() - older_than_s
    removed = 0
    queue_folders = {str(options[o]) for o in ("data_folder_in", "data_folder_out") if o in options}
    candidates: list[str] = []
    processing = _processing_folder(options)
    for folder in (processing, *sorted(queue_folders)):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if (
                folder == processing
                or name.startswith(PARTIAL_PREFIX)
                or _is_transient_message(name)
            ):
                candidates.append(os.path.join(folder, name))
    for path in candidates:
        try:
            if os.stat(path).st_mtime < cutoff:
                os.remove(path)
                removed += 1
        except FileNotFoundError:
            pass  # taken or removed meanwhile
    return removed


class FileResultBackend(FilesystemBackend):  # type: ignore[misc]
    """Celery's file result backend, writing each result whole.

    A result is written to a temporary file beside it (named after it, so the periodic
    cleanup of expired results also removes one a crash left behind) and renamed over it.
    Forgetting a result that is not there is not an error.
    """

    def set(self, key: bytes, value: Any) -> None:
        path = self._filename(key)
        partial = path + f".partial-{uuid.uuid4().hex}".encode()
        with self.open(partial, "wb") as handle:
            handle.write(value if isinstance(value, bytes) else str(value).encode("utf-8"))
        os.replace(partial, path)

    def delete(self, key: bytes) -> None:
        try:
            super().delete(key)
        except FileNotFoundError:
            pass


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
celery_backends.BACKEND_ALIASES.setdefault(RESULT_SCHEME, f"{__name__}:FileResultBackend")
