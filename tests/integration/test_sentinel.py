"""Redis behind Sentinel: state, broker and results, and a failover under load.

One master, one replica and three sentinels on loopback (``RedisSentinelGroup``); every
link of the deployment finds the master through the sentinels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import (
    HANDLERS,
    OUR_VARIABLES,
    REPO,
    RedisServer,
    Worker,
    adapter_yaml,
    own_db,
    wait_until,
)

from state_tasks import III, ConfigError, create_app
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisSentinelGroup
from state_tasks.core.errors import AdapterError, AdapterUnavailable
from state_tasks.core.ops import parse_ops
from state_tasks.core.service import StateService

pytestmark = pytest.mark.own_broker

CLI = os.path.join(os.path.dirname(sys.executable), "state-tasks")

INCREMENT = [{"increment": {"field": "n", "by": 1}}]


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelGroup]:
    group = RedisSentinelGroup(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.stop()


def sentinel_adapter(group: RedisSentinelGroup, **config: Any) -> RedisAdapter:
    prefix = f"sentinel-{uuid.uuid4().hex[:8]}"
    return RedisAdapter(
        redis_url=group.sentinel_url(), master_name=group.master_name, key_prefix=prefix, **config
    )


def failover_and_wait(group: RedisSentinelGroup) -> int:
    """``SENTINEL FAILOVER``; returns the new master's port once the sentinels name it."""
    before = group.master_port_now()
    group.failover()
    wait_until(lambda: group.master_port_now() != before, 30, "the sentinels to name a new master")
    return group.master_port_now()


def demoted(group: RedisSentinelGroup, port: int) -> bool:
    """True once the old master ``port`` serves as a replica (sentinels reconfigure it)."""
    return redis.Redis(port=port).info("replication").get("role") == "slave"


def replicated(port: int) -> bool:
    """True once the master ``port`` has a replica online (``WAIT 1`` can be met)."""
    info = redis.Redis(port=port).info("replication")
    return info.get("connected_slaves", 0) >= 1 and info["slave0"]["state"] == "online"


class SentinelDeployment:
    """Workers and a client whose state sits behind the sentinels, and their broker and
    results too, or on ``celery_redis`` (a plain Redis) when given."""

    def __init__(
        self,
        group: RedisSentinelGroup,
        workdir: Path,
        record_url: str,
        celery_redis: RedisServer | None = None,
    ) -> None:
        self.group = group
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        sentinels = group.sentinel_url()
        if celery_redis is None:
            self.broker_url = f"{sentinels}/{own_db()}"
            self.backend_url = f"{sentinels}/{own_db()}"
        else:
            self.broker_url = celery_redis.url(own_db())
            self.backend_url = celery_redis.url(own_db())
        state_db = own_db()
        config = workdir / "state.yaml"
        config.write_text(
            adapter_yaml(
                "modules::state::adapters::RedisAdapter",
                redis_url=f"{sentinels}/{state_db}",
                key_prefix=f"s{uuid.uuid4().hex[:6]}",
                wait_replicas=1,
            )
        )
        self.env = {
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.backend_url,
            "STATE_TASKS_SENTINEL_MASTER": group.master_name,  # state.yaml names none
            "STATE_CONFIG": str(config),
            "RECORD_REDIS_URL": record_url,
            # a message stranded by the failover comes back within this, not an hour
            "CELERY_VISIBILITY_TIMEOUT": "10",
        }
        options = {"master_name": group.master_name} if celery_redis is None else {}
        self.app = create_app(
            f"sentinel-client-{uuid.uuid4().hex[:6]}",
            broker_url=self.broker_url,
            result_backend=self.backend_url,
            broker_transport_options={**options, "visibility_timeout": 10},
            result_backend_transport_options=options,
            result_backend_always_retry=True,
            result_backend_max_retries=20,
        )
        self.iii = III(self.app, timeout_ms=30_000)
        self.workers: list[Worker] = []

    def worker(self, *args: str) -> Worker:
        worker = Worker(
            self.workdir,
            self.env,
            args,
            ("trigger_handlers",),
            pythonpath=[HANDLERS, REPO / "examples"],
        )
        self.workers.append(worker)
        return worker.start()

    def call(self, function_id: str, **payload: Any) -> Any:
        return self.app.send_task(function_id, kwargs=payload).get(timeout=60, interval=0.02)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.app.close()


