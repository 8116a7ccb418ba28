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

import redis
from helpers import Deployment, RedisServer, redis_state_yaml, wait_until


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
        redis_state_yaml(redis_server.url(9), f"chaos-{uuid.uuid4().hex[:6]}"),
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
    record_url = redis_server.url(58)
    record = redis.Redis.from_url(record_url)
    record.flushdb()
    deployment = Deployment(
        redis_server,
        tmp_path / "d",
        redis_state_yaml(redis_server.url(10), f"crash-{uuid.uuid4().hex[:6]}"),
    )
    marker = tmp_path / "crashed"
    try:
        worker = deployment.worker(
            "--concurrency",
            "1",
            includes=("trigger_handlers",),
            RECORD_REDIS_URL=record_url,
            STATE_TASKS_TEST_CRASH_AFTER_STORE="fragile",
            STATE_TASKS_TEST_CRASH_MARKER=str(marker),
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
        assert value == {"old_value": None, "new_value": {"n": 1}}
        wait_until(lambda: record.llen("record:scope") >= 1, 30, "the handler")
        time.sleep(0.5)
        events = [json.loads(raw) for raw in record.lrange("record:scope", 0, -1)]
        assert len(events) == 1
        assert events[0]["new_value"] == {"n": 1} and events[0]["event_id"] == result.id
        assert deployment.call("state::get", scope="fragile", key="k") == {"n": 1}
    finally:
        deployment.close()
