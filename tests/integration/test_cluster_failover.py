"""State on Redis Cluster while a master dies: nothing lost, nothing applied twice.

Its own cluster (three masters, two replicas each: after the failover the promoted replica
still has one, so ``wait_replicas: 1`` writes go on without waiting for the dead node to
come back), destroyed by the test. The broker and results are on the session Redis: what
is under test is the state.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Deployment, RedisServer, redis_state_yaml, wait_until

from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisCluster

INCREMENT = [{"increment": {"field": "n", "by": 1}}]
#: Scopes the increments go to: enough that every master owns some.
SCOPES = [f"counter-{i:02d}" for i in range(24)]
#: The first scope takes this many of the increments (the busiest slot); the others share
#: the rest evenly.
BUSIEST_SHARE = 400
TOTAL = 2000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(
        tmp_path_factory.mktemp("cluster-failover"), masters=3, replicas=2, node_timeout_ms=2000
    )
    yield cluster
    cluster.stop()


def plan() -> list[str]:
    """The scope of each increment, in sending order: the busiest interleaved with the rest."""
    others = [SCOPES[1 + i % (len(SCOPES) - 1)] for i in range(TOTAL - BUSIEST_SHARE)]
    scopes: list[str] = []
    every = TOTAL // BUSIEST_SHARE
    for i in range(TOTAL):
        scopes.append(SCOPES[0] if i % every == 0 else others.pop())
    return scopes


def test_a_master_killed_mid_load_loses_and_doubles_nothing(
    cluster: RedisCluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given two workers whose state is on the cluster, with wait_replicas: 1
    prefix = f"failover-{uuid.uuid4().hex[:6]}"
    url = cluster.cluster_url()
    deployment = Deployment(
        redis_server, tmp_path / "d", redis_state_yaml(url, prefix, wait_replicas=1)
    )
    probe = RedisAdapter(redis_url=url, key_prefix=prefix)
    try:
        masters = {scope: cluster.master_of(probe.layout.scope_key(scope)) for scope in SCOPES}
        assert len(set(masters.values())) == 3, "the scopes spread over every master"
        for _ in range(2):
            deployment.worker("--concurrency", "2")
        scopes = plan()
        assert Counter(scopes)[SCOPES[0]] == BUSIEST_SHARE
        app = deployment.client.app
        # When 2,000 increments are under way over every master, and the master owning the
        # busiest slot is killed (SIGKILL) a little way in
        results = [
            app.send_task("state::update", kwargs={"scope": scope, "key": "n", "ops": INCREMENT})
            for scope in scopes
        ]
        results[200].get(timeout=60, interval=0.02)
        busiest = masters[SCOPES[0]]
        cluster.kill(busiest)
        wait_until(
            lambda: cluster.master_of(probe.layout.scope_key(SCOPES[0])) != busiest,
            30,
            "a replica to take over the dead master's slots",
        )
        # Then every call is answered (those in flight retried and succeeded), and each
        # count is exact: every increment applied once
        answers = [result.get(timeout=120, interval=0.05) for result in results]
        assert len(answers) == TOTAL
        expected = Counter(scopes)
        counts = {
            scope: deployment.call("state::get", scope=scope, key="n")["n"] for scope in SCOPES
        }
        assert counts == dict(expected)
        # A repeat (a write that reached a replica, then its answer was cut) answers
        # replayed; every other answer names a distinct new count of its scope
        counted = [
            (scope, answer["new_value"]["n"])
            for scope, answer in zip(scopes, answers, strict=True)
            if not answer.get("replayed")
        ]
        assert len(set(counted)) == len(counted)
        assert all(w.process is not None and w.process.poll() is None for w in deployment.workers)
    finally:
        probe.close()
        deployment.close()
