"""Fixtures: deployments of workers on the session's private redis-server.

The servers themselves (``redis_server``, ``redis_cluster``) come from the plugin users get
too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REMOTE_STATE_DB, Deployment, RedisServer, redis_state_yaml

from state_tasks.contrib.servers import RedisCluster

pytest_plugins = ["state_tasks.contrib.pytest"]


@pytest.fixture(scope="session")
def kv_deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One worker on the default KvStore (in memory), shared by tests that use unique scopes."""
    deployment = Deployment(redis_server, tmp_path_factory.mktemp("kv"), None)
    deployment.worker()
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def redis_deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A prefork worker with two children on the RedisAdapter, plus a second worker process."""
    workdir = tmp_path_factory.mktemp("redis-deployment")
    deployment = Deployment(redis_server, workdir, redis_state_yaml(redis_server.url(0), "it"))
    deployment.worker("--concurrency", "2")
    deployment.worker("--concurrency", "1")
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def redis_cluster_deployment(
    redis_server: RedisServer,
    redis_cluster: RedisCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """As redis_deployment, with the state on the session's Redis Cluster (three masters,
    one replica each); broker and results stay on the session's redis-server."""
    workdir = tmp_path_factory.mktemp("redis-cluster-deployment")
    state_yaml = redis_state_yaml(redis_cluster.cluster_url(), "it-cluster")
    deployment = Deployment(redis_server, workdir, state_yaml)
    deployment.worker("--concurrency", "2")
    deployment.worker("--concurrency", "1")
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def bridge_remote(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A remote deployment for the Bridge: its own broker db, its state in REMOTE_STATE_DB."""
    workdir = tmp_path_factory.mktemp("bridge-remote")
    state_yaml = redis_state_yaml(
        redis_server.url(REMOTE_STATE_DB), "remote", max_value_bytes=100_000
    )
    deployment = Deployment(redis_server, workdir, state_yaml)
    deployment.worker("--concurrency", "2")
    yield deployment
    deployment.close()


@pytest.fixture(params=["kv", "redis", "redis_cluster"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """Each test of the state functions runs once per adapter, through real workers."""
    return request.getfixturevalue(f"{request.param}_deployment")  # type: ignore[no-any-return]


@pytest.fixture
def deployment_factory(redis_server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    made: list[Deployment] = []

    def make(state_yaml: str | None = None, name: str = "deployment") -> Deployment:
        deployment = Deployment(redis_server, tmp_path / f"{name}{len(made)}", state_yaml)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()
