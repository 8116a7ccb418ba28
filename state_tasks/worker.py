"""The worker's side of state_tasks: start-up checks, one owner per store, clean shutdown.

Imported by every worker (it is in the app's ``include``), never by a client. At start-up
the worker loads ``state.yaml`` and opens the adapter before it consumes anything, so a
bad configuration stops it with one clear message; a store that lives in one process
(the KvStore, the Bridge's local triggers) refuses a second worker on the same broker; a
prefork child opens its own connections; a warm shutdown flushes the adapter.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import signals
from celery.worker import state as worker_state
from celery.worker.control import inspect_command

from state_tasks.celery_app import app
from state_tasks.core.errors import ConfigError, StateError
from state_tasks.core.ownership import OwnedElsewhere, take_ownership
from state_tasks.core.urls import is_embedded_broker
from state_tasks.runtime import (
    close_runtime,
    current_runtime,
    forget_runtime_after_fork,
    get_runtime,
)

logger = logging.getLogger(__name__)


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
        ) from e


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
