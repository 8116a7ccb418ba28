"""RabbitMQ quorum queues (STATE_TASKS_QUEUE_TYPE=quorum): the queues are replicated ones,
and the state tasks, their retries and the triggers work on them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import Deployment, RedisServer, redis_state_yaml

from state_tasks.core.errors import ConfigError
from state_tasks.high_availability import queue_type_settings

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
