"""Handlers of the trigger filter tests (tests/integration/test_trigger_filters_workers.py),
loaded by workers with ``-I filter_handlers``.

They keep what they saw in state (in-process, on the worker's own adapter): a handler
counts ``"<event_type>:<key>"`` (and, for a delete, ``":<reason>"``) as a field of the key
``<handler name>`` in the scope ``filter-log-<event scope>``; the counting
condition increments ``calls`` of the key ``condition`` there, and passes unless the new
value says ``"veto": true``.
"""

from __future__ import annotations

from typing import Any

from state_tasks import Changed, app, iii, state_trigger


def log_scope(event: dict[str, Any]) -> str:
    return f"filter-log-{event['scope']}"


def note(name: str, event: dict[str, Any]) -> None:
    entry = f"{event['event_type']}:{event['key']}"
    if event.get("reason"):
        entry += f":{event['reason']}"
    iii.trigger(
        {
            "function_id": "state::update",
            "payload": {
                "scope": log_scope(event),
                "key": name,
                "ops": [{"increment": {"field": entry}}],
            },
        }
    )


def on_change(event: dict[str, Any]) -> dict[str, Any]:
    note("handler", event)
    return {}


iii.register_function({"id": "filters::handler"}, on_change)


def counting_condition(event: dict[str, Any]) -> bool:
    iii.trigger(
        {
            "function_id": "state::update",
            "payload": {
                "scope": log_scope(event),
                "key": "condition",
                "ops": [{"increment": {"field": "calls"}}],
            },
        }
    )
    return not (event.get("new_value") or {}).get("veto", False)


iii.register_function({"id": "filters::countingCondition"}, counting_condition)


# Registered when the worker imports the module: a filter in register_trigger
iii.register_trigger(
    {
        "type": "state",
        "function_id": "filters::handler",
        "config": {
            "scope": "filter-imported",
            "when": {"all": [{"event_types": ["state:updated"]}, {"changed": ["email"]}]},
        },
    }
)


@state_trigger(scope="filter-decorated", when={"path": "status", "eq": "paid"})
@app.task(name="filters::decorated")
def decorated(event: dict[str, Any]) -> dict[str, Any]:
    note("decorated", event)
    return {}


@state_trigger(scope="filter-decorated-typed", when=Changed(changed=[["address", "city"]]))
@app.task(name="filters::decoratedTyped")
def decorated_typed(event: dict[str, Any]) -> dict[str, Any]:
    note("decorated-typed", event)
    return {}
