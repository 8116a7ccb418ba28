"""The iii-style facade: the original engine's Python samples run on it unchanged.

::

    from state_tasks import iii

    iii.register_function({"id": "state::onUserUpdated"}, on_user_updated)
    iii.register_trigger({"type": "state", "function_id": "state::onUserUpdated",
                          "config": {"scope": "users", "key": "profile"}})
    iii.trigger({"function_id": "state::set", "payload": {...}, "action": {"type": "void"}})

Inside a worker (a handler reading state while it handles a change) state
functions run in-process on the worker's own adapter instead of waiting on
the broker, so a worker can never deadlock on itself, even with one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from state_tasks.celery_app import app
from state_tasks.core.errors import CallTimeout, ValidationError
from state_tasks.core.service import STATE_FUNCTIONS
from state_tasks.runtime import current_runtime, get_runtime
from state_tasks.triggers.declarations import declare
from state_tasks.triggers.registry import Trigger, trigger_from_spec

DEFAULT_TIMEOUT_MS = 30_000
#: How often a waiting caller polls a polling result backend (the file backend).
RESULT_POLL_INTERVAL_S = 0.02


@dataclass(frozen=True)
class FunctionRef:
    """What ``register_function`` returns: the function's id and its Celery task."""

    id: str
    task: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class TriggerHandle:
    """What ``register_trigger`` returns: the trigger's id, and a way to remove it."""

    id: str
    trigger: Trigger = field(repr=False)
    _facade: III = field(repr=False, compare=False)

    def unregister(self) -> bool:
        """Remove this trigger everywhere; ``False`` if it was already gone."""
        return self._facade.unregister_trigger(self.id)


class III:
    """The engine's SDK surface, on a Celery app."""

    def __init__(self, app: Celery, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.app = app
        self.timeout_ms = timeout_ms

    # -- functions and triggers -----------------------------------------------------

    def register_function(
        self, spec: Mapping[str, Any] | str, fn: Callable[[Any], Any]
    ) -> FunctionRef:
        """Make ``fn(event)`` a Celery task named by the function id."""
        function_id = (
            spec if isinstance(spec, str) else spec.get("id") if isinstance(spec, Mapping) else None
        )
        if not isinstance(function_id, str) or not function_id:
            raise ValidationError(
                "register_function: expected {'id': 'name::here'} or a non-empty string, "
                f"got {spec!r}"
            )
        if function_id in STATE_FUNCTIONS:
            raise ValidationError(
                f"register_function: {function_id!r} is a built-in state function"
            )
        task = self.app.task(name=function_id, shared=False)(fn)
        return FunctionRef(function_id, task)

    def register_trigger(self, spec: Mapping[str, Any]) -> TriggerHandle:
        """Register a ``state`` trigger; registering the same one twice keeps one.

        In a worker (at import of its modules, or from a handler) the trigger is
        stored by the worker itself; anywhere else it is sent to a worker and
        this call waits until it is stored.
        """
        trigger = trigger_from_spec(spec)
        if self._in_worker():
            declare(trigger)
        else:
            self._send_and_wait("triggers::register", args=(trigger.registration(),))
        return TriggerHandle(trigger.id, trigger, self)

    def unregister_trigger(self, trigger_id: str) -> bool:
        """Remove a trigger by id, from any process."""
        if self._in_worker():
            return get_runtime(self.app).registry.unregister(trigger_id)
        return bool(self._send_and_wait("triggers::unregister", args=(trigger_id,)))

    def list_triggers(self) -> list[dict[str, Any]]:
        """Every registered trigger, as ``{"id", "type", "function_id", "config"}``."""
        if self._in_worker():
            return [t.to_dict() for t in get_runtime(self.app).registry.list()]
        result: list[dict[str, Any]] = self._send_and_wait("triggers::list")
        return result

    # -- calling functions ----------------------------------------------------------

    def trigger(self, request: Mapping[str, Any]) -> Any:
        """Call a function: ``{"function_id", "payload", "action"?, "timeout_ms"?}``.

        With ``action: {"type": "void"}`` the call is sent and ``None`` returned
        at once, and its result is never stored; otherwise this waits for the result,
        removes it from the result backend, and returns it (or raises its error).
        """
        function_id, payload, void, timeout_ms = self._parse_request(request)
        if function_id in STATE_FUNCTIONS:
            if self._in_worker():
                result = get_runtime(self.app).service.call(function_id, payload)
                return None if void else result
            if void:
                self.app.send_task(function_id, kwargs=payload, ignore_result=True)
                return None
            return self._send_and_wait(function_id, kwargs=payload, timeout_ms=timeout_ms)
        if void:
            self.app.send_task(function_id, args=(payload,), ignore_result=True)
            return None
        local = self.app.tasks.get(function_id) if self._in_worker() else None
        if local is not None:
            return local.apply(args=(payload,)).get(disable_sync_subtasks=False)
        return self._send_and_wait(function_id, args=(payload,), timeout_ms=timeout_ms)

    # -- internals --------------------------------------------------------------------

    def _in_worker(self) -> bool:
        return bool(self.app.loader.worker_initialized) or current_runtime() is not None

    def _parse_request(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any], bool, int]:
        if not isinstance(request, Mapping):
            raise ValidationError(f"trigger: expected a request object, got {request!r}")
        unknown = set(request) - {"function_id", "payload", "action", "timeout_ms"}
        if unknown:
            raise ValidationError(
                f"trigger: unknown keys {sorted(unknown)} "
                "(allowed: function_id, payload, action, timeout_ms)"
            )
        function_id = request.get("function_id")
        if not isinstance(function_id, str) or not function_id:
            raise ValidationError(
                f"trigger: 'function_id' must be a non-empty string, got {function_id!r}"
            )
        payload = request.get("payload") or {}
        if not isinstance(payload, Mapping):
            raise ValidationError(f"trigger: 'payload' must be an object, got {payload!r}")
        action = request.get("action")
        if action is not None and not (
            isinstance(action, Mapping) and action.get("type") in ("void",)
        ):
            raise ValidationError(
                f"trigger: unsupported action {action!r} (use {{'type': 'void'}} or omit it)"
            )
        timeout_ms = request.get("timeout_ms", self.timeout_ms)
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise ValidationError(
                f"trigger: 'timeout_ms' must be a positive integer, got {timeout_ms!r}"
            )
        return function_id, dict(payload), action is not None, timeout_ms

    def _send_and_wait(
        self,
        task_name: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
    ) -> Any:
        timeout_ms = timeout_ms or self.timeout_ms
        result = self.app.send_task(task_name, args=args, kwargs=dict(kwargs or {}))
        try:
            return result.get(timeout=timeout_ms / 1000, interval=RESULT_POLL_INTERVAL_S)
        except CeleryTimeoutError as e:
            raise CallTimeout(
                f"{task_name} did not answer within {timeout_ms} ms; is a worker running "
                "(celery -A state_tasks worker) on the same broker?"
            ) from e
        finally:
            # Read once, never again: the result (a value or an error) leaves the backend now
            # instead of at its expiry. (After a timeout there may be nothing to remove yet;
            # a late result then expires with result_expires.)
            with contextlib.suppress(Exception):
                result.forget()


#: The facade on this package's app: ``from state_tasks import iii``.
iii = III(app)
