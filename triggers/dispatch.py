"""Trigger dispatch: after a change is stored, send the work of every matching trigger.

The :class:`Dispatcher` is the state service's ``on_change`` callback in a worker. It
finds the triggers with the registry's match index (four dictionary look-ups) and sends,
for each, the handler task, or the condition task chained into :data:`GATE_TASK`, which
sends the handler unless the condition returned JSON ``false``. It only sends messages:
the caller of a state function never waits for a handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triggers.registry import Trigger, TriggerRegistry

if TYPE_CHECKING:
    from celery import Celery

#: The task that gates a handler on its condition's result.
GATE_TASK = "triggers::gate"


class Dispatcher:
    """Sends the trigger work of each stored change through a Celery app."""

    def __init__(self, app: Celery, registry: TriggerRegistry) -> None:
        self.app = app
        self.registry = registry

    def __call__(self, event: dict[str, Any]) -> None:
        """Enqueue the work of every trigger matching the change; none: nothing is sent."""
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
