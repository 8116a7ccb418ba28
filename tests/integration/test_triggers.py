"""Triggers through real workers on a real Redis broker (SPEC §4, §5).

A test that must show a handler did *not* run proves it with a sentinel instead of a
pause: after the change that must fire nothing, it makes a change whose handler must run,
and waits for that handler. The ``triggered`` worker runs one task at a time, in the order
the tasks were queued (one thread, prefetch 1, late acks), and a change's trigger work is
queued while its state task runs, before the caller gets the answer. So every task queued
for the earlier change (the handler, or the condition, then the gate it chains into, then
the handler the gate sends: each step queued when the previous one ends) runs before the
same step of the sentinel's: once the sentinel's handler has recorded its event, a handler
that the earlier change wrongly fired has recorded its event too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from helpers import Deployment, own_db, redis_state_yaml, wait_until

from state_tasks import StateEvent, UpdateOpError

#: The key of a sentinel change: one that must fire, made after one that must not.
SENTINEL = "sentinel"


class Recorded:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(f"record:{name}", 0, -1)]

    def wait_for(self, name: str, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events(name)) >= count, timeout_s, f"{count} events in {name}")
        return self.events(name)

    def wait_for_event(
        self,
        name: str,
        wanted: Callable[[dict[str, Any]], bool],
        what: str,
        timeout_s: float = 20,
    ) -> list[dict[str, Any]]:
        """Wait until ``name`` recorded an event that is ``wanted``; return all its events."""
        wait_until(lambda: any(wanted(e) for e in self.events(name)), timeout_s, what)
        return self.events(name)

    def wait_for_sentinel(self, name: str, timeout_s: float = 20) -> list[dict[str, Any]]:
        """Wait for ``name`` to record the change of key :data:`SENTINEL`; return the other
        events it recorded (everything queued before the sentinel has run by then)."""
        events = self.wait_for_event(
            name, lambda e: e["key"] == SENTINEL, f"the sentinel event in {name}", timeout_s
        )
        return [e for e in events if e["key"] != SENTINEL]

    def clear(self) -> None:
        for key in self.client.scan_iter("record:*"):
            self.client.delete(key)


@pytest.fixture(scope="module", params=["kv", "redis_cluster"])
def triggered(
    request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """One deployment, on the default KvStore or with its state (and so its triggers) on
    the session's Redis Cluster: one worker thread loading the test handlers."""
    state_yaml: str | None = None
    args: tuple[str, ...] = ()
    if request.param == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        state_yaml = redis_state_yaml(cluster.cluster_url(), unique("triggers"))
        args = ("--pool", "threads", "--concurrency", "1")
    deployment = Deployment(redis_server, tmp_path_factory.mktemp("triggers"), state_yaml)
    record_url = redis_server.url(own_db())
    worker = deployment.worker(*args, includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
    # The sentinels of these tests rely on one worker thread taking tasks in queue order.
    assert "concurrency: 1 (thread)" in worker.log(), worker.tail()
    recorded = Recorded(record_url)
    yield deployment, recorded
    deployment.close()


@pytest.fixture
def setup(triggered: Any) -> Any:
    deployment, recorded = triggered
    recorded.clear()
    return deployment, recorded


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(deployment: Any, function_id: str, **config: str) -> Any:
    return deployment.client.iii.register_trigger(
        {"type": "state", "function_id": function_id, "config": config}
    )


def test_lifecycle_events_with_exact_payloads(setup: Any) -> None:
    deployment, recorded = setup
    scope = unique("life")
    handle = register(deployment, "test::onScope", scope=scope)
    try:
        deployment.call("state::set", scope=scope, key="k", value={"v": 1})
        deployment.call("state::update", scope=scope, key="k", ops=[{"increment": {"field": "v"}}])
        deployment.call("state::delete", scope=scope, key="k")
        deployment.call("state::delete", scope=scope, key="k")  # absent: fires nothing
        deployment.call("state::set", scope=scope, key=SENTINEL, value=0)
        events = recorded.wait_for_sentinel("scope")
    finally:
        handle.unregister()
    assert [e["event_type"] for e in sorted(events, key=lambda e: e["timestamp"])] == [
        "state:created",
        "state:updated",
        "state:deleted",
    ]
    by_type = {e["event_type"]: e for e in events}
    assert {
        k: by_type["state:created"][k] for k in ("type", "scope", "key", "old_value", "new_value")
    } == {"type": "state", "scope": scope, "key": "k", "old_value": None, "new_value": {"v": 1}}
    assert (by_type["state:updated"]["old_value"], by_type["state:updated"]["new_value"]) == (
        {"v": 1},
        {"v": 2},
    )
    assert (by_type["state:deleted"]["old_value"], by_type["state:deleted"]["new_value"]) == (
        {"v": 2},
        None,
    )
    assert len({e["event_id"] for e in events}) == 3
    for event in events:
        StateEvent.model_validate(event)  # handlers may parse it with the model


def test_scope_and_key_filters(setup: Any) -> None:
    deployment, recorded = setup
    scope = unique("filter")
    handle = register(deployment, "test::onAny", scope=scope, key="wanted")
    try:
        deployment.call("state::set", scope=scope, key="other", value=1)
        deployment.call("state::set", scope=scope + "x", key="wanted", value=1)
        # The one change that fires is also the sentinel: queued after the two that must not.
        deployment.call("state::set", scope=scope, key="wanted", value=2)
        events = recorded.wait_for_event(
            "any", lambda e: e["scope"] == scope and e["key"] == "wanted", "the wanted change"
        )
    finally:
        handle.unregister()
    assert [(e["scope"], e["key"], e["new_value"]) for e in events] == [(scope, "wanted", 2)]


def test_conditional_email_example(setup: Any) -> None:
    deployment, recorded = setup
    profile = {"name": "Alice", "email": "alice@example.com"}
    deployment.call("state::delete", scope="people", key="profile")
    deployment.call("state::set", scope="people", key="profile", value=profile)  # created: no
    deployment.call(
        "state::set", scope="people", key="profile", value={**profile, "name": "Al"}
    )  # same email: no
    deployment.call(
        "state::set", scope="people", key="profile", value={**profile, "email": "al@new.example"}
    )
    # The change that fires is also the sentinel: it goes through the same condition, gate
    # and handler, queued after the changes whose condition must say no.
    events = recorded.wait_for_event(
        "email",
        lambda e: (e["new_value"] or {}).get("email") == "al@new.example",
        "the email change",
    )
    assert len(events) == 1
    assert events[0]["new_value"]["email"] == "al@new.example"
    assert events[0]["old_value"]["email"] == "alice@example.com"


def test_run_time_registration_and_unregistration_from_a_client(setup: Any) -> None:
    deployment, recorded = setup
    scope = unique("runtime")
    deployment.call("state::set", scope=scope, key="before", value=0)
    handle = register(deployment, "test::onAny", scope=scope)
    again = register(deployment, "test::onAny", scope=scope)
    assert handle.id == again.id
    listed = [t for t in deployment.client.iii.list_triggers() if t["id"] == handle.id]
    assert listed == [
        {"id": handle.id, "type": "state", "function_id": "test::onAny", "config": {"scope": scope}}
    ]
    deployment.call("state::set", scope=scope, key="during", value=1)
    recorded.wait_for("any", 1)
    assert handle.unregister() is True
    assert handle.unregister() is False
    assert all(t["id"] != handle.id for t in deployment.client.iii.list_triggers())
    # Sentinel: the same handler through another trigger, which must still fire.
    sentinel = register(deployment, "test::onAny", scope=scope, key=SENTINEL)
    try:
        deployment.call("state::set", scope=scope, key="after", value=2)
        deployment.call("state::set", scope=scope, key=SENTINEL, value=3)
        events = recorded.wait_for_sentinel("any")
    finally:
        sentinel.unregister()
    assert [e["key"] for e in events] == ["during"]  # once, despite registering twice


def test_handler_reads_and_writes_state_while_handling(setup: Any) -> None:
    deployment, recorded = setup
    key = unique("k")
    deployment.call("state::set", scope="readback", key=key, value={"hello": "world"})
    events = recorded.wait_for("readback", 1)
    assert events[0]["read"] == {"hello": "world"}
    assert events[0]["echo"] == {"anything": "but false"}
    wait_until(
        lambda: deployment.call("state::get", scope="readback-results", key=key) is not None,
        10,
        "the handler's own write",
    )
    assert deployment.call("state::get", scope="readback-results", key=key) == {
        "seen": {"hello": "world"}
    }


def test_decorator_declares_triggers_at_import(setup: Any) -> None:
    deployment, recorded = setup
    deployment.call("state::set", scope="decorated", key="k", value=1)
    deployment.call("state::set", scope="decorated", key="not-k", value=1)
    deployment.call("state::set", scope="decorated-cond", key="any", value=1)
    assert [e["key"] for e in recorded.wait_for("decorated", 1)] == ["k"]
    assert [e["key"] for e in recorded.wait_for("decorated-cond", 1)] == ["any"]
    ids = {t["function_id"] for t in deployment.client.iii.list_triggers()}
    assert {
        "test::decorated",
        "test::decoratedCond",
        "state::onEmailChange",
        "test::readBack",
    } <= ids


def test_failing_condition_skips_the_handler_and_shows_as_failed_task(setup: Any) -> None:
    deployment, recorded = setup
    worker = deployment.workers[0]
    deployment.call("state::set", scope="broken", key=unique("k"), value=1)
    wait_until(
        lambda: "this condition always fails" in worker.log(),
        20,
        "the condition's failure in the log",
    )
    # Sentinel: a change whose condition passes, through the same condition -> gate ->
    # handler chain, queued after the failing condition.
    sentinel_key = unique(SENTINEL)
    deployment.call("state::set", scope="sentinel-cond", key=sentinel_key, value=1)
    recorded.wait_for_event(
        "sentinel-cond", lambda e: e["key"] == sentinel_key, "the sentinel's conditional handler"
    )
    assert recorded.events("never") == []
    assert (
        "conditions::broken" in worker.log() and "raised unexpected: RuntimeError" in worker.log()
    )


def test_failed_update_fires_nothing(setup: Any) -> None:
    deployment, recorded = setup
    scope = unique("failed")
    handle = register(deployment, "test::onAny", scope=scope)
    try:
        deployment.call("state::set", scope=scope, key="k", value={"n": "text"})
        with pytest.raises(UpdateOpError):
            deployment.call(
                "state::update", scope=scope, key="k", ops=[{"increment": {"field": "n"}}]
            )
        deployment.call("state::set", scope=scope, key=SENTINEL, value=0)
        events = recorded.wait_for_sentinel("any")
    finally:
        handle.unregister()
    assert [e["event_type"] for e in events] == ["state:created"]