def collect(app: Any, results: list[Any], timeout_s: float = 60) -> dict[str, Any]:
    """The tasks' results by task id, read from the backend with GET (sentinel-aware,
    reconnecting) rather than through the client's pub/sub subscription, which a failover
    cuts; a result that does not come within ``timeout_s`` is left out."""
    answers: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(results) and time.monotonic() < deadline:
        for result in results:
            if result.id not in answers:
                meta = app.backend.get_task_meta(result.id)
                if meta["status"] == "SUCCESS":
                    answers[result.id] = meta["result"]
                elif meta["status"] == "FAILURE":
                    raise AssertionError(f"task {result.id} failed: {meta['result']!r}")
        time.sleep(0.2)
    return answers


def recorded(record: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in record.lrange(f"record:{name}", 0, -1)]


# -- the adapter ------------------------------------------------------------------------


def test_the_adapter_contract_holds_behind_sentinel(group: RedisSentinelGroup) -> None:
    adapter = sentinel_adapter(group)
    try:
        assert adapter.set("users", "u1", '{"name": "Alice"}', op_id="op-1") is None
        # a repeat of the same operation changes nothing
        assert adapter.set("users", "u1", '{"name": "Bob"}', op_id="op-1") is None
        assert adapter.get("users", "u1") == '{"name": "Alice"}'
        assert adapter.update("counters", "c", parse_ops(INCREMENT)) == (None, '{"n":1}')
        assert adapter.update("counters", "c", parse_ops(INCREMENT)) == ('{"n":1}', '{"n":2}')
        assert adapter.list("users") == ['{"name": "Alice"}']
        assert adapter.list_groups() == ["counters", "users"]
        assert adapter.delete("users", "u1") == '{"name": "Alice"}'
        assert adapter.list_groups() == ["counters"]
        version = adapter.triggers_version()
        assert adapter.triggers_put("t1", '{"function_id": "f"}') is True
        assert adapter.triggers_load() == {"t1": '{"function_id": "f"}'}
        assert adapter.triggers_version() > version
        # it talks to the master the sentinels name
        _host, port = adapter.client.connection_pool.get_master_address()  # type: ignore[attr-defined]
        assert port == group.master_port_now()
    finally:
        adapter.close()


def test_a_sentinel_url_needs_a_master_name_and_no_password_is_shown(
    group: RedisSentinelGroup,
) -> None:
    url = group.sentinel_url().replace("sentinel://", "sentinel://:s3cret@", 1)
    with pytest.raises(ConfigError, match="master_name") as refused:
        RedisAdapter(redis_url=url)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ConfigError, match="sentinel://"):
        RedisAdapter(redis_url="redis://127.0.0.1:1/0", master_name="mymaster")
    # an unknown master name: a clear error naming the sentinels and the name, no password
    adapter = RedisAdapter(
        redis_url=url, master_name="nobody", key_prefix="x", socket_timeout_s=0.5
    )
    with pytest.raises(AdapterError, match="nobody") as failed:
        adapter.get("s", "k")
    assert "s3cret" not in str(failed.value) and "sentinel://" in str(failed.value)


def retrying(call: Any, attempts: int = 40) -> Any:
    """What a state task does on AdapterUnavailable: try again (here without the backoff)."""
    for attempt in range(attempts):
        try:
            return call()
        except AdapterUnavailable:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)


def test_with_wait_replicas_no_acknowledged_write_is_lost_in_a_failover(
    group: RedisSentinelGroup,
) -> None:
    # Given an adapter that waits for one replica after each write
    adapter = sentinel_adapter(group, wait_replicas=1, wait_timeout_ms=500)
    try:
        for _ in range(50):
            adapter.update("c", "n", parse_ops(INCREMENT))
        # When the master is failed over and the same adapter (no restart) goes on writing,
        # through the seconds in which the old master still takes writes
        old_master = group.master_port_now()
        new_master = failover_and_wait(group)
        acknowledged = 50
        deadline = time.monotonic() + 30

        def increment() -> None:  # one operation id per increment, kept by its retries
            op_id = uuid.uuid4().hex
            retrying(lambda: adapter.update("c", "n", parse_ops(INCREMENT), op_id))

        while not demoted(group, old_master) and time.monotonic() < deadline:
            increment()
            acknowledged += 1
        for _ in range(20):
            increment()
        acknowledged += 20
        # Then every acknowledged increment is there, on the new master
        assert demoted(group, old_master)
        assert adapter.get("c", "n") == json.dumps({"n": acknowledged}, separators=(",", ":"))
        assert adapter.client.connection_pool.get_master_address()[1] == new_master  # type: ignore[attr-defined]
        # ... and so is its change log entry, in order, once
        assert logged_counts(StateService(adapter), "c") == list(range(1, acknowledged + 1))
    finally:
        adapter.close()


