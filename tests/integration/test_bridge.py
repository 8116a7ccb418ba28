"""The Bridge: a local deployment whose state lives in a remote deployment (real workers)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Deployment, RedisServer, adapter_yaml, own_db, plain, wait_until

from state_tasks import AdapterError, UpdateOpError
from state_tasks.core.urls import redact_url


class Pair:
    def __init__(self, remote: Deployment, local: Deployment, record: redis.Redis) -> None:
        self.remote, self.local, self.record = remote, local, record


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # The remote deployment: its own password-protected Redis, a KvStore worker.
    remote_redis = RedisServer(tmp_path_factory.mktemp("remote-redis"), password="remote-pw")
    remote = Deployment(remote_redis, tmp_path_factory.mktemp("remote"), None)
    remote.worker()
    # The local deployment: a worker whose adapter is the Bridge, loading the test handlers.
    # In scripts/test's RabbitMQ pass the remote is on quorum queues: so is the Bridge.
    local_yaml = adapter_yaml(
        "modules::state::adapters::Bridge",
        broker_url=remote.broker_url,
        result_backend=remote.backend_url,
        timeout_ms=3000,
        queue_type=remote.queue_type,
    )
    local = Deployment(redis_server, tmp_path_factory.mktemp("local"), local_yaml)
    record_url = redis_server.url(own_db())
    local.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
    yield Pair(remote, local, redis.Redis.from_url(record_url))
    local.close()
    remote.close()
    remote_redis.stop()


def test_every_function_lands_in_the_remote(pair: Pair) -> None:
    local, remote = pair.local, pair.remote
    assert plain(local.call("state::set", scope="b", key="k", value={"n": 1})) == {
        "old_value": None,
        "new_value": {"n": 1},
    }
    assert remote.call("state::get", scope="b", key="k") == {"n": 1}
    assert plain(
        local.call(
            "state::update", scope="b", key="k", ops=[{"increment": {"field": "n", "by": 2**70}}]
        )
    ) == {"old_value": {"n": 1}, "new_value": {"n": 1 + 2**70}}
    assert remote.call("state::get", scope="b", key="k") == {"n": 1 + 2**70}
    remote.call("state::set", scope="b", key="k2", value=[])
    assert local.call("state::get", scope="b", key="k2") == []
    assert local.call("state::list", scope="b") == [{"n": 1 + 2**70}, []]
    assert "b" in local.call("state::list_groups")["groups"]
    assert local.call("state::delete", scope="b", key="k2") == []
    assert remote.call("state::get", scope="b", key="k2") is None


def test_a_remote_error_comes_back_with_its_code(pair: Pair) -> None:
    pair.local.call("state::set", scope="e", key="k", value={"name": "text"})
    with pytest.raises(UpdateOpError) as info:
        pair.local.call("state::update", scope="e", key="k", ops=[{"increment": {"field": "name"}}])
    assert info.value.code == "UPDATE_OP_ERROR"
    assert "field 'name' holds 'text'" in info.value.message
    assert pair.remote.call("state::get", scope="e", key="k") == {"name": "text"}


def test_local_triggers_fire_for_bridged_changes(pair: Pair) -> None:
    handle = pair.local.client.iii.register_trigger(
        {"type": "state", "function_id": "test::onScope", "config": {"scope": "bridged"}}
    )
    try:
        pair.local.call("state::set", scope="bridged", key="k", value=1)
        pair.local.call("state::set", scope="bridged", key="k", value=2)
        wait_until(lambda: pair.record.llen("record:scope") >= 2, 20, "two local handler runs")
    finally:
        handle.unregister()
    events = [json.loads(raw) for raw in pair.record.lrange("record:scope", 0, -1)]
    assert sorted((e["event_type"], e["old_value"], e["new_value"]) for e in events) == [
        ("state:created", None, 1),
        ("state:updated", 1, 2),
    ]


def test_a_remote_without_worker_fails_within_the_timeout(pair: Pair, tmp_path: Path) -> None:
    pair.remote.workers[0].stop()
    try:
        started = time.monotonic()
        with pytest.raises(AdapterError) as info:
            pair.local.client.call("state::set", timeout_s=30, scope="t", key="k", value="late")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0 + 2.0, elapsed
        assert info.value.code == "ADAPTER_ERROR"
        assert "did not answer within 3000 ms" in info.value.message
        assert redact_url(pair.remote.broker_url) in info.value.message
        assert "remote-pw" not in info.value.message
    finally:
        restarted = pair.remote.worker()
    # The set the caller gave up on expired: the remote that came back does not apply it
    # (a Redis broker hands it over and the worker discards it; RabbitMQ drops it itself).
    # The get is the sentinel: it is queued on the remote behind that set, and the remote's
    # one worker thread takes its tasks in queue order, so when the get answers, the set
    # has been discarded, or applied (then the get sees it and the log shows it).
    assert pair.local.call("state::get", scope="t", key="k") is None
    assert not re.search(r"Task state::set\[[^\]]+\] succeeded", restarted.log())


def test_an_unreachable_remote_broker_fails_within_the_timeout(
    deployment_factory: Any, redis_server: RedisServer
) -> None:
    dead = "redis://:secret-pw@127.0.0.1:1/0"
    deployment = deployment_factory(
        adapter_yaml(
            "modules::state::adapters::Bridge",
            broker_url=dead,
            result_backend=dead,
            timeout_ms=2000,
        )
    )
    deployment.worker()
    started = time.monotonic()
    with pytest.raises(AdapterError) as info:
        deployment.client.call("state::get", timeout_s=30, scope="s", key="k")
    assert time.monotonic() - started < 2.0 + 3.0
    assert "secret-pw" not in info.value.message
    assert "127.0.0.1:1" in info.value.message
