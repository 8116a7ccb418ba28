"""The embedded default: kombu's filesystem transport in order, and whole result files.

kombu names each message file by the millisecond it was written plus a random
uuid, so two messages sent within one millisecond (a ``void`` set followed by a
get) can be read in either order. This transport names files by nanosecond,
made strictly increasing within a process, and writes each one under a
temporary name first, so a reader never sees half a message.

A consumer takes a message by renaming its file into the ``processing`` folder beside
the queue folder (one atomic rename on the same file system, so two consumers never
both take it), under a name that records the taking process: ``<owner>-<original
name>``, where ``<owner>`` is ``<pid>.<random>``. It keeps the file there until the
message is acknowledged (then removes it) or rejected with requeue, recovered, or left
unacknowledged when the channel closes (then renames it back under its original name,
so it keeps its place in the queue's order). So Celery's late acks work as on Redis or
RabbitMQ: a task whose worker dies before acknowledging it is delivered again. (A
message of a queue consumed without acknowledgements, remote control and events, is
removed as soon as it is read.)

Whether an owner is alive is told by a lock file, ``<owner>.lock`` in the processing
folder, that the process holds with ``flock`` from before its first take until it ends
(the kernel releases it however the process ends, and a reused pid cannot inherit it).
:func:`requeue_orphans` moves the messages of owners that are gone back to their queue;
a consumer runs it before its first take, and the worker's periodic cleaner
(``state_tasks.worker``) runs it too. kombu's own transport moves a message to the
system's temporary folder instead and removes it as soon as it is read, before the task
runs. What else a crash can leave behind in the broker folder (a half-written message,
messages for the remote-control and event queues of processes that are gone) is removed
by :func:`remove_leftovers`, which the worker's cleaner also calls.

Celery's file result backend writes a result file in place, so a client polling for it
can read half of it (a ``DecodeError``, seen under load with 10 KB values).
:class:`FileResultBackend` writes it under a temporary name and renames it over; it is
registered with Celery as ``statefile``, and the embedded default's result backend is
``statefile+file:///<data dir>/results`` (a plain ``file://`` URL keeps Celery's own).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
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

logger = logging.getLogger(__name__)

#: An owner of taken messages: ``<pid>.<random>`` (the pid is for people reading the
#: folder; the lock file, not the pid, tells whether the owner is alive).
_OWNER = r"[0-9]+\.[0-9a-f]{12}"
#: A message taken by an owner: ``<owner>-<original name>``.
_TAKEN_NAME = re.compile(rf"^({_OWNER})-([^/]+\.msg)$")
#: The lock file an owner holds while it lives.
_OWNER_LOCK = re.compile(rf"^({_OWNER})\.lock$")

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


# -- owners of taken messages: one per process, alive while it holds its lock file ---------

_owner_lock = threading.Lock()
_owner_pid = 0
_owner_token = ""
#: processing folder -> the open, flock-ed descriptor of this process's lock file there.
_owner_fds: dict[str, int] = {}
#: delivery tag -> (the taken file in the processing folder, its place in the queue folder),
#: for every message this process has taken and not yet acknowledged, rejected or put back.
#: Shared by the process's channels: kombu may reject a message on another channel than
#: the one that took it; acknowledgements come from the worker pool's threads.
_taken: dict[str, tuple[str, str]] = {}


def _forget_owner_after_fork() -> None:
    """A forked child is another owner: it drops its parent's lock (the parent keeps it)
    and its record of the parent's taken messages."""
    global _owner_lock, _owner_pid, _owner_token
    _owner_lock = threading.Lock()
    for fd in _owner_fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _owner_fds.clear()
    _taken.clear()
    _owner_pid, _owner_token = 0, ""


os.register_at_fork(after_in_child=_forget_owner_after_fork)


