"""Keys that expire, through real workers: several Redis workers fire each expiry exactly
once; an expiry due while no worker runs fires when one starts; a Redis worker killed
between removing an expired key and sending its event does not lose the event; the file
store keeps expiries across a restart."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from helpers import Deployment, RedisServer, adapter_yaml, own_db, redis_state_yaml
from test_triggers import Recorded

from state_tasks.core.service import DEFAULT_EXPIRY_RESEND_AFTER_MS, expiry_event_id


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def on_scope(deployment: Deployment, scope: str) -> None:
    deployment.client.iii.register_trigger(
        {"type": "state", "function_id": "test::onScope", "config": {"scope": scope}}
    )


def expired_events(recorded: Recorded, scope: str) -> list[dict[str, Any]]:
    return [
        e
        for e in recorded.events("scope")
        if e["scope"] == scope and e["event_type"] == "state:deleted"
    ]


def test_several_redis_workers_fire_each_expiry_exactly_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given three workers sharing one Redis, each running a sweeper
    state_yaml = redis_state_yaml(redis_server.url(own_db()), "expiry")
    deployment = Deployment(redis_server, tmp_path, state_yaml)
    record_url = redis_server.url(own_db())
    try:
        for _ in range(3):
            deployment.worker(
                "--concurrency", "1", includes=("trigger_handlers",), RECORD_REDIS_URL=record_url
            )
        recorded = Recorded(record_url)
        scope = unique("ttl")
        on_scope(deployment, scope)
        # When 120 keys are set with ttls spread over 1.2 s
        app = deployment.client.app
        dues: dict[str, float] = {}
        pending = []
        for i in range(120):
            ttl_ms = 300 + 10 * i
            dues[f"k{i}"] = time.time() + ttl_ms / 1000
            kwargs = {"scope": scope, "key": f"k{i}", "value": i, "ttl_ms": ttl_ms}
            pending.append(app.send_task("state::set", kwargs=kwargs))
        versions = {f"k{i}": result.get(timeout=30)["version"] for i, result in enumerate(pending)}
        # Then each fires one state:deleted with reason "expired", soon after its due time
        deadline = time.monotonic() + 30
        while len(expired_events(recorded, scope)) < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a double fire would show by now
        events = expired_events(recorded, scope)
        assert Counter(e["key"] for e in events) == Counter(dues.keys())
        assert all(e["reason"] == "expired" and e["new_value"] is None for e in events)
        assert {e["key"]: e["version"] for e in events} == versions
        lags = sorted(
            datetime.fromisoformat(e["timestamp"]).timestamp() - dues[e["key"]] for e in events
        )
        assert lags[-1] < 1.5, lags[-5:]
        assert deployment.call("state::list", scope=scope) == []
        assert scope not in deployment.call("state::list_groups")["groups"]
    finally:
        deployment.close()


def test_an_expiry_due_while_no_worker_runs_fires_when_one_starts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    state_yaml = redis_state_yaml(redis_server.url(own_db()), "expiry")
    deployment = Deployment(redis_server, tmp_path, state_yaml)
    record_url = redis_server.url(own_db())
    try:
        worker = deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        recorded = Recorded(record_url)
        scope = unique("offline")
        on_scope(deployment, scope)
        version = deployment.call("state::set", scope=scope, key="k", value="v", ttl_ms=1500)[
            "version"
        ]
        worker.stop()
        time.sleep(2.0)  # due while no worker runs: hidden, not yet fired
        assert expired_events(recorded, scope) == []
        deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        recorded.wait_for_event(
            "scope",
            lambda e: e["scope"] == scope and e["event_type"] == "state:deleted",
            "the expiry after the restart",
        )
        # (the set's own created event may be handled after it: its handler's message can
        # outlive the first worker)
        (event,) = expired_events(recorded, scope)
        assert event["reason"] == "expired" and event["version"] == version
        assert event["old_value"] == "v"
    finally:
        deployment.close()


def test_a_redis_worker_killed_before_sending_an_expiry_does_not_lose_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker that dies (SIGKILL) after its sweep removed an expired key and before
    # the key's event is sent
    state_url = redis_server.url(own_db())
    prefix = unique("killed")
    deployment = Deployment(redis_server, tmp_path, redis_state_yaml(state_url, prefix))
    record_url = redis_server.url(own_db())
    marker = tmp_path / "crashed"
    scope = unique("fragile")
    try:
        worker = deployment.worker(
            "--pool",
            "solo",
            includes=("trigger_handlers", "expiry_crash_hook"),
            RECORD_REDIS_URL=record_url,
            CRASH_EXPIRY_SCOPE=scope,
            CRASH_MARKER=str(marker),
        )
        recorded = Recorded(record_url)
        on_scope(deployment, scope)
        version = deployment.call("state::set", scope=scope, key="k", value="v", ttl_ms=300)[
            "version"
        ]
        deadline = time.monotonic() + 20
        while worker.process is not None and worker.process.poll() is None:
            assert time.monotonic() < deadline, "the worker did not die at its expiry"
            time.sleep(0.05)
        killed_at = time.monotonic()
        assert worker.stop() == -signal.SIGKILL
        assert marker.exists() and "SIGKILL between removing" in worker.log()
        # The key is gone, its event unsent, and its expiry pending in Redis
        state = redis.Redis.from_url(state_url, decode_responses=True)
        assert state.hget(f"{prefix}:s:{{{scope}}}", "k") is None
        assert state.hgetall(f"{prefix}:expiring") == {f"{version}:{len(scope)}:{scope}k": '"v"'}
        assert expired_events(recorded, scope) == []
        # When a worker starts again: its sweep sends the event once the resend delay passed
        deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        resend_s = DEFAULT_EXPIRY_RESEND_AFTER_MS / 1000
        recorded.wait_for_event(
            "scope",
            lambda e: e["scope"] == scope and e["event_type"] == "state:deleted",
            "the expiry event after the restart",
            timeout_s=resend_s + 20,
        )
        assert time.monotonic() - killed_at > resend_s - 2  # not before the delay
        # The pending record is dropped once sent: from then on nothing can send it again
        wait_s = time.monotonic() + 5
        while state.exists(f"{prefix}:expiring", f"{prefix}:expiring:at"):
            assert time.monotonic() < wait_s, "the pending expiry was not dropped"
            time.sleep(0.05)
        # and it was sent once (the handler ran on the event sent before the drop)
        (event,) = expired_events(recorded, scope)
        assert event["reason"] == "expired" and event["key"] == "k"
        assert event["old_value"] == "v" and event["version"] == version
        # the id the dead worker would have sent (derived from scope, key and version)
        assert event["event_id"] == expiry_event_id(scope, "k", version)
    finally:
        deployment.close()


def test_the_file_store_keeps_expiries_across_a_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    state_yaml = adapter_yaml(
        "modules::state::adapters::KvStore", store_method="file_based", file_path=str(store)
    )
    deployment = Deployment(redis_server, tmp_path / "deployment", state_yaml)
    record_url = redis_server.url(own_db())
    try:
        worker = deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        recorded = Recorded(record_url)
        scope = unique("file")
        on_scope(deployment, scope)
        deployment.call("state::set", scope=scope, key="soon", value=1, ttl_ms=1500)
        deployment.call("state::set", scope=scope, key="later", value=2, ttl_ms=600_000)
        worker.stop()
        time.sleep(2.0)
        deployment.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        later = deployment.call("state::get", scope=scope, key="later", with_version=True)
        assert later["value"] == 2 and 590_000 < later["expires_in_ms"] <= 600_000
        recorded.wait_for_event(
            "scope",
            lambda e: e["key"] == "soon" and e["event_type"] == "state:deleted",
            "the expiry after the restart",
        )
        assert [e["reason"] for e in expired_events(recorded, scope)] == ["expired"]
        assert deployment.call("state::get", scope=scope, key="soon") is None
    finally:
        deployment.close()
