"""Celery tasks of the trigger system: the condition gate and run-time registration.

Registration goes through tasks so that a client process reaches the store the
worker owns (a KvStore lives inside the worker) and every worker sees it.
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError

from state_tasks.celery_app import app
from state_tasks.core.errors import ValidationError
from state_tasks.runtime import get_runtime
from state_tasks.tasks import StateTask
from state_tasks.triggers.dispatch import GATE_TASK, TRIGGER_WORK_OPTIONS


@app.task(
    base=StateTask,
    name=GATE_TASK,
    autoretry_for=(OperationalError, ConnectionError),
    ignore_result=True,
)
def gate(condition_result: Any, event: dict[str, Any], function_id: str) -> dict[str, Any]:
    """Run after a condition: send the handler unless the condition returned JSON ``false``.

    A broker that cannot take the handler's message (a blip) is retried with backoff like
    the state tasks' storage errors, so the handler is not lost. Its return value shows in
    the worker's log and in Flower; it is not stored (nor is the handler's).
    """
    if condition_result is False:
        return {"fired": False, "function_id": function_id, "event_id": event.get("event_id")}
    app.send_task(function_id, args=(event,), add_to_parent=False, **TRIGGER_WORK_OPTIONS)
    return {"fired": True, "function_id": function_id, "event_id": event.get("event_id")}


@app.task(base=StateTask, name="triggers::register")
def register(trigger: dict[str, Any]) -> dict[str, Any]:
    """Store a trigger (idempotent); return it with its id."""
    return get_runtime(app).registry.register(trigger).to_dict()


@app.task(base=StateTask, name="triggers::unregister")
def unregister(trigger_id: str) -> bool:
    """Remove a trigger by id; ``False`` if there was none."""
    if not isinstance(trigger_id, str) or not trigger_id:
        raise ValidationError(
            f"triggers::unregister: 'trigger_id' must be a non-empty string, got {trigger_id!r}"
        )
    return get_runtime(app).registry.unregister(trigger_id)


@app.task(base=StateTask, name="triggers::list")
def list_triggers() -> list[dict[str, Any]]:
    """Every registered trigger."""
    return [trigger.to_dict() for trigger in get_runtime(app).registry.list()]
