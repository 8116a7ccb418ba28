"""Trigger dispatch: after a change is stored, send the work of every matching trigger.

The :class:`Dispatcher` is the state service's ``on_change`` callback in a worker. It
finds the triggers with the registry's match index (four dictionary look-ups) and sends,
for each whose declarative filter (``when``) the change passes, the handler task, or the
condition task chained into :data:`GATE_TASK`, which sends the handler unless the
condition returned JSON ``false``. A change a filter refuses costs no message at all. It
only sends messages: the caller of a state function never waits for a handler.

Nobody reads what a handler, a condition or the gate returns (the condition's value
reaches the gate inside the chain's message, not through the result backend), so all of
them are sent with ``ignore_result``: they leave nothing in the result backend, failures
included (they show in the worker's log and in Flower, which see task events). They are
not added to the state task's result either (``add_to_parent=False``).

Several events at once (:meth:`Dispatcher.send_all`: the expiries of one sweep, the changes
of one batch) read the match index once and share one producer; where the transport can
batch publishes (kombu's ``Producer.batch``, Redis since kombu 5.7) their messages and
task-sent events reach the broker in one round trip, instead of two each. That is what lets
a worker's expiry sweeper send a burst of expiries about three times as fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from state_tasks.triggers.registry import Trigger, TriggerRegistry

if TYPE_CHECKING:
    from celery import Celery
    from kombu.messaging import Producer

#: The task that gates a handler on its condition's result.
GATE_TASK = "triggers::gate"
#: How trigger work is sent: its results are never stored (nobody reads them).
TRIGGER_WORK_OPTIONS: dict[str, Any] = {"ignore_result": True}


class Dispatcher:
    """Sends the trigger work of each stored change through a Celery app."""

    def __init__(self, app: Celery, registry: TriggerRegistry) -> None:
        self.app = app
        self.registry = registry

    def __call__(self, event: dict[str, Any], *, trigger_version: int | None = None) -> None:
        """Enqueue the work of every trigger matching the change; none: nothing is sent.
        ``trigger_version``: as for :meth:`send_all`."""
        index = self.registry.match_index(trigger_version)
        for trigger in index.match(event["scope"], event["key"]):
            if trigger.passes(event):
                self.enqueue(trigger, event)

    def send_changes(
        self, events: Sequence[dict[str, Any]], trigger_version: int | None = None
    ) -> None:
        """The state service's way in: the events of one operation, matched against the
        triggers at ``trigger_version`` when the adapter read it with the change."""
        if len(events) == 1:
            self(events[0], trigger_version=trigger_version)
        else:
            self.send_all(events, trigger_version=trigger_version)

    def send_all(
        self, events: Sequence[dict[str, Any]], *, trigger_version: int | None = None
    ) -> None:
        """Enqueue the work of every trigger matching each of ``events``, in their order,
        through one producer and (where the transport batches) one round trip to the broker.
        ``trigger_version``: the triggers' version the adapter read with the change (the
        registry then reads none).

        Raises what sending raises; then none, some or all of the work may have been sent
        (a batch that failed to flush is uncertain: kombu's ``BatchPublishError``), so a
        caller resends all of it under the same event ids.
        """
        index = self.registry.match_index(trigger_version)
        work = [
            (trigger, event)
            for event in events
            for trigger in index.match(event["scope"], event["key"])
            if trigger.passes(event)
        ]
        if len(work) <= 1:  # one message: the plain path, with kombu's retry of a send
            for trigger, event in work:
                self.enqueue(trigger, event)
            return
        with self.app.producer_or_acquire() as producer, _publish_batch(producer):
            for trigger, event in work:
                self.enqueue(trigger, event, producer)

    def enqueue(
        self, trigger: Trigger, event: dict[str, Any], producer: Producer | None = None
    ) -> None:
        """Send one trigger's work for one event: the handler, or its condition first."""
        if trigger.condition_function_id is None:
            self.app.send_task(
                trigger.function_id,
                args=(event,),
                add_to_parent=False,
                producer=producer,
                **TRIGGER_WORK_OPTIONS,
            )
            return
        condition = self.app.signature(
            trigger.condition_function_id, args=(event,), **TRIGGER_WORK_OPTIONS
        )
        gate = self.app.signature(
            GATE_TASK,
            kwargs={"event": event, "function_id": trigger.function_id},
            **TRIGGER_WORK_OPTIONS,
        )
        (condition | gate).apply_async(add_to_parent=False, producer=producer)


def _publish_batch(producer: Producer) -> AbstractContextManager[Any]:
    """The producer's publish batch (kombu 5.7 and later; a transport that cannot batch
    publishes at once inside it), or nothing to enter on an older kombu."""
    batch = getattr(producer, "batch", None)
    return nullcontext() if batch is None else batch()
