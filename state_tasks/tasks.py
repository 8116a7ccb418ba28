"""The six state functions as Celery tasks, and the worker's start-up checks.

Tasks are thin: they gather their keyword arguments, hand them to the service
(which validates with pydantic and raises :class:`StateError`), and return
JSON-safe data. Every parameter is optional in the Python signature so that a
missing or misspelt one comes back as a ``VALIDATION_ERROR`` that says so,
not as a ``TypeError``.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import Any, Final

from celery import Task, signals
from celery.worker import state as worker_state
from celery.worker.control import inspect_command

from state_tasks.celery_app import app
from state_tasks.errors import AdapterUnavailable, ConfigError, StateError
from state_tasks.ownership import OwnedElsewhere, take_ownership
from state_tasks.runtime import (
    close_runtime,
    current_runtime,
    forget_runtime_after_fork,
    get_runtime,
)
from state_tasks.urls import is_embedded_broker

logger = logging.getLogger(__name__)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final[Any] = _Missing()


#: Retries of a storage that cannot be reached: the n-th waits between half and all of
#: RETRY_BASE_S * 2**n (capped at RETRY_MAX_S), so five retries span 7.75 to 15.5 s.
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0
MAX_RETRIES = 5


def retry_delay_s(retries: int) -> float:
    """Exponential backoff with "equal jitter": never near zero, never in lockstep."""
    ceiling = min(RETRY_MAX_S, RETRY_BASE_S * 2.0**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class StateTask(Task):  # type: ignore[misc]
    """Base of the state tasks: storage connection errors are retried with backoff.

    Only :class:`AdapterUnavailable` is retried (a bad input stays bad); after
    ``MAX_RETRIES`` the caller gets its ``ADAPTER_ERROR``. A retry keeps the task id, so
    the operation id stays the same and nothing is applied twice.
    """

    autoretry_for = (AdapterUnavailable,)
    max_retries = MAX_RETRIES

    def retry(
        self, *args: Any, countdown: float | None = None, eta: Any = None, **kwargs: Any
    ) -> Any:
        if countdown is None and eta is None:
            countdown = retry_delay_s(self.request.retries)
        return super().retry(*args, countdown=countdown, eta=eta, **kwargs)


RETRY_OPTIONS: dict[str, Any] = {"base": StateTask}


def _call(function_id: str, given: dict[str, Any], op_id: str | None = None) -> Any:
    payload = {name: value for name, value in given.items() if value is not MISSING}
    return get_runtime(app).service.call(function_id, payload, op_id)


def _op_id(task: Task) -> str | None:
    """The task's id: a redelivered or retried task keeps it, so it names the operation."""
    return task.request.id  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::set")
def state_set(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    value: Any = MISSING,
    data: Any = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Store ``value`` (alias ``data``) under ``(scope, key)``; return old and new value."""
    given = {"scope": scope, "key": key, "value": value, "data": data, **extra}
    return _call("state::set", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::get")
def state_get(scope: str = MISSING, key: str = MISSING, **extra: Any) -> Any:
    """Return the value under ``(scope, key)``, or ``None``."""
    return _call("state::get", {"scope": scope, "key": key, **extra})


@app.task(**RETRY_OPTIONS, bind=True, name="state::delete")
def state_delete(self: Task, scope: str = MISSING, key: str = MISSING, **extra: Any) -> Any:
    """Delete ``(scope, key)``; return the deleted value, or ``None``."""
    return _call("state::delete", {"scope": scope, "key": key, **extra}, _op_id(self))


@app.task(**RETRY_OPTIONS, bind=True, name="state::update")
def state_update(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    ops: list[dict[str, Any]] = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Apply update ``ops`` atomically; return ``{old_value, new_value}``."""
    given = {"scope": scope, "key": key, "ops": ops, **extra}
    return _call("state::update", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::list")
def state_list(scope: str = MISSING, **extra: Any) -> list[Any]:
    """Return every value in ``scope`` as a JSON array."""
    return _call("state::list", {"scope": scope, **extra})  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::list_groups")
def state_list_groups(**extra: Any) -> dict[str, list[str]]:
    """Return ``{"groups": [...]}``: the sorted scopes holding at least one key."""
    return _call("state::list_groups", extra)  # type: ignore[no-any-return]


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
    logger.info(
        "state_tasks: %s adapter ready (config: %s)",
        runtime.config.adapter_name,
        runtime.config.source,
    )


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
        ) from None


_broker_lock_fd: int | None = None


def _embedded_broker() -> bool:
    return is_embedded_broker(app.conf.broker_url)


@signals.worker_process_init.connect
def _start_child(**_: Any) -> None:
    """A prefork child opens its own connections instead of sharing its parent's."""
    forget_runtime_after_fork()
    get_runtime(app)


@signals.worker_shutdown.connect
def _stop_worker(sender: Any = None, **_: Any) -> None:
    """Flush the adapter on a clean (warm) shutdown."""
    close_runtime()
