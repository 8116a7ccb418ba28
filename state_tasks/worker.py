"""The worker's side of state_tasks: start-up checks, one owner per store, clean shutdown.

Imported by every worker (it is in the app's ``include``), never by a client. At start-up
the worker loads ``state.yaml`` and opens the adapter before it consumes anything, so a
bad configuration stops it with one clear message; a store that lives in one process
(the KvStore, the Bridge's local triggers) refuses a second worker on the same broker; a
prefork child opens its own connections; a warm shutdown flushes the adapter.

Every worker also sweeps the keys whose ``ttl_ms`` ran out (:mod:`state_tasks.expiry`).
A worker on the embedded default also cleans its data folder as it runs (no celery beat
needed): a daemon thread, every ``state_tasks_cleanup_interval`` seconds
(``STATE_TASKS_CLEANUP_INTERVAL``), removes result files older than ``result_expires``
and the broker's leftovers (:func:`state_tasks.embedded_broker.remove_leftovers`), and puts
the messages that a process which is gone had taken back in their queue
(:func:`state_tasks.embedded_broker.requeue_orphaned_messages`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.backends.filesystem import FilesystemBackend
from celery.exceptions import InvalidTaskError
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.control import Panel, inspect_command

from state_tasks.broker_errors import app_urls, redact
from state_tasks.celery_app import app
from state_tasks.core.connect_errors import is_permanent, likely_cause
from state_tasks.core.environment import positive_int_from_env
from state_tasks.core.errors import AdapterUnavailable, ConfigError, StateError
from state_tasks.core.ownership import OwnedElsewhere, take_ownership
from state_tasks.core.sentinel import SENTINEL_PASSWORD_VARIABLE
from state_tasks.core.service import StateService
from state_tasks.core.urls import is_embedded_broker, redact_url, scrub, url_passwords
from state_tasks.embedded_broker import (
    remove_leftovers,
    requeue_orphaned_messages,
    result_folder,
)
from state_tasks.expiry import ExpirySweeper
from state_tasks.runtime import (
    close_runtime,
    current_runtime,
    forget_runtime_after_fork,
    get_runtime,
)
from state_tasks.security import one_line_logs, unbound_header
from state_tasks.settings import DEFAULT_CLEANUP_INTERVAL_S

logger = logging.getLogger(__name__)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _one_line_logs(logger: logging.Logger, **_: Any) -> None:
    # A caller's control characters (in names, values, errors) never forge a log line.
    one_line_logs(logger)


def _pool_name(pool_cls: Any) -> str:
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return str(name).rsplit(".", 1)[-1].lower()


@signals.worker_init.connect
def _start_worker(sender: Any = None, **_: Any) -> None:
    """Load ``state.yaml`` and open the adapter before the worker consumes anything.

    A problem stops the worker with one clear message (Celery would log and
    ignore an ordinary exception raised from a signal handler).
    """
    if getattr(sender, "app", None) is not app:
        return
    try:
        _check_and_start(_pool_name(sender.pool_cls))
    except StateError as e:
        logger.critical("state_tasks cannot start: %s", e)
        sys.stderr.write(f"state_tasks cannot start: {e}\n")
        raise SystemExit(1) from e


def _check_and_start(pool: str) -> None:
    runtime = get_runtime(app)
    if runtime.config.process_local and pool == "prefork":
        close_runtime()
        raise ConfigError(
            f"{runtime.config.source}: the {runtime.config.adapter_name} keeps its data inside one "
            "process, and the prefork pool would split it across child processes. Start the "
            "worker with --pool threads (the default for this adapter) or --pool solo, or use "
            "the RedisAdapter to share state between processes."
        )
    if runtime.config.process_local:
        _lock_embedded_broker(runtime.config.source)
    _check_servers(runtime)
    logger.info(
        "state_tasks: %s adapter ready (config: %s)",
        runtime.config.adapter_name,
        runtime.config.source,
    )


class StateTasksConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, with two changes (``worker_consumer`` in the settings):

    - a refused message (a bad signature, JSON too deep, a content type not accepted, headers
      changed after signing) is logged as one line with the reason and the task's name and
      id, not as a traceback and a dump of the body;
    - with signing on, a task message runs only if its headers are those its sender signed
      (:func:`state_tasks.security.unbound_header`): Celery signs the body only, and the
      ``task`` header alone decides which task runs.
    """

    def update_strategies(self) -> None:
        super().update_strategies()
        if self.app.conf.task_serializer != "auth":
            return
        for name, strategy in list(self.strategies.items()):
            self.strategies[name] = _checking_signed_headers(strategy)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        logger.critical(
            "Can't decode message body: %s [type:%r encoding:%r headers:%s]; "
            "the message has been discarded",
            _reason(exc),
            message.content_type,
            message.content_encoding,
            _named(message),
        )
        message.ack()

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        logger.error(
            "Received invalid task message: %s [headers:%s]; the message has been discarded",
            _reason(exc),
            _named(message),
        )
        message.reject_log_error(logger, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)


