"""Crashes and redeliveries: no lost or doubled change, no lost trigger (real workers)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from helpers import Deployment, RedisServer, own_db, plain, redis_state_yaml, wait_until

from state_tasks.high_availability import queue_type_settings


def recorded(record: redis.Redis, name: str) -> list[dict[str, Any]]:
    """The events the test handler ``name`` recorded, in the order it recorded them."""
    return [json.loads(raw) for raw in record.lrange(f"record:{name}", 0, -1)]


def children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in done.stdout.split()]


def test_increments_stay_exact_while_pool_children_are_killed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a prefork worker with two children on a Redis state
    deployment = Deployment(
        redis_server,
        tmp_path / "d",
        redis_state_yaml(redis_server.url(own_db()), f"chaos-{uuid.uuid4().hex[:6]}"),
    )
    try:
        worker = deployment.worker("--concurrency", "2")
        assert worker.process is not None
        app = deployment.client.app
        ops = [{"increment": {"field": "n", "by": 1}}]
        kills: list[int] = []
        stop = threading.Event()

        def chaos() -> None:
            rng = random.Random(7)
            while not stop.is_set() and len(kills) < 6:
                time.sleep(rng.uniform(0.3, 0.8))
                pool = children(worker.process.pid)  # type: ignore[union-attr]
                if pool:
                    victim = rng.choice(pool)
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)

        killer = threading.Thread(target=chaos)
        # When 2,000 increments go through while children are SIGKILLed several times
        killer.start()
        results = [
            app.send_task("state::update", kwargs={"scope": "chaos", "key": "n", "ops": ops})
            for _ in range(2000)
        ]
        values = [result.get(timeout=300, interval=0.01)["new_value"]["n"] for result in results]
        stop.set()
        killer.join()
        # Then every call succeeded, each counted once, and the total is exact
        assert len(kills) >= 3, kills
        assert sorted(values) == list(range(1, 2001))
        assert deployment.call("state::get", scope="chaos", key="n") == {"n": 2000}
        assert "WorkerLostError" in worker.log() or "exited with 'signal 9" in worker.log()
    finally:
        deployment.close()


def test_a_crash_between_storing_and_dispatching_still_runs_the_handler(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker that dies right after storing the first change of scope "fragile"
    record_url = redis_server.url(own_db())
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    deployment = Deployment(
        redis_server,
        tmp_path / "d",
        redis_state_yaml(redis_server.url(own_db()), f"crash-{uuid.uuid4().hex[:6]}"),
    )
    marker = tmp_path / "crashed"
    try:
        worker = deployment.worker(
            "--concurrency",
            "1",
            includes=("trigger_handlers", "crash_hook"),
            RECORD_REDIS_URL=record_url,
            CRASH_AFTER_STORE_SCOPE="fragile",
            CRASH_MARKER=str(marker),
        )
        deployment.client.iii.register_trigger(
            {"type": "state", "function_id": "test::onScope", "config": {"scope": "fragile"}}
        )
        # When a change is stored and the process dies before sending its trigger work
        result = deployment.client.app.send_task(
            "state::update",
            kwargs={"scope": "fragile", "key": "k", "ops": [{"increment": {"field": "n"}}]},
        )
        value = result.get(timeout=60)
        # Then the redelivered task (same id) returns the stored result without applying
        # it again, and sends the trigger work: the handler runs for that change
        assert marker.exists(), "the fault hook did not fire"
        assert "test fault hook: dying" in worker.log()
        assert plain(value) == {"old_value": None, "new_value": {"n": 1}}
        # Sentinel: a second change of the scope (no crash now), made after the first one's
        # answer. The worker's one child takes tasks in queue order, and every dispatch of
        # the first change (each run of its task) was queued before that answer, so once the
        # sentinel's handler has run, every handler run the first change caused has too.
        deployment.call("state::set", scope="fragile", key="sentinel", value=0)
        wait_until(
            lambda: any(e["key"] == "sentinel" for e in recorded(record, "scope")),
            30,
            "the sentinel's handler",
        )
        events = [e for e in recorded(record, "scope") if e["key"] != "sentinel"]
        assert len(events) == 1
        assert events[0]["new_value"] == {"n": 1} and events[0]["event_id"] == result.id
        assert deployment.call("state::get", scope="fragile", key="k") == {"n": 1}
    finally:
        deployment.close()


def test_a_broker_error_while_the_gate_sends_the_handler_is_retried(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a trigger with a condition, and a worker whose broker refuses the first message
    # the condition gate sends for its handler (the connection drops, as in a broker blip)
    record_url = redis_server.url(own_db())
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    marker = tmp_path / "refused"
    deployment = Deployment(redis_server, tmp_path / "d", None)
    try:
        worker = deployment.worker(
            "--concurrency",
            "1",
            includes=("trigger_handlers", "gate_fault_hook"),
            RECORD_REDIS_URL=record_url,
            GATE_FAULT_FUNCTION="test::onScope",
            CRASH_MARKER=str(marker),
        )
        deployment.client.iii.register_trigger(
            {
                "type": "state",
                "function_id": "test::onScope",
                "config": {"scope": "blip", "condition_function_id": "conditions::truthy"},
            }
        )
        # When a change passes the condition
        answer = deployment.client.app.send_task(
            "state::set", kwargs={"scope": "blip", "key": "k", "value": 1}
        )
        answer.get(timeout=30)
        # Then the gate is retried and the handler runs, once, with the change's event id
        wait_until(lambda: recorded(record, "scope"), 30, "the handler to run after the retry")
        assert marker.exists(), "the fault hook did not fire"
        log = worker.log()
        assert "test fault hook: the broker refuses" in log
        assert "triggers::gate" in log and "retry" in log.lower()
        # Sentinel: a later change's handler has run, so every run the first caused has too
        deployment.call("state::set", scope="blip", key="sentinel", value=0)
        wait_until(
            lambda: any(e["key"] == "sentinel" for e in recorded(record, "scope")),
            30,
            "the sentinel's handler",
        )
        events = [e for e in recorded(record, "scope") if e["key"] != "sentinel"]
        assert [(e["key"], e["new_value"], e["event_id"]) for e in events] == [("k", 1, answer.id)]
    finally:
        deployment.close()


def test_a_pickle_message_is_refused_not_executed(kv_deployment: Any, tmp_path: Path) -> None:
    # Given a message serialised with pickle whose loading would run code
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    sender = kv_deployment.client.app
    producer_app = type(sender)("pickler", broker=kv_deployment.broker_url, set_as_current=False)
    producer_app.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    producer_app.conf.update(queue_type_settings(kv_deployment.broker_url, kv_deployment.env))
    worker = kv_deployment.workers[0]
    before = worker.log()
    # When it is sent to the state worker as a state::set
    producer_app.send_task("state::set", kwargs={"scope": "pickle", "key": "k", "value": Exploit()})
    # Then the worker refuses its content, runs nothing, and stores nothing
    wait_until(
        lambda: (
            "ContentDisallowed" in worker.log()[len(before) :]
            or "Refusing to deserialize" in worker.log()[len(before) :]
        ),
        20,
        "the refusal",
    )
    assert not marker.exists()
    assert kv_deployment.call("state::get", scope="pickle", key="k") is None
    producer_app.close()


def test_state_redis_killed_and_restarted_mid_load_loses_and_doubles_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker whose state lives in a Redis that persists every write
    state_redis = RedisServer(tmp_path / "state-redis", persistent=True)
    deployment = Deployment(
        redis_server, tmp_path / "d", redis_state_yaml(state_redis.url(0), "outage")
    )
    try:
        worker = deployment.worker("--concurrency", "2")
        app = deployment.client.app
        ops = [{"increment": {"field": "n", "by": 1}}]
        results = []
        # When 400 increments are under way and the state Redis is killed and comes back
        for i in range(400):
            results.append(
                app.send_task("state::update", kwargs={"scope": "o", "key": "n", "ops": ops})
            )
            if i == 150:
                state_redis.stop(signal.SIGKILL)
                time.sleep(1.5)
                state_redis.start()
        values = [result.get(timeout=120, interval=0.01)["new_value"]["n"] for result in results]
        # Then every call succeeded (retried while Redis was away), each exactly once
        assert sorted(values) == list(range(1, 401))
        assert deployment.call("state::get", scope="o", key="n") == {"n": 400}
        assert worker.process is not None and worker.process.poll() is None
    finally:
        deployment.close()
        state_redis.stop()


def test_broker_redis_killed_and_restarted_the_same_worker_serves_again(tmp_path: Path) -> None:
    # Given a worker whose broker is a Redis of its own (results there too)
    broker = RedisServer(tmp_path / "broker", persistent=True)
    deployment = Deployment(broker, tmp_path / "d", None, broker_kind="redis")
    try:
        worker = deployment.worker()
        deployment.call("state::set", scope="b", key="k", value=1)
        # When the broker dies and comes back
        broker.stop(signal.SIGKILL)
        time.sleep(2)
        broker.start()
        # Then the same worker (no crash loop, no restart) serves again, state intact
        wait_until(lambda: worker.log().count("Connected to redis://") >= 2, 60, "the reconnect")
        assert plain(
            deployment.client.call(
                "state::update", timeout_s=60, scope="b", key="k", ops=[{"set": 2}]
            )
        ) == {"old_value": 1, "new_value": 2}
        assert worker.process is not None and worker.process.poll() is None
    finally:
        deployment.close()
        broker.stop()
