"""Every byte the system keeps is bounded: results, and the embedded default's files.

Real workers on the session's redis-server (results in the deployment's Redis db), and a
worker on the embedded default (no broker configured: files under its data folder).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import HANDLERS, Deployment, RedisServer, Worker, own_db, plain, wait_until

from state_tasks import III, UpdateOpError, create_app
from state_tasks.embedded_broker import embedded_settings, remove_leftovers, transport_options
from state_tasks.settings import DEFAULT_RESULT_EXPIRES_S

#: The Redis db where the test handlers record what they received.
RECORD_DB = own_db()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def result_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match="celery-task-meta-*", count=1000))


def successes(worker: Worker, task: str) -> int:
    """How many runs of ``task`` the worker logged as succeeded (logged after the result,
    if any, was stored)."""
    return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] succeeded", worker.log()))


class Records:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        for key in self.client.scan_iter("record:*"):
            self.client.delete(key)

    def count(self, name: str) -> int:
        return int(self.client.llen(f"record:{name}"))


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, Worker]]:
    """A KvStore worker with the test handlers, results in its own Redis db, the default
    result expiry (whatever the developer's shell says)."""
    deployment = Deployment(redis_server, tmp_path_factory.mktemp("bounded"), None)
    worker = deployment.worker(
        includes=("trigger_handlers",),
        RECORD_REDIS_URL=redis_server.url(RECORD_DB),
        CELERY_RESULT_EXPIRES="",
    )
    yield deployment, worker
    deployment.close()


def test_handlers_conditions_gates_and_void_calls_store_no_result(
    deployment: tuple[Deployment, Worker], redis_server: RedisServer
) -> None:
    deployment_, worker = deployment
    iii = deployment_.client.iii
    results = redis.Redis.from_url(deployment_.backend_url)
    records = Records(redis_server.url(RECORD_DB))
    plain, conditional, skipped = unique("plain"), unique("cond"), unique("skipped")
    handles = [
        iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": plain}}
        ),
        iii.register_trigger(
            {
                "type": "state",
                "function_id": "test::onScope",
                "config": {"scope": conditional, "condition_function_id": "conditions::truthy"},
            }
        ),
        # A created key: emailChanged returns false, the gate skips the handler.
        iii.register_trigger(
            {
                "type": "state",
                "function_id": "test::neverRuns",
                "config": {"scope": skipped, "condition_function_id": "conditions::emailChanged"},
            }
        ),
    ]
    try:
        before = result_keys(results)
        handlers_before = successes(worker, "test::onAny"), successes(worker, "test::onScope")
        gates_before = successes(worker, "triggers::gate")
        void = {"type": "void"}
        for scope in (plain, conditional, skipped):
            iii.trigger(
                {
                    "function_id": "state::set",
                    "payload": {"scope": scope, "key": "k", "value": 1},
                    "action": void,
                }
            )
        # A registered function called void, and a condition that raises (declared by the
        # handler module on the scope "broken").
        iii.trigger({"function_id": "test::onAny", "payload": {"marker": 1}, "action": void})
        iii.trigger(
            {
                "function_id": "state::set",
                "payload": {"scope": "broken", "key": unique("k"), "value": 1},
                "action": void,
            }
        )
        # The sentinels: every handler ran, both gates and the failing condition finished.
        wait_until(
            lambda: (
                successes(worker, "test::onAny") >= handlers_before[0] + 2
                and successes(worker, "test::onScope") >= handlers_before[1] + 1
                and successes(worker, "triggers::gate") >= gates_before + 2
                and worker.log().count("this condition always fails") >= 1
                and records.count("any") >= 2
            ),
            30,
            "the handlers, the gates and the failing condition",
        )
        time.sleep(0.3)
        assert records.count("never") == 0
        new = result_keys(results) - before
        assert new == set(), f"results stored for trigger work or void calls: {sorted(new)}"
    finally:
        for handle in handles:
            handle.unregister()


def test_state_results_expire_within_the_documented_bound_and_iii_forgets_what_it_read(
    deployment: tuple[Deployment, Worker],
) -> None:
    deployment_, _ = deployment
    app, iii = deployment_.client.app, deployment_.client.iii
    results = redis.Redis.from_url(deployment_.backend_url)
    scope = unique("expiry")

    # A result read with .get() and not forgotten stays until it expires: within the bound.
    done = app.send_task("state::set", kwargs={"scope": scope, "key": "k", "value": {"n": 1}})
    assert plain(done.get(timeout=20)) == {"old_value": None, "new_value": {"n": 1}}
    failed = app.send_task("state::update", kwargs={"scope": scope, "key": "k", "ops": [{"x": 1}]})
    with pytest.raises(UpdateOpError):
        failed.get(timeout=20)
    for result in (done, failed):
        ttl = results.ttl(f"celery-task-meta-{result.id}")
        assert 0 < ttl <= DEFAULT_RESULT_EXPIRES_S, (result.id, ttl)
    assert DEFAULT_RESULT_EXPIRES_S <= 3600

    # iii.trigger removes every result it read, an error included.
    before = result_keys(results)
    assert iii.trigger({"function_id": "state::get", "payload": {"scope": scope, "key": "k"}}) == {
        "n": 1
    }
    iii.trigger({"function_id": "state::set", "payload": {"scope": scope, "key": "k", "value": 2}})
    with pytest.raises(UpdateOpError):
        iii.trigger(
            {
                "function_id": "state::update",
                "payload": {"scope": scope, "key": "k", "ops": [{"increment": {"field": "n"}}]},
            }
        )
    assert iii.trigger({"function_id": "conditions::truthy", "payload": {}}) == {
        "anything": "but false"
    }
    assert result_keys(results) - before == set()


