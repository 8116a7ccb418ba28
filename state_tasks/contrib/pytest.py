"""pytest fixtures to test your handlers against real servers and real workers.

Enable them in your ``conftest.py``::

    pytest_plugins = ["state_tasks.contrib.pytest"]

    def test_my_handler(state_worker):
        worker = state_worker(includes=("myhandlers",), pythonpath=["src"])
        ...

- ``redis_server``: a private ``redis-server`` on a free port for the test session
  (nothing on disk; ``redis-server`` must be installed), never the one on 6379;
- ``redis_cluster``: a private Redis Cluster for the test session, three masters with one
  replica each on free ports (``redis_cluster.cluster_url()`` is the RedisAdapter's
  ``redis_url``), started on first use (about 7 s);
- ``state_worker``: starts ``celery -A state_tasks worker`` processes on that server
  (broker, results and, unless you pass a ``state_yaml``, the embedded KvStore) and
  stops them after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from state_tasks.contrib.servers import RedisCluster, RedisServer, Worker

__all__ = ["redis_cluster", "redis_server", "state_worker"]

#: Starts a worker: ``(state_yaml=None, includes=(), args=(), pythonpath=(), db=0, **env)``.
WorkerFactory = Callable[..., Worker]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test session's own on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of the test session's own: three masters, one replica each. Tests
    share it (use a key prefix of your own); one that stops nodes builds its own cluster."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas=1)
    yield cluster
    cluster.stop()


@pytest.fixture
def state_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start state_tasks workers with Redis as broker and result backend; stopped after."""
    started: list[Worker] = []

    def start(
        state_yaml: str | None = None,
        includes: Sequence[str] = (),
        args: Sequence[str] = (),
        pythonpath: Sequence[str | Path] = (),
        db: int = 0,
        **env: str,
    ) -> Worker:
        workdir = tmp_path / f"worker{len(started)}"
        workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            "CELERY_BROKER_URL": redis_server.url(db),
            "CELERY_RESULT_BACKEND": redis_server.url(db),
            **env,
        }
        if state_yaml is not None:
            config = workdir / "state.yaml"
            config.write_text(state_yaml)
            settings["STATE_CONFIG"] = str(config)
        worker = Worker(
            workdir, settings, tuple(args), tuple(includes), pythonpath=list(pythonpath)
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
