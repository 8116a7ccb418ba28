"""The per-process runtime of a worker: the adapter, the service, the triggers.

Built lazily, once per process (a prefork child builds its own), by
:func:`get_runtime`; the worker builds it at start-up so that a bad
``state.yaml`` stops the worker at once with a clear message.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from state_tasks.config import StateConfig, load_config
from state_tasks.core.service import StateService
from state_tasks.triggers import declarations
from state_tasks.triggers.dispatch import Dispatcher
from state_tasks.triggers.registry import TriggerRegistry


class Runtime:
    """Everything one worker process needs to serve state functions and fire triggers."""

    def __init__(self, app: Celery, config: StateConfig) -> None:
        self.app = app
        self.config = config
        self.pid = os.getpid()
        self.adapter = config.build_adapter()
        self.adapter.open()
        self.registry = TriggerRegistry(self.adapter)
        self.dispatcher = Dispatcher(app, self.registry)
        self.service = StateService(
            self.adapter, on_change=self.dispatcher, send_task=self.send_then
        )

    def send_then(self, name: str, kwargs: dict[str, Any], task_id: str) -> None:
        """Send a barrier's ``then`` task (its id derived from the barrier: a redelivered
        arrival that sends it again sends the same id)."""
        self.app.send_task(name, kwargs=kwargs, task_id=task_id, add_to_parent=False)

    def close(self) -> None:
        """Settle the records of finished operations, then flush and release the adapter.

        Called at a warm shutdown, once the running tasks have finished and stored their
        results: no record needs to stay whole for a redelivery any more.
        """
        self.service.settle_sent()
        self.adapter.close()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(app: Celery) -> Runtime:
    """This process's runtime, built on first use from the configured ``state.yaml``.

    Triggers declared in this process (decorator, facade) are stored once it exists.
    """
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                runtime = Runtime(app, load_config())
                declarations.attach(runtime.registry)
                _runtime = runtime
    return _runtime


def current_runtime() -> Runtime | None:
    """The runtime if this process has built one, else ``None``."""
    return _runtime


def close_runtime() -> None:
    """Flush and drop this process's runtime (clean shutdown)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            declarations.detach()
            _runtime.close()
            _runtime = None


def forget_runtime_after_fork() -> None:
    """Drop an inherited runtime in a forked child without closing the parent's resources."""
    global _runtime
    if _runtime is not None and _runtime.pid != os.getpid():
        declarations.detach()
        _runtime = None