def logged_counts(service: StateService, scope: str) -> list[int]:
    """The counts ``{"n": ...}`` of the scope's change log, oldest first."""
    counts: list[int] = []
    payload: dict[str, Any] = {"scope": scope, "limit": 1000}
    while True:
        page = service.call("state::changes", payload)
        counts += [change["new_value"]["n"] for change in page["changes"]]
        if not page["changes"]:
            return counts
        payload["after"] = page["cursor"]


def test_wait_replicas_not_reached_is_a_clear_retryable_error(redis_server: RedisServer) -> None:
    adapter = RedisAdapter(
        redis_url=redis_server.url(own_db()), key_prefix="w", wait_replicas=1, wait_timeout_ms=50
    )
    try:
        with pytest.raises(AdapterUnavailable, match="0 of the 1 replicas") as failed:
            adapter.set("s", "k", "1")
        assert "127.0.0.1" in str(failed.value)
    finally:
        adapter.close()


# -- workers: state, broker and results behind the sentinels ----------------------------


def opened(
    group: RedisSentinelGroup,
    redis_server: RedisServer,
    tmp_path: Path,
    celery_redis: RedisServer | None = None,
) -> Iterator[tuple[SentinelDeployment, redis.Redis]]:
    """A deployment (see :class:`SentinelDeployment`) and its handlers' record, closed after."""
    record_url = redis_server.url(own_db())
    deployment = SentinelDeployment(group, tmp_path / "d", record_url, celery_redis)
    try:
        yield deployment, redis.Redis.from_url(record_url)
    finally:
        deployment.close()


@pytest.fixture
def deployment(
    group: RedisSentinelGroup, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[SentinelDeployment, redis.Redis]]:
    """State, broker and results behind the sentinels."""
    yield from opened(group, redis_server, tmp_path)


def test_a_worker_serves_state_and_triggers_behind_sentinel(
    deployment: tuple[SentinelDeployment, redis.Redis],
) -> None:
    sentinel_deployment, record = deployment
    worker = sentinel_deployment.worker("--concurrency", "2")
    assert "sentinel://" in worker.log()
    handle = sentinel_deployment.iii.register_trigger(
        {"type": "state", "function_id": "test::onAny", "config": {"scope": "profiles"}}
    )
    try:
        answer = sentinel_deployment.call(
            "state::set", scope="profiles", key="p1", value={"email": "a@example.com"}
        )
        assert (answer["old_value"], answer["new_value"]) == (None, {"email": "a@example.com"})
        assert sentinel_deployment.call("state::get", scope="profiles", key="p1") == {
            "email": "a@example.com"
        }
        wait_until(lambda: recorded(record, "any"), 20, "the handler")
        event = recorded(record, "any")[0]
        assert (event["event_type"], event["key"]) == ("state:created", "p1")
    finally:
        handle.unregister()


@pytest.fixture
def state_deployment(
    group: RedisSentinelGroup, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[SentinelDeployment, redis.Redis]]:
    """State behind the sentinels; the broker and results on the plain session Redis."""
    yield from opened(group, redis_server, tmp_path, celery_redis=redis_server)


def test_sentinel_failover_mid_load_loses_and_doubles_nothing(
    state_deployment: tuple[SentinelDeployment, redis.Redis],
) -> None:
    # Given a worker whose state is behind the sentinels (wait_replicas: 1), and a trigger
    # on the scope. (Its broker and results are on another Redis: kombu sends no WAIT, so
    # a broker behind the sentinels can lose a task message the old master took in its
    # last seconds, a retry's included; see docs/high-availability.md and the next test)
    sentinel_deployment, record = state_deployment
    group = sentinel_deployment.group
    worker = sentinel_deployment.worker("--concurrency", "2")
    handle = sentinel_deployment.iii.register_trigger(
        {"type": "state", "function_id": "test::onAny", "config": {"scope": "load"}}
    )
    app = sentinel_deployment.app

    def increments(count: int) -> list[Any]:
        return [
            app.send_task("state::update", kwargs={"scope": "load", "key": "n", "ops": INCREMENT})
            for _ in range(count)
        ]

    try:
        # When 1,000 increments are under way and an operator fails the master over
        results = increments(1000)
        results[50].get(timeout=60, interval=0.02)
        old_master = group.master_port_now()
        new_master = failover_and_wait(group)
        results += increments(200)
        answers = collect(app, results, timeout_s=120)
        # Then every call is answered, and every increment was applied exactly once
        assert new_master != old_master
        assert len(answers) == 1200
        assert sentinel_deployment.call("state::get", scope="load", key="n") == {"n": 1200}
        counted = [a["new_value"]["n"] for a in answers.values() if not a.get("replayed")]
        assert len(set(counted)) == len(counted)
        # (a repeat answers replayed: a write that reached the replica but whose WAIT timed
        # out is retried under the same operation id, and changes nothing)
        assert len(counted) > 1100
        # the same worker went on (no restart), and the trigger fired for every change
        assert worker.process is not None and worker.process.poll() is None
        wait_until(
            lambda: {e["new_value"]["n"] for e in recorded(record, "any")} >= set(range(1, 1201)),
            60,
            "a handler run for each of the 1,200 changes",
        )
        # and the change log holds each of them once, in the order applied
        counts: list[int] = []
        payload: dict[str, Any] = {"scope": "load", "limit": 1000}
        while True:
            page = sentinel_deployment.call("state::changes", **payload)
            counts += [change["new_value"]["n"] for change in page["changes"]]
            if not page["changes"]:
                break
            payload["after"] = page["cursor"]
        assert counts == list(range(1, 1201))
    finally:
        handle.unregister()