def test_a_users_result_expiry_applies(deployment_factory: Any) -> None:
    deployment_ = deployment_factory()
    deployment_.worker(CELERY_RESULT_EXPIRES="120")
    results = redis.Redis.from_url(deployment_.backend_url)
    done = deployment_.client.app.send_task("state::get", kwargs={"scope": "s", "key": "k"})
    assert done.get(timeout=20) is None
    assert 0 < results.ttl(f"celery-task-meta-{done.id}") <= 120


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def test_the_embedded_default_keeps_its_data_folder_bounded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    worker = Worker(
        tmp_path,
        {
            "STATE_TASKS_DATA_DIR": str(data),
            "CELERY_RESULT_EXPIRES": "2",
            "STATE_TASKS_CLEANUP_INTERVAL": "1",
            "RECORD_REDIS_URL": redis_server.url(RECORD_DB),
        },
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
    ).start()
    app = create_app("embedded-client", **embedded_settings(str(data)))
    iii = III(app, timeout_ms=30_000)
    records = Records(redis_server.url(RECORD_DB))
    scope = unique("embedded")
    calls = 300
    try:
        iii.register_trigger(
            {"type": "state", "function_id": "test::onAny", "config": {"scope": scope}}
        )
        iii.register_trigger(
            {
                "type": "state",
                "function_id": "test::onScope",
                "config": {
                    "scope": scope,
                    "key": "k0",
                    "condition_function_id": "conditions::truthy",
                },
            }
        )
        unread = []
        for i in range(calls):
            payload = {"scope": scope, "key": f"k{i % 10}", "value": {"i": i}}
            if i % 3 == 0:  # waited for: read, then forgotten
                iii.trigger({"function_id": "state::set", "payload": payload})
            elif i % 3 == 1:  # void: no result at all
                iii.trigger(
                    {"function_id": "state::set", "payload": payload, "action": {"type": "void"}}
                )
            else:  # a result nobody reads: kept until it expires
                unread.append(app.send_task("state::set", kwargs=payload))
        wait_until(
            lambda: records.count("any") >= calls and records.count("scope") >= calls // 10,
            120,
            "every handler",
        )
        # An unread result is still there right after the calls (not removed early) ...
        assert unread[-1].get(timeout=10)["new_value"] == {"i": calls - 1}
        # ... and once results expired and the cleanup ran, none is left, and the folder
        # holds a few files (the broker's lock and exchange tables), whatever the number of
        # calls.
        wait_until(lambda: not os.listdir(data / "results"), 30, "the expired results removed")
        assert count_files(data) <= 10, sorted(str(p) for p in data.rglob("*") if p.is_file())
    finally:
        worker.stop()
        app.close()
    assert "Traceback" not in worker.log()


def test_broker_leftovers_are_removed_and_waiting_tasks_kept(tmp_path: Path) -> None:
    options = transport_options(str(tmp_path))
    queue, processing = Path(options["data_folder_in"]), Path(options["processing_folder"])
    queue.mkdir(parents=True)
    processing.mkdir(parents=True)
    kept = [
        queue / "00000000000000000001_a.celery.msg",  # a task waiting for a worker
        queue / "00000000000000000002_b.w1@host.celery.pidbox.msg",  # recent: kept
    ]
    removed = [
        processing / "00000000000000000003_c.celery.msg",  # taken by a consumer that died
        queue / "partial-d.tmp",  # a producer died mid-write
        queue / "00000000000000000004_e.w9@gone.celery.pidbox.msg",  # a gone worker's commands
        queue / "00000000000000000005_f.2c0e.reply.celery.pidbox.msg",  # a gone client's reply
        queue / "00000000000000000006_g.celeryev.4b1e.msg",  # a gone monitor's events
    ]
    old = time.time() - 3600
    for path in kept + removed:
        path.write_text("{}")
        if path != kept[1]:
            os.utime(path, (old, old))
    assert remove_leftovers(options, 60) == len(removed)
    assert sorted(p.name for p in queue.iterdir()) == sorted(p.name for p in kept)
    assert list(processing.iterdir()) == []
