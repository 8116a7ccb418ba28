"""RedisAdapter through real prefork workers: exact under concurrency, shared triggers, outages."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Deployment, RedisServer, Worker, own_db, redis_state_yaml, wait_until

from state_tasks import AdapterError, UpdateOpError
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.ops import parse_ops
from state_tasks.core.urls import redact_url


def finished_all_received(workers: list[Worker], task_name: str) -> bool:
    """True when every ``task_name`` task the workers have taken has finished (their logs
    say ``Task <name>[<id>] received`` when a worker takes one, and ``succeeded``, ``raised
    ...`` or ``retry`` when it ends)."""
    pattern = re.compile(rf"Task {re.escape(task_name)}\[([^\]]+)\] (\w+)")
    received: set[str] = set()
    ended: set[str] = set()
    for worker in workers:
        for task_id, what in pattern.findall(worker.log()):
            (received if what == "received" else ended).add(task_id)
    return received <= ended


def test_a_thousand_concurrent_increments_end_at_exactly_a_thousand(redis_deployment: Any) -> None:
    # Given three worker processes (prefork -c 2, and a second worker) on one Redis state
    key = f"counter-{uuid.uuid4().hex[:8]}"
    app = redis_deployment.client.app
    # When 1,000 increments are in flight at once
    results = [
        app.send_task(
            "state::update",
            kwargs={
                "scope": "counters",
                "key": key,
                "ops": [{"increment": {"field": "n", "by": 1}}],
            },
        )
        for _ in range(1000)
    ]
    values = sorted(result.get(timeout=120)["new_value"]["n"] for result in results)
    # Then none was lost, and each saw a distinct count
    assert values == list(range(1, 1001))
    assert redis_deployment.call("state::get", scope="counters", key=key) == {"n": 1000}


def test_both_workers_serve_the_same_state(redis_deployment: Any) -> None:
    log_lines = [w.log() for w in redis_deployment.workers]
    scope = f"shared-{uuid.uuid4().hex[:8]}"
    for i in range(40):
        redis_deployment.call("state::set", scope=scope, key=f"k{i}", value=i)
    assert sorted(redis_deployment.call("state::list", scope=scope)) == list(range(40))
    served = [
        w.log().count("state::set") - before.count("state::set")
        for w, before in zip(redis_deployment.workers, log_lines, strict=True)
    ]
    assert all(count > 0 for count in served), served


def test_key_layout_is_one_hash_per_scope_with_a_groups_index(redis_server: RedisServer) -> None:
    db = own_db()
    adapter = RedisAdapter(redis_url=redis_server.url(db), key_prefix="layout")
    raw = redis.Redis.from_url(redis_server.url(db), decode_responses=True)
    raw.flushdb()
    adapter.set("a:b", "c", "1")
    adapter.set("a", "b:c", "2")
    adapter.set("{x}", "k", "3")
    # per scope: the values (s), the sorted key index for paging (k), the versions (v);
    # the change log (a stream of every scope's changes)
    assert sorted(raw.keys("*")) == sorted(
        [
            "layout:groups",
            "layout:log",
            *[
                f"layout:{kind}:{{{scope}}}"
                for kind in ("k", "s", "v")
                for scope in ("%7Bx%7D", "a:b", "a")
            ],
        ]
    )
    assert raw.type("layout:log") == "stream" and raw.xlen("layout:log") == 3
    assert raw.hgetall("layout:s:{a}") == {"b:c": "2"}
    assert raw.zrange("layout:k:{a}", 0, -1) == ["b:c"]
    assert raw.hgetall("layout:v:{a}") == {"": "1", "b:c": "1"}  # "": the scope's counter
    assert raw.zrange("layout:groups", 0, -1) == ["a", "a:b", "{x}"]
    adapter.delete("a", "b:c")
    # an emptied scope leaves its values and index, and keeps its counter (never reused)
    assert "layout:s:{a}" not in raw.keys("*") and "layout:k:{a}" not in raw.keys("*")
    assert raw.hgetall("layout:v:{a}") == {"": "1"}
    assert adapter.list_groups() == ["a:b", "{x}"]


def test_list_groups_reads_the_index_not_the_keyspace(redis_server: RedisServer) -> None:
    db = own_db()
    adapter = RedisAdapter(redis_url=redis_server.url(db), key_prefix="idx")
    raw = redis.Redis.from_url(redis_server.url(db), decode_responses=True)
    raw.flushdb()
    adapter.set("real", "k", "1")
    raw.hset("idx:s:{planted}", "k", "1")  # a hash no write of ours indexed
    assert adapter.list_groups() == ["real"]


def test_password_never_shows_in_errors() -> None:
    url = "redis://user:hunter2@127.0.0.1:1/0"
    assert redact_url(url) == "redis://user:***@127.0.0.1:1/0"
    adapter = RedisAdapter(redis_url=url, socket_timeout_s=0.5)
    with pytest.raises(AdapterError) as info:
        adapter.get("s", "k")
    assert info.value.code == "ADAPTER_ERROR"
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(adapter)
    assert "redis://user:***@127.0.0.1:1/0" in info.value.message


def test_state_redis_outage_gives_clear_errors_then_service_resumes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker whose state lives on a password-protected Redis of its own
    state_redis = RedisServer(tmp_path / "state-redis", password="s3cret-pw")
    deployment = Deployment(
        redis_server, tmp_path / "d", redis_state_yaml(state_redis.url(0), "outage")
    )
    try:
        worker = deployment.worker("--concurrency", "1")
        deployment.call("state::set", scope="o", key="k", value={"n": 1})
        # When the state Redis goes away
        state_redis.stop()
        started = time.monotonic()
        with pytest.raises(AdapterError) as info:
            deployment.client.call("state::get", timeout_s=60, scope="o", key="k")
        # Then callers get ADAPTER_ERROR after the retries, naming the server without its password
        assert time.monotonic() - started < 30
        assert info.value.code == "ADAPTER_ERROR"
        assert "cannot reach Redis at redis://:***@127.0.0.1" in info.value.message
        assert "s3cret-pw" not in worker.log()
        assert "Retry in" in worker.log()
        # And when it comes back, the same worker serves again
        state_redis.start()
        deployment.client.app.send_task(
            "state::set", kwargs={"scope": "o", "key": "k", "value": {"n": 2}}
        ).get(timeout=30)
        assert deployment.call("state::get", scope="o", key="k") == {"n": 2}
        assert worker.process is not None and worker.process.poll() is None
    finally:
        deployment.close()
        state_redis.stop()


def test_triggers_are_shared_and_each_handler_fires_once_per_change(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given two prefork workers (two children each) loading the same handler module
    record_url = redis_server.url(own_db())
    deployment = Deployment(
        redis_server,
        tmp_path / "d",
        redis_state_yaml(redis_server.url(own_db()), f"trg-{uuid.uuid4().hex[:6]}"),
    )
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    try:
        deployment.worker(
            "--concurrency", "2", includes=("trigger_handlers",), RECORD_REDIS_URL=record_url
        )
        deployment.worker(
            "--concurrency", "2", includes=("trigger_handlers",), RECORD_REDIS_URL=record_url
        )
        # Then every declared trigger is stored once
        listed = deployment.client.iii.list_triggers()
        ids = [t["id"] for t in listed]
        assert len(ids) == len(set(ids))
        assert sum(t["function_id"] == "test::decorated" for t in listed) == 1
        # When a client registers one more at run time and makes 30 changes
        handle = deployment.client.iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": "fanout"}}
        )
        for i in range(30):
            deployment.call("state::set", scope="fanout", key=f"k{i}", value=i)
        # Then the handler ran exactly once for each change, wherever it ran. Every handler
        # message of those changes was queued before the last set answered; a sentinel
        # change made after it queues its handler behind them all. The queue hands messages
        # out in order, so once the sentinel's handler has run, each earlier one has been
        # taken by some worker, and once every handler run the workers took has ended,
        # none of the 30 changes can cause another.
        deployment.call("state::set", scope="fanout", key="sentinel", value=-1)
        wait_until(
            lambda: any(
                json.loads(raw)["key"] == "sentinel" for raw in record.lrange("record:any", 0, -1)
            ),
            30,
            "the sentinel's handler",
        )
        wait_until(
            lambda: finished_all_received(deployment.workers, "test::onAny"),
            30,
            "every handler run the workers took to end",
        )
        events = [json.loads(raw) for raw in record.lrange("record:any", 0, -1)]
        events = [e for e in events if e["key"] != "sentinel"]
        assert sorted(e["new_value"] for e in events) == list(range(30))
        assert len({e["event_id"] for e in events}) == 30
        handle.unregister()
    finally:
        deployment.close()


def test_a_stale_remembered_value_never_decides_an_update(redis_server: RedisServer) -> None:
    # Given two processes' adapters on one state, the first remembering what it last wrote
    prefix = f"stale-{uuid.uuid4().hex[:6]}"
    url = redis_server.url(own_db())
    mine = RedisAdapter(redis_url=url, key_prefix=prefix)
    theirs = RedisAdapter(redis_url=url, key_prefix=prefix)
    increment = parse_ops([{"increment": {"field": "n", "by": 1}}])
    mine.set("s", "k", '{"n":"text"}')
    # When the other writes a value the ops accept, the ops are judged on that value
    theirs.set("s", "k", '{"n":5}')
    assert mine.update("s", "k", increment) == ('{"n":5}', '{"n":6}')
    # And when the other writes one they refuse, the update fails and writes nothing
    theirs.set("s", "k", '{"n":"words"}')
    with pytest.raises(UpdateOpError, match="holds 'words'"):
        mine.update("s", "k", increment)
    theirs.delete("s", "k")
    assert mine.update("s", "k", increment) == (None, '{"n":1}')
    assert theirs.get("s", "k") == '{"n":1}'