def _checking_signed_headers(strategy: Any) -> Any:
    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        # (decodes the body: a bad signature is refused here, as a decode error)
        reason = unbound_header(message.headers or {}, message.payload)
        if reason is not None:
            raise InvalidTaskError(f"refused a signed message: {reason}")
        return strategy(message, body, ack, reject, callbacks, **kw)

    return handle


def _reason(exc: BaseException) -> str:
    """An exception and its causes on one line, without a traceback."""
    parts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(parts) < 4:
        text = " ".join(str(cause).split())
        name = cause.__class__.__name__
        if not any(text and part.endswith(f": {text}") for part in parts):  # (said already)
            parts.append(f"{name}: {text}" if text else name)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    text = " <- ".join(parts)
    return text if len(text) <= 600 else text[:597] + "..."


def _named(message: Any) -> str:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return str(saferepr({"task": headers.get("task"), "id": headers.get("id")}, maxlen=300))


# -- no secret in a remote-control answer ---------------------------------------------------
#
# Any client of the broker can ask a worker for its stats, report and configuration. Celery
# drops the broker's password from ``stats`` but not its transport options (the sentinels'
# password, ``sentinel_kwargs``), and a report or a table of settings can hold a URL or a
# setting of ours: each answer is scrubbed of every password the worker knows.


def _known_secrets(state: Any) -> set[str]:
    conf = state.app.conf
    secrets = url_passwords(app_urls(state.app))
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        sentinel = (options or {}).get("sentinel_kwargs") or {}
        if isinstance(sentinel, dict) and sentinel.get("password"):
            secrets.add(str(sentinel["password"]))
    if os.environ.get(SENTINEL_PASSWORD_VARIABLE):
        secrets.add(os.environ[SENTINEL_PASSWORD_VARIABLE])
    runtime = current_runtime()
    if runtime is not None:  # the adapter's URLs and passwords (state.yaml)
        for key, value in runtime.config.adapter_settings.items():
            if isinstance(value, str) and "://" in value:
                secrets |= url_passwords([value])
            elif isinstance(value, str) and "password" in key:
                secrets.add(value)
    return secrets


