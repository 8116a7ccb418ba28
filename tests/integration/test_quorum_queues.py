"""RabbitMQ quorum queues (STATE_TASKS_QUEUE_TYPE=quorum): the queues are replicated ones,
and the state tasks, their retries and the triggers work on them, through a Bridge too."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from helpers import Deployment, RedisServer, adapter_yaml, own_db, redis_state_yaml, wait_until

from state_tasks.config import StateConfig, parse_config
from state_tasks.core.errors import AdapterError, ConfigError
from state_tasks.high_availability import queue_type_settings
from state_tasks.remote import RemoteDeployment

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None and not Path("/usr/sbin/rabbitmqctl").exists(),
    reason="needs rabbitmq-server (./scripts/test installs it)",
)


def queue_types(vhost: str) -> dict[str, str]:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run(
        [binary, "-q", "list_queues", "-p", vhost, "name", "type", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split("\t")[:2] for line in done.stdout.splitlines() if "\t" in line)


def test_the_task_queue_and_the_retry_delay_queues_are_quorum_queues(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a deployment on RabbitMQ with STATE_TASKS_QUEUE_TYPE=quorum
    deployment = Deployment(
        redis_server,
        tmp_path / "d",
        redis_state_yaml(redis_server.url(0), "quorum"),
        broker_kind="amqp",
        queue_type="quorum",
    )
    try:
        deployment.worker("--concurrency", "2")
        # When state calls go through it
        deployment.call("state::set", scope="q", key="k", value=1)
        assert deployment.call("state::get", scope="q", key="k") == 1
        # Then the task queue and the delayed-delivery queues of retries are quorum queues
        assert deployment.vhost is not None
        types = queue_types(deployment.vhost.name)
        assert types["celery"] == "quorum", types
        delayed = {name: kind for name, kind in types.items() if name.startswith("celery_delayed")}
        assert delayed and set(delayed.values()) == {"quorum"}, types
    finally:
        deployment.close()


def test_quorum_needs_rabbitmq() -> None:
    assert queue_type_settings("redis://h:6379/0", {}) == {}
    with pytest.raises(ConfigError, match="RabbitMQ"):
        queue_type_settings("redis://h:6379/0", {"STATE_TASKS_QUEUE_TYPE": "quorum"})
    with pytest.raises(ConfigError, match="'classic' or 'quorum'"):
        queue_type_settings("amqp://h//", {"STATE_TASKS_QUEUE_TYPE": "mirrored"})


def test_a_bridge_reaches_a_deployment_on_quorum_queues(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a remote deployment on quorum queues, and a local one whose adapter is a Bridge
    # to it with queue_type: quorum
    remote = Deployment(
        redis_server, tmp_path / "remote", None, broker_kind="amqp", queue_type="quorum"
    )
    bridge_yaml = adapter_yaml(
        "bridge",
        broker_url=remote.broker_url,
        result_backend=remote.backend_url,
        timeout_ms=10_000,
        queue_type="quorum",
    )
    local = Deployment(redis_server, tmp_path / "local", bridge_yaml)
    record_url = redis_server.url(own_db())
    record = redis.Redis.from_url(record_url)
    try:
        remote.worker()
        local.worker(includes=("trigger_handlers",), RECORD_REDIS_URL=record_url)
        handle = local.client.iii.register_trigger(
            {"type": "state", "function_id": "test::onScope", "config": {"scope": "qb"}}
        )
        # When a value is set and updated through the Bridge
        local.call("state::set", scope="qb", key="k", value={"n": 1})
        local.call("state::update", scope="qb", key="k", ops=[{"increment": {"field": "n"}}])
        # Then it lives in the remote, reads back through the Bridge, and the local
        # trigger fired for both changes
        assert remote.call("state::get", scope="qb", key="k") == {"n": 2}
        assert local.call("state::get", scope="qb", key="k") == {"n": 2}
        wait_until(lambda: record.llen("record:scope") >= 2, 20, "two local handler runs")
        handle.unregister()
        events = [json.loads(raw) for raw in record.lrange("record:scope", 0, -1)]
        assert sorted(e["event_type"] for e in events) == ["state:created", "state:updated"]
        # And the remote's queue, the one the Bridge sent to, is still a quorum queue
        assert remote.vhost is not None
        assert queue_types(remote.vhost.name)["celery"] == "quorum"
        # And a Bridge client left on classic queues gets an ADAPTER_ERROR that says why
        classic = RemoteDeployment(
            broker_url=remote.broker_url, result_backend=remote.backend_url, timeout_ms=3000
        )
        try:
            with pytest.raises(AdapterError) as info:
                classic.call("state::get", {"scope": "qb", "key": "k"})
        finally:
            classic.close()
        assert "PRECONDITION_FAILED" in info.value.message
        assert "queue_type must be the remote's STATE_TASKS_QUEUE_TYPE" in info.value.message
    finally:
        local.close()
        remote.close()


def bridge_config(**config: object) -> StateConfig:
    document = {
        "modules": [
            {
                "class": "modules::state::StateModule",
                "config": {"adapter": {"class": "bridge", "config": config}},
            }
        ]
    }
    return parse_config(document, "state.yaml")


def test_the_bridge_queue_type_is_checked_when_the_config_loads() -> None:
    amqp, results = "amqp://guest:pw@h:5672/v", "redis://h:6379/0"
    classic = bridge_config(broker_url=amqp, result_backend=results)
    assert classic.adapter_settings["queue_type"] == "classic"
    quorum = bridge_config(broker_url=amqp, result_backend=results, queue_type="quorum")
    assert quorum.adapter_settings["queue_type"] == "quorum"
    with pytest.raises(ConfigError) as info:
        bridge_config(broker_url=amqp, result_backend=results, queue_type="mirrored")
    assert "adapter.config.queue_type" in str(info.value)
    assert "'classic' or 'quorum'" in str(info.value) and "mirrored" in str(info.value)
    with pytest.raises(ConfigError) as info:
        bridge_config(
            broker_url="redis://:secret@h:6379/1", result_backend=results, queue_type="quorum"
        )
    assert "adapter.config.queue_type: quorum queues need a RabbitMQ broker_url" in str(info.value)
    assert "secret" not in str(info.value)
