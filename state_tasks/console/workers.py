"""What the console knows of the workers: which are alive, whether they send task events,
and how the triggers' tasks ran (runs, failures, the last error).

One thread (:class:`WorkerWatch`) receives the workers' events as Flower does (Celery's
``app.events.Receiver`` on the broker's event exchange):

- ``worker-heartbeat`` / ``worker-online`` / ``worker-offline``: which workers are alive.
- ``task-sent`` and ``task-received`` give a task's name; ``task-succeeded`` and
  ``task-failed`` carry only its id, so the watch remembers the names of the last
  :data:`MAX_TRACKED_TASKS` ids it saw sent or received. A task no worker has
  (``Received unregistered task``) fails with ``NotRegistered('<name>')`` and no
  ``task-received``: its name is read from the exception.

Counts are per task name (a trigger's function, its condition), since the console
started: two triggers with the same function share them. They need task events
(``worker_send_task_events``, on by default in state_tasks' settings; ``celery worker
-E``); :meth:`WorkerWatch.status` says when they are off. It can tell: the console's own
live feed calls ``state::changes`` through the workers every half second, so a worker that
sends heartbeats but no task event for :data:`EVENTS_QUIET_S` does not send them.

Which tasks the workers have is asked with Celery's ``inspect registered``
(:meth:`~state_tasks.console.gateway.StateGateway.registered_tasks`), not here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Task ids whose name is remembered until their end event comes, at most.
MAX_TRACKED_TASKS = 20_000
#: Task names whose runs are counted, at most (the least recently run is forgotten).
MAX_TASK_NAMES = 1_000
#: A worker whose last heartbeat is older than this many seconds is taken for gone.
WORKER_ALIVE_S = 10.0
#: Seconds of heartbeats without a task event after which a worker's task events are off.
EVENTS_QUIET_S = 15.0
#: Seconds between two attempts to connect the receiver.
RECONNECT_S = 2.0
#: Characters of an error kept and shown, at most.
ERROR_MAX_CHARS = 500
#: The tasks of the state functions and the trigger system: the console does not count them.
INTERNAL_PREFIXES = ("state::", "triggers::")

_NOT_REGISTERED = re.compile(r"^NotRegistered\((['\"])(?P<name>.+)\1\)$")


@dataclass
class Runs:
    """How one task ran since the console started (``*_at``: seconds since the epoch)."""

    succeeded: int = 0
    failed: int = 0
    last_run_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.succeeded + self.failed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "last_run_at": self.last_run_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


@dataclass
class _Worker:
    heartbeat_at: float
    task_event_at: float | None = None


class WorkerWatch:
    """The workers' events in, runs per task name and the workers' state out.

    :param app: the Celery app whose broker the workers send their events to (``None``:
        nothing is received; :meth:`handle` still takes events, as the tests give them).
    :param redact: what hides passwords in an error before it is kept.
    :param clock: the time of receipt (seconds since the epoch).
    """

    def __init__(
        self,
        app: Any,
        redact: Callable[[str], str] = str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self._redact = redact
        self._clock = clock
        self._lock = threading.Lock()
        self._names: OrderedDict[str, str] = OrderedDict()  # task id -> name
        self._runs: OrderedDict[str, Runs] = OrderedDict()
        self._workers: dict[str, _Worker] = {}
        self.started_at = clock()
        self._connected_at: float | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._receiver: Any = None

    # -- events --------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> None:
        """Take one event (a dict as Celery's receiver gives it)."""
        kind = str(event.get("type", ""))
        hostname = str(event.get("hostname", ""))
        now = self._clock()
        with self._lock:
            if kind in ("worker-heartbeat", "worker-online"):
                worker = self._workers.setdefault(hostname, _Worker(now))
                worker.heartbeat_at = now
                return
            if kind == "worker-offline":
                self._workers.pop(hostname, None)
                return
            if not kind.startswith("task-"):
                return
            if kind != "task-sent" and hostname in self._workers:
                self._workers[hostname].task_event_at = now
            task_id = str(event.get("uuid", ""))
            if kind in ("task-sent", "task-received"):
                name = event.get("name")
                if isinstance(name, str) and task_id and not name.startswith(INTERNAL_PREFIXES):
                    self._names[task_id] = name
                    self._names.move_to_end(task_id)
                    while len(self._names) > MAX_TRACKED_TASKS:
                        self._names.popitem(last=False)
                return
            if kind not in ("task-succeeded", "task-failed"):
                return
            name = self._names.pop(task_id, None)
            if name is None and kind == "task-failed":
                unknown = _NOT_REGISTERED.match(str(event.get("exception", "")))
                name = unknown.group("name") if unknown else None
            if name is None:
                return
            runs = self._runs.pop(name, None) or Runs()
            self._runs[name] = runs  # the most recently run last
            while len(self._runs) > MAX_TASK_NAMES:
                self._runs.popitem(last=False)
            at = event.get("timestamp")
            runs.last_run_at = float(at) if isinstance(at, int | float) else now
            if kind == "task-succeeded":
                runs.succeeded += 1
                return
            runs.failed += 1
            runs.last_error_at = runs.last_run_at
            error = self._redact(" ".join(str(event.get("exception", "")).split()))
            runs.last_error = error[:ERROR_MAX_CHARS] or "failed (no exception given)"

    def runs(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The runs of each of ``names`` (zeros for one not seen run)."""
        with self._lock:
            return {name: (self._runs.get(name) or Runs()).to_json() for name in names}

    def alive_workers(self) -> list[str]:
        """The workers whose heartbeat came within :data:`WORKER_ALIVE_S`, by name."""
        now = self._clock()
        with self._lock:
            return sorted(
                name
                for name, worker in self._workers.items()
                if now - worker.heartbeat_at <= WORKER_ALIVE_S
            )

    def status(self) -> dict[str, Any]:
        """Whether the events are received, and whether the workers send task events.

        ``task_events``: ``"on"`` (a live worker sent one within :data:`EVENTS_QUIET_S`),
        ``"off"`` (live workers, none sent one for that long), ``"no_workers"`` (no
        heartbeat), ``"waiting"`` (too early to tell), ``"unknown"`` (not receiving: see
        ``error``). ``since``: when the counts began (seconds since the epoch).
        """
        now = self._clock()
        alive = self.alive_workers()
        with self._lock:
            connected_at, error = self._connected_at, self._error
            sending = sorted(
                name
                for name in alive
                if (at := self._workers[name].task_event_at) is not None
                and now - at <= EVENTS_QUIET_S
            )
        if connected_at is None:
            task_events = "unknown"
        elif sending:
            task_events = "on"
        elif not alive:
            task_events = "no_workers"
        elif now - connected_at < EVENTS_QUIET_S:
            task_events = "waiting"
        else:
            task_events = "off"
        return {
            "receiving": connected_at is not None,
            "error": error,
            "task_events": task_events,
            "workers": alive,
            "sending": sending,
            "since": self.started_at,
        }

    # -- the receiver thread -------------------------------------------------------------

    def start(self) -> None:
        """Receive in a daemon thread until :meth:`stop` (reconnecting after a failure)."""
        if self.app is None:
            return
        threading.Thread(target=self._run, name="console-worker-events", daemon=True).start()

    def stop(self) -> None:
        """Stop receiving (returns at once; the thread ends within a second)."""
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = self.app.events.Receiver(
                        connection, handlers={"*": self.handle}
                    )
                    with self._lock:
                        self._connected_at, self._error = self._clock(), None
                    while not self._stop.is_set():
                        try:
                            self._receiver.capture(limit=None, timeout=1.0, wakeup=False)
                        except TimeoutError:
                            continue
            except Exception as e:
                message = self._redact(" ".join(f"{type(e).__name__}: {e}".split()))
                with self._lock:
                    changed = message != self._error
                    self._connected_at, self._error = None, message
                if changed:
                    logger.warning("worker events: not received (%s); reconnecting", message)
            self._stop.wait(RECONNECT_S)
