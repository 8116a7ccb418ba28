"""Tasks the benchmark workers load (``-I bench.handlers``): a no-op baseline and a handler."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from state_tasks import app, iii

_record_url = os.environ.get("BENCH_RECORD_URL")
_record = redis.Redis.from_url(_record_url) if _record_url else None


@app.task(name="bench::noop")
def noop(**kwargs: Any) -> None:
    """The baseline: a task that does nothing, on the same worker and broker."""
    return None


@app.task(name="bench::handler")
def handler(event: dict[str, Any]) -> dict[str, Any]:
    """A trigger handler that records when it started (wall clock, same machine)."""
    if _record is not None:
        _record.rpush("bench:started", f"{event['key']} {time.time()!r}")
    return {}


#: Where the soak's handlers count the changes they handled (see bench/soak.py).
SOAK_COUNT = {"scope": "soak-count", "key": "handled"}


@app.task(name="bench::soakHandler")
def soak_handler(event: dict[str, Any]) -> dict[str, Any]:
    """The soak's handler: counts itself in state, in-process (no broker round trip)."""
    iii.trigger(
        {
            "function_id": "state::update",
            "payload": {**SOAK_COUNT, "ops": [{"increment": {"field": "n", "by": 1}}]},
        }
    )
    return {"handled": event["event_id"]}


@app.task(name="bench::soakCondition")
def soak_condition(event: dict[str, Any]) -> bool:
    """The soak's condition: true for every other change it sees."""
    return bool((event["new_value"]["i"] // 100) % 2 == 0)


@app.task(name="bench::expiryHandler")
def expiry_handler(event: dict[str, Any]) -> dict[str, Any]:
    """Records each expiry: its key, when it was fired (the event's timestamp) and when this
    handler started (wall clock, same machine)."""
    if _record is not None and event.get("reason") == "expired":
        _record.rpush("bench:expired", f"{event['key']} {event['timestamp']} {time.time()!r}")
    return {}


@app.task(name="bench::countHandler")
def count_handler(event: dict[str, Any]) -> dict[str, Any]:
    """Counts the changes it handled per scope (bench/filters.py)."""
    if _record is not None:
        _record.incr(f"bench:handled:{event['scope']}")
    return {}


@app.task(name="bench::emailChanged")
def email_changed(event: dict[str, Any]) -> bool:
    """The seed's condition: an update that changed the email (bench/filters.py)."""
    if event.get("event_type") != "state:updated":
        return False
    old = event.get("old_value") or {}
    new = event.get("new_value") or {}
    return bool(old.get("email") != new.get("email"))