def _scrubbed(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def answer(state: Any, *args: Any, **kwargs: Any) -> Any:
        return scrub(command(state, *args, **kwargs), _known_secrets(state))

    return answer


for _name in ("stats", "report", "conf"):
    Panel.data[_name] = _scrubbed(Panel.data[_name])


#: How long a starting worker tries to reach its broker, result backend and state before it
#: gives up (``STATE_TASKS_STARTUP_TIMEOUT``, seconds). A mistake a retry cannot mend (a
#: wrong password, TLS to a plain port) stops it at once.
DEFAULT_STARTUP_TIMEOUT_S = 30
#: The key a starting worker reads to check that its state answers.
STARTUP_PROBE = {"scope": "state_tasks", "key": "startup-probe"}


class Unreachable(StateError):
    """A server the worker needs did not answer at start-up."""

    default_code = "UNREACHABLE"


def _check_servers(runtime: Any) -> None:
    """Reach the broker, the result backend and the state once before consuming anything:
    a worker that cannot is not "ready", it says which server and why, and exits."""
    deadline = time.monotonic() + positive_int_from_env(
        "STATE_TASKS_STARTUP_TIMEOUT", DEFAULT_STARTUP_TIMEOUT_S
    )
    broker = str(app.conf.broker_url)
    _until_reached(deadline, f"the broker at {redact_url(broker)}", broker, _reach_broker)
    backend = app.backend
    if hasattr(backend, "client") and hasattr(backend.client, "ping"):  # a Redis backend
        results = str(app.conf.result_backend)
        _until_reached(
            deadline, f"the result backend at {redact_url(results)}", results, backend.client.ping
        )

    if runtime.config.adapter_name != "RedisAdapter":
        return  # (the other stores live in this process, or behind another deployment)

    def read_state() -> None:
        try:
            runtime.service.call("state::get", dict(STARTUP_PROBE))
        except AdapterUnavailable as e:
            raise _Transient(e.message) from e

    _until_reached(deadline, "the state", "", read_state)


class _Transient(Exception):
    """A failure that a retry may mend."""


def _reach_broker() -> None:
    with app.connection_for_write() as connection:
        connection.connect()


def _until_reached(deadline: float, what: str, url: str, reach: Callable[[], Any]) -> None:
    attempt = 0
    while True:
        try:
            reach()
            return
        except StateError as e:  # the adapter's own, permanent, words
            raise Unreachable(f"cannot use {what}: {e.message}") from e
        except Exception as e:
            cause = likely_cause(e, url)
            detail = redact(app, " ".join(str(e).split())) or e.__class__.__name__
            if cause is not None and cause not in detail:
                detail = f"{detail.rstrip('.')}; {cause}"
            if is_permanent(cause) or time.monotonic() >= deadline:
                raise Unreachable(f"cannot reach {what}: {detail}") from e
            attempt += 1
            logger.warning("state_tasks: cannot reach %s yet (%s); retrying", what, detail)
            time.sleep(min(2.0, 0.25 * 2**attempt, max(0.0, deadline - time.monotonic())))


#: The remote-control command a starting worker uses to find another owner of a KvStore.
OWNER_COMMAND = "state_tasks_owner"


@inspect_command(name=OWNER_COMMAND)
def _owner_info(state: Any, **_: Any) -> dict[str, Any]:
    """Answer a starting worker: which adapter this worker serves, and whether it is local."""
    runtime = current_runtime()
    if runtime is None:
        return {}
    return {
        "adapter": runtime.config.adapter_name,
        "process_local": runtime.config.process_local,
        "pid": os.getpid(),
    }


@signals.worker_ready.connect
def _refuse_a_second_owner(sender: Any = None, **_: Any) -> None:
    """A KvStore lives in one process: a second worker serving the same queues would split
    it silently. Ask the other workers on this broker; stop if one already owns a store."""
    runtime = current_runtime()
    if runtime is None or not runtime.config.process_local or _embedded_broker():
        return  # (the embedded broker is guarded by a lock file instead: it has no replies)
    me = getattr(sender, "hostname", None)
    replies = app.control.broadcast(OWNER_COMMAND, reply=True, timeout=1.5)
    for reply in replies or []:
        for node, info in reply.items():
            if node != me and isinstance(info, dict) and info.get("process_local"):
                message = (
                    f"worker {node} (pid {info.get('pid')}) already serves a "
                    f"{info.get('adapter')} on this broker, and its data lives in that process: a "
                    "second one would split the state. Stop one of them, give each its own "
                    "broker (or queue), or use the RedisAdapter to run several workers."
                )
                logger.critical("state_tasks cannot start: %s", message)
                sys.stderr.write(f"state_tasks cannot start: {message}\n")
                worker_state.should_stop = 1  # the consumer stops, and the worker exits with 1
                return


def _lock_embedded_broker(config_source: str) -> None:
    """With the embedded broker, the broker folder names the deployment: one owner per folder."""
    folder = (app.conf.broker_transport_options or {}).get("data_folder_in")
    if not _embedded_broker() or not folder:
        return
    global _broker_lock_fd
    try:
        _broker_lock_fd = take_ownership(
            os.path.join(os.path.dirname(folder), "kvstore-owner.lock")
        )
    except OwnedElsewhere as e:
        raise ConfigError(
            f"{config_source}: another worker (pid {e.owner}) already serves the embedded broker "
            f"in {os.path.dirname(folder)} with a store that lives in its process; a second one "
            "would split the state. Stop it, run this one in another folder, or use Redis."
        ) from e


_broker_lock_fd: int | None = None


def _embedded_broker() -> bool:
    return is_embedded_broker(app.conf.broker_url)


@signals.worker_process_init.connect
def _start_child(**_: Any) -> None:
    """A prefork child opens its own connections instead of sharing its parent's."""
    forget_runtime_after_fork()
    get_runtime(app)


@signals.worker_process_shutdown.connect
def _stop_child(**_: Any) -> None:
    """A prefork child leaving cleanly settles its operation records and closes its adapter.

    Its tasks have finished and stored their results by then, so no record needs to stay
    whole for a redelivery (see :meth:`state_tasks.runtime.Runtime.close`).
    """
    close_runtime()


@signals.worker_shutdown.connect
def _stop_worker(sender: Any = None, **_: Any) -> None:
    """Flush the adapter on a clean (warm) shutdown."""
    global _cleaner, _sweeper
    if _sweeper is not None:
        _sweeper.stop()
        _sweeper = None
    if _cleaner is not None:
        _cleaner.stop()
        _cleaner = None
    close_runtime()


# -- keys whose ttl ran out: every worker sweeps them (state_tasks/expiry.py) --------------

_sweeper: ExpirySweeper | None = None


def _runtime_service() -> StateService | None:
    runtime = current_runtime()
    return None if runtime is None else runtime.service


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """Start the expiry sweeper in the worker's main process."""
    global _sweeper
    if getattr(sender, "app", None) is not app or _sweeper is not None:
        return
    _sweeper = ExpirySweeper(_runtime_service).start()


# -- the data folder of the embedded default cleans itself ---------------------------------

#: Broker leftovers are removed when older than result_expires, but never younger than
#: this: a message being written or read lives for microseconds, never for seconds.
MIN_BROKER_LEFTOVER_AGE_S = 10.0


def remove_expired_result_files(backend: FilesystemBackend, expires_s: float) -> int:
    """Remove the result files older than ``expires_s``; return how many.

    Like Celery's ``FilesystemBackend.cleanup``, but a file that a client removes meanwhile
    (``iii.trigger`` forgets every result it reads) does not end the sweep.
    """
    folder = os.fsdecode(backend.path)
    prefixes = tuple(
        os.fsdecode(prefix)
        for prefix in (backend.task_keyprefix, backend.group_keyprefix, backend.chord_keyprefix)
    )
    cutoff = time.time() - expires_s
    removed = 0
    for name in os.listdir(folder):
        if not name.startswith(prefixes):
            continue
        path = os.path.join(folder, name)
        try:
            if os.stat(path).st_mtime < cutoff:
                os.remove(path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


class DataFolderCleaner:
    """A daemon thread that keeps the embedded default's data folder bounded.

    Every ``interval_s`` it removes the result files older than ``result_expires`` (file
    result backend) and the broker's leftovers (embedded broker), and puts the messages
    taken by processes that are gone back in their queue. Each sweep is one listing of
    each folder; what it removed is logged at debug, a failure at warning, and
    nothing it meets stops the thread or the worker.
    """

    def __init__(self, app: Celery, interval_s: float) -> None:
        self.app = app
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state_tasks-cleaner", daemon=True)

    @staticmethod
    def wanted(app: Celery) -> bool:
        """Whether ``app`` keeps files that need removing: file results, the embedded broker."""
        return bool(result_folder(app.conf.result_backend)) or is_embedded_broker(
            app.conf.broker_url
        )

    def start(self) -> DataFolderCleaner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def expires_s(self) -> float | None:
        expires = self.app.conf.result_expires
        if expires is None:
            return None
        seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
        return float(seconds) if seconds and seconds > 0 else None

    def sweep(self) -> tuple[int, int, int]:
        """One pass: (result files removed, broker files removed, messages put back)."""
        expires_s = self.expires_s()
        results = 0
        backend = self.app.backend
        if isinstance(backend, FilesystemBackend) and expires_s is not None:
            results = remove_expired_result_files(backend, expires_s)
        broker = requeued = 0
        if is_embedded_broker(self.app.conf.broker_url):
            options = dict(self.app.conf.broker_transport_options or {})
            requeued = requeue_orphaned_messages(options)
            age = max(expires_s or 0.0, MIN_BROKER_LEFTOVER_AGE_S)
            broker = remove_leftovers(options, age)
        return results, broker, requeued

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                results, broker, requeued = self.sweep()
            except Exception as e:  # never let a sweep end the thread, or the worker
                logger.warning("state_tasks: cleaning the data folder failed: %r", e)
            else:
                if requeued:
                    logger.warning(
                        "state_tasks: %d message(s) taken by a process that is gone put back "
                        "in the queue",
                        requeued,
                    )
                logger.debug(
                    "state_tasks: removed %d expired result files and %d broker leftovers "
                    "in %.1f ms",
                    results,
                    broker,
                    (time.monotonic() - started) * 1000,
                )
            if self._stopped.wait(self.interval_s):
                return


_cleaner: DataFolderCleaner | None = None


def _ours(sender: Any) -> bool:
    """Whether a worker signal comes from a worker of this package's app."""
    return getattr(sender, "app", None) is app


@signals.worker_ready.connect
def _start_cleaner(sender: Any = None, **_: Any) -> None:
    """Start the data folder's cleaner in the worker's main process."""
    global _cleaner
    if not _ours(sender) or _cleaner is not None:
        return
    if DataFolderCleaner.wanted(app):
        interval = float(app.conf.get("state_tasks_cleanup_interval") or DEFAULT_CLEANUP_INTERVAL_S)
        _cleaner = DataFolderCleaner(app, interval).start()
