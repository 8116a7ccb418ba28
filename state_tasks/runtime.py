"""The per-process runtime of a worker: the adapter, the service, the trigger registry.

Built lazily, once per process (a prefork child builds its own), by
:func:`get_runtime`; the worker builds it at start-up so that a bad
``state.yaml`` stops the worker at once with a clear message.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery

from state_tasks.config import StateConfig, load_config
from state_tasks.service import StateService
from triggers.registry import Trigger, TriggerRegistry

logger = logging.getLogger(__name__)

#: The task that gates a handler on its condition's result.
GATE_TASK = "triggers::gate"

#: Test-only fault hook: the first change of this scope kills the process after the change
#: is stored and before its trigger work is sent (once: a marker file records it).
FAULT_SCOPE = os.environ.get("STATE_TASKS_TEST_CRASH_AFTER_STORE") or None


def _crash_once_for_tests() -> None:
    marker = os.environ.get("STATE_TASKS_TEST_CRASH_MARKER", "")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:
        return  # crashed once already
    os.close(fd)
    logger.critical("test fault hook: dying between storing a change and sending its triggers")
    os._exit(70)


class Runtime:
    """Everything one worker process needs to serve state functions and fire triggers."""

    def __init__(self, app: Celery, config: StateConfig) -> None:
        self.app = app
        self.config = config
        self.pid = os.getpid()
        self.adapter = config.build_adapter()
        self.adapter.open()
        self.registry = TriggerRegistry(self.adapter)
        self.service = StateService(self.adapter, on_change=self.dispatch)

    def dispatch(self, event: dict[str, Any]) -> None:
        """Enqueue the handlers (or condition → gate chains) of every matching trigger.

        Matching costs four dictionary look-ups; a change that matches nothing
        enqueues nothing.
        """
        if FAULT_SCOPE is not None and event["scope"] == FAULT_SCOPE:
            _crash_once_for_tests()
        for trigger in self.registry.match(event["scope"], event["key"]):
            self.enqueue(trigger, event)

    def enqueue(self, trigger: Trigger, event: dict[str, Any]) -> None:
        """Send one trigger's work for one event: the handler, or its condition first."""
        if trigger.condition_function_id is None:
            self.app.send_task(trigger.function_id, args=(event,))
            return
        condition = self.app.signature(trigger.condition_function_id, args=(event,))
        gate = self.app.signature(
            GATE_TASK, kwargs={"event": event, "function_id": trigger.function_id}
        )
        (condition | gate).apply_async()

    def close(self) -> None:
        """Flush and release the adapter."""
        self.adapter.close()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
#: Triggers declared in this process (decorator or facade) before the runtime existed.
_declared: dict[str, Trigger] = {}


def declare(trigger: Trigger) -> None:
    """Remember a trigger declared at import; register it now if the runtime runs."""
    _declared[trigger.id] = trigger
    if _runtime is not None:
        _runtime.registry.register(trigger)


def get_runtime(app: Celery) -> Runtime:
    """This process's runtime, built on first use from the configured ``state.yaml``."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                runtime = Runtime(app, load_config())
                for trigger in list(_declared.values()):
                    runtime.registry.register(trigger)
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
            _runtime.close()
            _runtime = None


def forget_runtime_after_fork() -> None:
    """Drop an inherited runtime in a forked child without closing the parent's resources."""
    global _runtime
    if _runtime is not None and _runtime.pid != os.getpid():
        _runtime = None
