"""Fixtures: a private redis-server for the session, and deployments of workers on it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Client, RedisServer, Worker

_dbs = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class Deployment:
    """Workers and a client sharing one broker (a Redis db of the private server)."""

    def __init__(self, redis_server: RedisServer, workdir: Path, state_yaml: str | None) -> None:
        self.redis_server = redis_server
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = next(_dbs)
        self.broker_url = redis_server.url(self.db)
        self.env = {"CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.broker_url}
        if state_yaml is not None:
            config = workdir / "state.yaml"
            config.write_text(state_yaml)
            self.env["STATE_CONFIG"] = str(config)
        self.workers: list[Worker] = []
        self.client = Client(self.broker_url, self.broker_url)

    def worker(self, *args: str, includes: tuple[str, ...] = (), start: bool = True, **env: str) -> Worker:
        worker = Worker(self.workdir, {**self.env, **env}, args, includes)
        self.workers.append(worker)
        return worker.start() if start else worker

    def call(self, function_id: str, **payload: Any) -> Any:
        return self.client.call(function_id, **payload)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


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
