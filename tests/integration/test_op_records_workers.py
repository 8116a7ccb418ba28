"""Operation records through real workers: what a worker leaves behind when it stops."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import redis
from helpers import Deployment, RedisServer, own_db, redis_state_yaml


def test_a_warm_shutdown_of_a_prefork_worker_leaves_every_record_settled(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a prefork worker with two children on a Redis state
    state_url = redis_server.url(own_db())
    prefix = f"settle-{uuid.uuid4().hex[:6]}"
    deployment = Deployment(redis_server, tmp_path / "d", redis_state_yaml(state_url, prefix))
    try:
        worker = deployment.worker("--concurrency", "2")
        # When it applies a few changes of 5 KB values and is then stopped cleanly
        for n in range(8):
            deployment.call("state::set", scope="s", key=f"k{n}", value={"blob": "x" * 5000})
        assert worker.stop(signal.SIGTERM) == 0
        # Then no operation record is left whole (holding the values) for its two hours:
        # each is a settled marker of a few bytes
        raw = redis.Redis.from_url(state_url, decode_responses=True)
        records = list(raw.scan_iter(f"{prefix}:op:*"))
        assert len(records) == 8
        assert {raw.type(key) for key in records} == {"string"}
        assert max(raw.memory_usage(key) or 0 for key in records) < 256
    finally:
        deployment.close()
