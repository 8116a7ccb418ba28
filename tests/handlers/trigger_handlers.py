"""Handlers used by the trigger tests, loaded by workers with ``-I trigger_handlers``.

Each handler records what it received in Redis (``RECORD_REDIS_URL``), so a test
can see exactly which events reached which handler, and how many times.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from state_tasks import app, iii, state_trigger

_record = redis.Redis.from_url(os.environ["RECORD_REDIS_URL"])


def record(name: str, event: dict[str, Any]) -> None:
    _record.rpush(f"record:{name}", json.dumps(event))


def on_any(event: dict[str, Any]) -> dict[str, Any]:
    record("any", event)
    return {}


iii.register_function({"id": "test::onAny"}, on_any)


def on_scope(event: dict[str, Any]) -> dict[str, Any]:
    record("scope", event)
    return {}


iii.register_function({"id": "test::onScope"}, on_scope)


def email_changed(event: dict[str, Any]) -> bool:
    if event.get("event_type") != "state:updated":
        return False
    old = event.get("old_value", {})
    new = event.get("new_value", {})
    return bool(old.get("email") != new.get("email"))


iii.register_function({"id": "conditions::emailChanged"}, email_changed)


def broken_condition(event: dict[str, Any]) -> bool:
    raise RuntimeError("this condition always fails")


iii.register_function({"id": "conditions::broken"}, broken_condition)


def truthy_condition(event: dict[str, Any]) -> Any:
    return {"anything": "but false"}


iii.register_function({"id": "conditions::truthy"}, truthy_condition)


def on_email_change(event: dict[str, Any]) -> dict[str, Any]:
    record("email", event)
    return {}


iii.register_function({"id": "state::onEmailChange"}, on_email_change)
iii.register_trigger(
    {
        "type": "state",
        "function_id": "state::onEmailChange",
        "config": {
            "scope": "people",
            "key": "profile",
            "condition_function_id": "conditions::emailChanged",
        },
    }
)


def read_back(event: dict[str, Any]) -> dict[str, Any]:
    """Reads state, and writes it, while handling the change that triggered it."""
    current = iii.trigger(
        {"function_id": "state::get", "payload": {"scope": event["scope"], "key": event["key"]}}
    )
    iii.trigger(
        {
            "function_id": "state::set",
            "payload": {
                "scope": "readback-results",
                "key": event["key"],
                "value": {"seen": current},
            },
        }
    )
    # A registered function called and waited for from inside a handler runs in-process.
    echo = iii.trigger({"function_id": "conditions::truthy", "payload": event})
    record("readback", {**event, "read": current, "echo": echo})
    return {}


iii.register_function({"id": "test::readBack"}, read_back)
iii.register_trigger(
    {"type": "state", "function_id": "test::readBack", "config": {"scope": "readback"}}
)


@state_trigger(scope="decorated", key="k")
@app.task(name="test::decorated")
def decorated(event: dict[str, Any]) -> dict[str, Any]:
    record("decorated", event)
    return {}


@state_trigger(scope="decorated-cond", condition="conditions::truthy")
@app.task(name="test::decoratedCond")
def decorated_cond(event: dict[str, Any]) -> dict[str, Any]:
    record("decorated-cond", event)
    return {}


@state_trigger(scope="broken", condition="conditions::broken")
@app.task(name="test::neverRuns")
def never_runs(event: dict[str, Any]) -> dict[str, Any]:
    record("never", event)
    return {}


@state_trigger(scope="sentinel-cond", condition="conditions::truthy")
@app.task(name="test::sentinelCond")
def sentinel_cond(event: dict[str, Any]) -> dict[str, Any]:
    """A conditional handler that must run: a test's sentinel after one that must not."""
    record("sentinel-cond", event)
    return {}