def _hold_owner_lock(processing: str, owner: str) -> int:
    """Create ``<owner>.lock`` in ``processing``, locked before it shows under its name."""
    partial = os.path.join(processing, f"{PARTIAL_PREFIX}{owner}.lock")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        os.replace(partial, os.path.join(processing, f"{owner}.lock"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owner(processing: str, queue_folder: str) -> str:
    """This process's owner name in ``processing``.

    On its first use in a folder the lock file is created, then the messages of owners
    that are gone are put back in their queue, before this process takes any.
    """
    global _owner_pid, _owner_token
    with _owner_lock:
        if _owner_pid != os.getpid():
            _owner_pid, _owner_token = os.getpid(), f"{os.getpid()}.{uuid.uuid4().hex[:12]}"
        if processing in _owner_fds:
            return _owner_token
        _owner_fds[processing] = _hold_owner_lock(processing, _owner_token)
        requeued = requeue_orphans(processing, queue_folder)
        if requeued:
            logger.warning(
                "state_tasks: %d message(s) taken by a process that is gone put back in %s",
                requeued,
                queue_folder,
            )
        return _owner_token


def _lock_if_gone(processing: str, owner: str) -> int | None:
    """Take the lock of ``owner`` if its process is gone: the descriptor holding it (-1 if
    the lock file is gone too), or ``None`` while the owner lives."""
    try:
        fd = os.open(os.path.join(processing, f"{owner}.lock"), os.O_RDONLY)
    except FileNotFoundError:
        return -1  # an owner creates its lock file before it takes anything
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def requeue_orphans(processing: str, queue_folder: str) -> int:
    """Put the messages taken by processes that are gone back in ``queue_folder``.

    Each goes back under its original name, so it keeps its place in its queue's order;
    the owner's lock file is removed after. Messages of live owners are left alone (they
    are being processed). Returns how many messages were put back.
    """
    try:
        names = os.listdir(processing)
    except FileNotFoundError:
        return 0
    taken: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        match = _TAKEN_NAME.match(name)
        if match:
            taken.setdefault(match[1], []).append((name, match[2]))
        elif (match := _OWNER_LOCK.match(name)) is not None:
            taken.setdefault(match[1], [])
    requeued = 0
    for owner, messages in sorted(taken.items()):
        fd = _lock_if_gone(processing, owner)
        if fd is None:
            continue
        try:
            for name, original in sorted(messages, key=lambda m: m[1]):
                try:
                    os.rename(os.path.join(processing, name), os.path.join(queue_folder, original))
                    requeued += 1
                except FileNotFoundError:
                    pass  # put back by another process meanwhile
            if fd >= 0:
                try:
                    os.remove(os.path.join(processing, f"{owner}.lock"))
                except FileNotFoundError:
                    pass
        finally:
            if fd >= 0:
                os.close(fd)
    return requeued


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: Queues consumed without acknowledgements (remote-control, events): a message
        #: taken from one is removed as soon as it is read.
        self._no_ack_queues: set[str] = set()

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

    def basic_consume(
        self, queue: Any, no_ack: Any, callback: Any, consumer_tag: Any, **kwargs: Any
    ) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)  # type: ignore[no-untyped-call]

    def basic_get(self, queue: Any, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            payload = self._take(queue, keep=not no_ack)
        except Empty:
            return None
        message = self.Message(payload, channel=self)  # type: ignore[no-untyped-call]
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        return self._take(queue, keep=queue not in self._no_ack_queues)

    def _take(self, queue: Any, keep: bool) -> Any:
        """Take the oldest message of ``queue``: rename it into the processing folder
        under this process's name and read it. Kept there until it is acknowledged when
        ``keep`` (its delivery tag is then the taken file's name), else removed at once."""
        if self.store_processed:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        processing = self.processing_folder
        owner = _owner(processing, self.data_folder_in)
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            original = os.path.join(self.data_folder_in, name)
            tag = f"{owner}-{name}"
            taken = os.path.join(processing, tag)
            try:
                os.rename(original, taken)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(taken, "rb") as handle:
                    payload = loads(handle.read().decode("utf-8"))  # type: ignore[no-untyped-call]
                properties = payload["properties"]
                properties["delivery_tag"] = tag
            except OSError as exc:
                self._put_back(taken, original)
                raise ChannelError(f"Cannot read the message {taken!r}") from exc
            except Exception as exc:  # not a kombu message: it would fail every time
                logger.error("state_tasks: dropping the malformed message %s: %r", name, exc)
                _remove(taken)
                continue
            if keep:
                with _owner_lock:
                    _taken[tag] = (taken, original)
            else:
                _remove(taken)
            return payload
        raise Empty()

    @staticmethod
    def _put_back(taken: str, original: str) -> None:
        try:
            os.rename(taken, original)
        except OSError as exc:
            raise ChannelError(f"Cannot put the message {taken!r} back in its queue") from exc

    def _settle(self, delivery_tag: Any) -> None:
        """The message is done with: remove its taken file."""
        with _owner_lock:
            found = _taken.pop(delivery_tag, None)
        if found is not None:
            _remove(found[0])

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self._settle(delivery_tag)
        super().basic_ack(delivery_tag, multiple)  # type: ignore[no-untyped-call]

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        if not requeue:
            self._settle(delivery_tag)

    def _restore(self, message: Any) -> None:
        """Put an unacknowledged message back in its queue, in its place (rejected with
        requeue, recovered, or still unacknowledged when the channel closes)."""
        tag = message.delivery_tag
        with _owner_lock:
            found = _taken.pop(tag, None)
        if found is not None:
            self._put_back(*found)
        elif not (isinstance(tag, str) and _TAKEN_NAME.match(tag)):
            super()._restore(message)  # type: ignore[no-untyped-call]
        # else: one this process took and has acknowledged meanwhile: nothing to put back


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # left behind: delivered again once this process has ended
        logger.warning("state_tasks: cannot remove the taken message %s: %r", path, exc)


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

    Removed when older than ``older_than_s``: half-written messages and owner lock files
    (a producer or consumer died mid-write), files in the processing folder that no owner
    claims (left by an earlier version of this transport, which removed each message as
    soon as it was read), and messages for transient queues (remote-control commands and
    replies, monitoring events), whose consumers may be long gone. Task messages waiting
    in a queue are never removed, however old: a worker may come back for them. Nor are
    the messages a consumer has taken: :func:`requeue_orphans` puts those of a consumer
    that is gone back in their queue.
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
            if folder == processing:
                owned = _TAKEN_NAME.match(name) or _OWNER_LOCK.match(name)
                if not owned:
                    candidates.append(os.path.join(folder, name))
            elif name.startswith(PARTIAL_PREFIX) or _is_transient_message(name):
                candidates.append(os.path.join(folder, name))
    for path in candidates:
        try:
            if os.stat(path).st_mtime < cutoff:
                os.remove(path)
                removed += 1
        except FileNotFoundError:
            pass  # taken or removed meanwhile
    return removed


def requeue_orphaned_messages(options: dict[str, Any]) -> int:
    """:func:`requeue_orphans` for the broker folders of ``options`` (transport options)."""
    if not options.get("data_folder_in"):
        return 0
    return requeue_orphans(_processing_folder(options), str(options["data_folder_in"]))


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
