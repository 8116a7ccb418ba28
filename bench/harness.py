"""Deployments for the benchmarks: workers on a private redis-server, and a client."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from state_tasks import III, create_app
from state_tasks.contrib.servers import RedisServer, Worker, adapter_yaml

REPO = Path(__file__).resolve().parent.parent

__all__ = ["BenchDeployment", "adapter_yaml", "median", "timed_ops_per_s"]


class BenchDeployment:
    """One worker on its own broker db (results there too), loading bench.handlers."""

    def __init__(
        self,
        server: RedisServer,
        workdir: Path,
        broker_db: int,
        state_yaml: str | None,
        worker_args: Sequence[str] = (),
        record_db: int | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.broker_url = server.url(broker_db)
        env = {"CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.broker_url}
        if state_yaml is not None:
            (workdir / "state.yaml").write_text(state_yaml)
            env["STATE_CONFIG"] = str(workdir / "state.yaml")
        if record_db is not None:
            env["BENCH_RECORD_URL"] = server.url(record_db)
        self._workdir, self._env, self._worker_args = workdir, env, tuple(worker_args)
        self.worker = Worker(
            workdir, env, tuple(worker_args), includes=("bench.handlers",), pythonpath=[REPO]
        )
        self.worker.start()
        self.extra_workers: list[Worker] = []
        self.app: Celery = create_app(
            f"bench-client-{broker_db}", broker_url=self.broker_url, result_backend=self.broker_url
        )
        self.iii = III(self.app)

    def throughput(self, task: str, make_kwargs: Callable[[int], dict[str, Any]], n: int) -> float:
        """Tasks per second with ``n`` in flight at once, every result collected."""
        started = time.perf_counter()
        results = [self.app.send_task(task, kwargs=make_kwargs(i)) for i in range(n)]
        for result in results:
            result.get(timeout=300)
        return n / (time.perf_counter() - started)

    def round_trip_s(self, task: str, kwargs: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.app.send_task(task, kwargs=kwargs).get(timeout=60, interval=0.001)
        return time.perf_counter() - started

    def add_worker(self) -> Worker:
        """One more worker on the same broker and state (stopped by close)."""
        worker = Worker(
            self._workdir,
            self._env,
            self._worker_args,
            includes=("bench.handlers",),
            pythonpath=[REPO],
        )
        self.extra_workers.append(worker.start())
        return worker

    def close(self) -> None:
        for worker in self.extra_workers:
            worker.stop()
        self.worker.stop()
        self.app.close()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed_ops_per_s(operation: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        operation(i)
    return n / (time.perf_counter() - started)