def test_a_worker_with_everything_behind_sentinel_goes_on_after_a_failover(
    deployment: tuple[SentinelDeployment, redis.Redis],
) -> None:
    # Given a worker whose state, broker and results are all behind the sentinels, and
    # 100 increments done
    sentinel_deployment, record = deployment
    group = sentinel_deployment.group
    worker = sentinel_deployment.worker("--concurrency", "2")
    handle = sentinel_deployment.iii.register_trigger(
        {"type": "state", "function_id": "test::onAny", "config": {"scope": "after"}}
    )
    app = sentinel_deployment.app

    def increments(count: int) -> dict[str, Any]:
        sent = [
            app.send_task("state::update", kwargs={"scope": "after", "key": "n", "ops": INCREMENT})
            for _ in range(count)
        ]
        answers = collect(app, sent, timeout_s=120)
        assert len(answers) == count
        return answers

    try:
        increments(100)
        # When an operator fails the master over, and the old master is a replica again
        old_master = group.master_port_now()
        new_master = failover_and_wait(group)
        wait_until(lambda: demoted(group, old_master), 60, "the old master to be a replica")
        wait_until(lambda: replicated(new_master), 60, "the new master to have its replica")
        # Then the same worker (no restart) answers 200 more, each applied once, on the new
        # master, and the trigger fires for each of them
        answers = increments(200)
        assert new_master != old_master
        assert sorted(a["new_value"]["n"] for a in answers.values()) == list(range(101, 301))
        assert sentinel_deployment.call("state::get", scope="after", key="n") == {"n": 300}
        assert worker.process is not None and worker.process.poll() is None
        wait_until(
            lambda: {e["new_value"]["n"] for e in recorded(record, "any")} >= set(range(101, 301)),
            60,
            "a handler run for each change after the failover",
        )
    finally:
        handle.unregister()


def test_an_unknown_master_name_is_named_by_the_cli_the_adapter_and_a_starting_worker(
    group: RedisSentinelGroup, tmp_path: Path
) -> None:
    # Given sentinels that watch no master of the configured name
    url = ";".join(f"{part}/1" for part in group.sentinel_url().split(";"))
    env = {
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "STATE_TASKS_SENTINEL_MASTER": "nosuchmaster",
    }
    cause = "No master found for 'nosuchmaster'; no sentinel knows a master of that name?"
    # When the CLI calls, Then it fails within seconds naming the cause
    ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "--timeout", "5", "get", "s", "k"],
        env=ambient | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3 and cause in done.stderr, done.stderr
    assert time.monotonic() - started <= 10
    # And the adapter says the same at once
    adapter = RedisAdapter(redis_url=url, master_name="nosuchmaster")
    with pytest.raises(AdapterUnavailable, match="no sentinel knows a master of that name"):
        adapter.get("s", "k")
    adapter.close()
    # And a worker tries for STATE_TASKS_STARTUP_TIMEOUT seconds, then exits with it
    started = time.monotonic()
    code, log = Worker(tmp_path / "w", env | {"STATE_TASKS_STARTUP_TIMEOUT": "2"}).run_to_exit()
    assert code != 0 and "state_tasks cannot start: [UNREACHABLE] cannot reach the broker" in log
    assert cause in log and "ready." not in log
    assert time.monotonic() - started <= 20
