"""Deployments for the tests: workers and a client on the private redis-server."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from state_tasks import III, create_app
from state_tasks.testing import OUR_VARIABLES, RedisServer, Worker, wait_until

__all__ = ["OUR_VARIABLES", "REPO", "Deployment", "RedisServer", "Worker", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
#: Where the handler modules that test workers load (-I) live.
HANDLERS = REPO / "tests" / "handlers"
_names = itertools.count(1)
_dbs = itertools.count(1)
#: The Redis db holding the bridge remote's state, wiped before each conformance test.
REMOTE_STATE_DB = 40


class Client:
    """A service-side view of a deployment: its Celery app and iii facade."""

    def __init__(self, broker_url: str, result_backend: str, **settings: Any) -> None:
        self.app = create_app(
            f"client{next(_names)}",
            broker_url=broker_url,
            result_backend=result_backend,
            **settings,
        )
        self.iii = III(self.app, timeout_ms=20_000)

    def call(self, function_id: str, timeout_s: float = 20, **payload: Any) -> Any:
        return self.app.send_task(function_id, kwargs=payload).get(timeout=timeout_s, interval=0.02)

    def close(self) -> None:
        self.app.close()


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

    def worker(
        self, *args: str, includes: tuple[str, ...] = (), start: bool = True, **env: str
    ) -> Worker:
        worker = Worker(
            self.workdir,
            {**self.env, **env},
            args,
            includes,
            pythonpath=[HANDLERS, REPO / "examples"],
        )
        self.workers.append(worker)
        return worker.start() if start else worker

    def call(self, function_id: str, **payload: Any) -> Any:
        return self.client.call(function_id, **payload)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.client.close()


def adapter_yaml(adapter_class: str, **config: object) -> str:
    """A state.yaml for one adapter with the given config."""
    fields = ", ".join(f"{name}: {json.dumps(value)}" for name, value in config.items())
    return (
        "modules:\n  - class: modules::state::StateModule\n    config:\n      adapter:\n"
        f"        class: {adapter_class}\n        config: {{{fields}}}\n"
    )


def redis_state_yaml(url: str, key_prefix: str, **config: object) -> str:
    return adapter_yaml(
        "modules::state::adapters::RedisAdapter", redis_url=url, key_prefix=key_prefix, **config
    )
