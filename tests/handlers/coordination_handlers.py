"""Tasks of the coordination tests (tests/integration/test_coordination_workers.py), loaded
by workers with ``-I coordination_handlers``.

They keep what they saw in state, in-process on the worker's own adapter, in the scope
``coord-log``: the test reads it back through the workers.
"""

from __future__ import annotations

import os
import time
from typing import Any

from state_tasks import app, iii, lock, once
from state_tasks.coordination import NotAcquired
from state_tasks.core.errors import VersionConflict


def call(function_id: str, **payload: Any) -> Any:
    return iii.trigger({"function_id": function_id, "payload": payload})


def count(key: str, field: str, by: int = 1) -> None:
    call(
        "state::update", scope="coord-log", key=key, ops=[{"increment": {"field": field, "by": by}}]
    )


@app.task(name="coord::guarded")
def guarded(key: str, hold_s: float = 0.005) -> dict[str, Any]:
    """One attempt at the lock ``key``; its holder does a read-modify-write of the resource
    ``<key>-resource`` that a second holder at the same time would break (the write is a
    compare-and-set on the version read), and that refuses a token lower than one it saw."""
    try:
        with lock("coord-locks", key, ttl_ms=3_000, keep=False) as held:
            resource = f"{key}-resource"
            entry = call("state::get", scope="coord-log", key=resource, with_version=True)
            seen = entry["value"] or {"count": 0, "token": 0}
            if held.token <= seen["token"]:
                count(key, "stale_tokens")
            time.sleep(hold_s)
            try:
                call(
                    "state::set",
                    scope="coord-log",
                    key=resource,
                    value={"count": seen["count"] + 1, "token": held.token},
                    if_version=entry["version"],
                )
            except VersionConflict:
                count(key, "two_holders")
            call(
                "state::update",
                scope="coord-log",
                key=f"{key}-tokens",
                ops=[{"append": {"field": "tokens", "value": held.token}}],
            )
            return {"acquired": True, "token": held.token}
    except NotAcquired:
        return {"acquired": False}


@app.task(name="coord::hold", acks_late=False)
def hold(key: str, seconds: float, ttl_ms: int) -> None:
    """Take the lock ``key``, note this process's pid, and keep it (extending) a while.
    Acknowledged on receipt: a holder that is killed is not run again."""
    with lock("coord-locks", key, ttl_ms=ttl_ms):
        call("state::set", scope="coord-log", key=f"{key}-holder", value={"pid": os.getpid()})
        time.sleep(seconds)


@app.task(name="coord::once_body", bind=True)
@once(key="acct:{account}", scope="coord-once", ttl_ms=10_000, remember_ms=60_000)
def once_body(self: Any, account: str, delay_s: float = 0.2) -> dict[str, Any]:
    """Counts its runs; returns which task ran."""
    count(f"once-{account}", "runs")
    time.sleep(delay_s)
    return {"ran_by": self.request.id}


@app.task(name="coord::once_slow")
@once(key="slow:{name}", scope="coord-once", ttl_ms=60_000)
def once_slow(name: str, delay_s: float) -> str:
    """A guarded body that sleeps (to be revoked, or to hit its time limit)."""
    call("state::set", scope="coord-log", key=f"slow-{name}", value={"pid": os.getpid()})
    time.sleep(delay_s)
    return "done"


@app.task(name="coord::member")
def member(tag: str, n: int, fail: bool = False) -> int:
    if fail:
        raise ValueError(f"member {n} failed")
    return n


@app.task(name="coord::joined")
def joined(tag: str) -> None:
    """A barrier's callback: counts how often it ran."""
    count(f"joined-{tag}", "runs")
