"""Fixtures: a private redis-server for the session, and deployments of workers on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Deployment, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kv_deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One worker on the default KvStore (in memory), shared by tests that use unique scopes."""
    deployment = Deployment(redis_server, tmp_path_factory.mktemp("kv"), None)
    deployment.worker()
    yield deployment
    deployment.close()


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
