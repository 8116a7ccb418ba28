"""Triggers declared in code: the ``state_trigger`` decorator and the facade's
``register_trigger`` in a worker both land here. No Celery.

A worker module is imported before the worker has opened its adapter, so a
declaration is remembered and stored when the process's registry is attached
(:func:`attach`); once attached, a declaration is stored at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from state_tasks.core.errors import ValidationError
from state_tasks.core.filters import TriggerFilter
from state_tasks.triggers.registry import Trigger, TriggerRegistry, trigger_from_spec

TaskT = TypeVar("TaskT")

_declared: dict[str, Trigger] = {}
_registry: TriggerRegistry | None = None
_lock = threading.Lock()


def declare(trigger: Trigger) -> None:
    """Remember a trigger declared in this process; store it now if a registry is attached."""
    with _lock:
        _declared[trigger.id] = trigger
        registry = _registry
    if registry is not None:
        registry.register(trigger)


def attach(registry: TriggerRegistry) -> None:
    """Store every declared trigger in ``registry``, and the ones declared later too."""
    global _registry
    with _lock:
        _registry = registry
        declared = list(_declared.values())
    for trigger in declared:
        registry.register(trigger)


def detach() -> None:
    """Stop storing declarations (the registry's adapter is closing or was inherited)."""
    global _registry
    with _lock:
        _registry = None


def state_trigger(
    *,
    scope: str | None = None,
    key: str | None = None,
    condition: str | None = None,
    when: Mapping[str, Any] | BaseModel | None = None,
) -> Callable[[TaskT], TaskT]:
    """Declare a Celery task as the handler of a ``state`` trigger.

    Stack it on ``@app.task``; the trigger is stored when a worker imports the
    module (``celery -A state_tasks worker -I mymodule``)::

        @state_trigger(scope="users", key="profile", condition="conditions::emailChanged")
        @app.task(name="users::onEmailChange")
        def on_email_change(event): ...

    ``when``: a declarative filter (:mod:`state_tasks.core.filters`), judged by the worker
    that made the change before anything is sent::

        @state_trigger(scope="users", when={"changed": ["email"]})
    """

    def wrap(task: TaskT) -> TaskT:
        function_id = getattr(task, "name", None)
        if not isinstance(function_id, str):
            raise ValidationError(f"state_trigger: stack it on a Celery task, got {task!r}")
        filter_json = (
            TriggerFilter.model_validate(when).to_json() if isinstance(when, BaseModel) else when
        )
        config = {
            "scope": scope,
            "key": key,
            "condition_function_id": condition,
            "when": filter_json,
        }
        declare(
            trigger_from_spec(
                {
                    "type": "state",
                    "function_id": function_id,
                    "config": {k: v for k, v in config.items() if v is not None},
                }
            )
        )
        return task

    return wrap
