"""Deployments for the tests: workers and a client on the private redis-server."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from state_tasks import III, create_app
from state_tasks.contrib.servers import (
    OUR_VARIABLES,
    RabbitVhost,
    RedisServer,
    Worker,
    adapter_yaml,
    wait_until,
)
from state_tasks.high_availability import queue_type_settings

__all__ = [
    "OUR_VARIABLES",
    "REPO",
    "Deployment",
    "RedisServer",
    "Worker",
    "adapter_yaml",
    "plain",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
#: Where the handler modules that test workers load (-I) live.
HANDLERS = REPO / "tests" / "handlers"
_names = itertools.count(1)
#: Deployments take Redis dbs from 100 up; tests that use a db directly take them below 100,
#: or, for a db of their own (handler records, a broker), one from own_db (500 up).
_dbs = itertools.count(100)
_own_dbs = itertools.count(500)
#: "amqp" runs every deployment's broker on RabbitMQ (a fresh vhost each), results on Redis.
BROKER_KIND = os.environ.get("STATE_TASKS_TEST_BROKER", "redis")
#: With "amqp": "quorum" runs every deployment on quorum queues (STATE_TASKS_QUEUE_TYPE), as
#: scripts/test's RabbitMQ pass does. Every client of a deployment declares its queues the
#: same way (RabbitMQ refuses another type): in-process ones with its queue_settings,
#: subprocesses (CLI, console, Flower, examples) with its client_env(), the Bridge with its
#: queue_type.
QUEUE_TYPE = os.environ.get("STATE_TASKS_TEST_QUEUE_TYPE", "classic")
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
    """Workers and a client sharing one broker and result backend.

    The broker is a Redis db of the private server, or with STATE_TASKS_TEST_BROKER=amqp
    a fresh RabbitMQ vhost; results always go to the Redis db.
    """

    def __init__(
        self,
        redis_server: RedisServer,
        workdir: Path,
        state_yaml: str | None,
        broker_kind: str = BROKER_KIND,
        queue_type: str = QUEUE_TYPE,
    ) -> None:
        self.redis_server = redis_server
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = next(_dbs)
        self.backend_url = redis_server.url(self.db)
        self.vhost = RabbitVhost() if broker_kind == "amqp" else None
        self.broker_url = self.vhost.url if self.vhost is not None else self.backend_url
        self.env = {"CELERY_BROKER_URL": self.broker_url, "CELERY_RESULT_BACKEND": self.backend_url}
        # On RabbitMQ, quorum queues (replicated) when asked for; the client declares the
        # queues the same way as the workers.
        quorum = self.vhost is not None and queue_type == "quorum"
        #: "quorum" or "classic": what the Bridge config's queue_type says for this deployment.
        self.queue_type = "quorum" if quorum else "classic"
        #: The variable that makes a process declare this deployment's queues (or none).
        self.queue_env = {"STATE_TASKS_QUEUE_TYPE": "quorum"} if quorum else {}
        #: The Celery settings that make an in-process client declare them.
        self.queue_settings = queue_type_settings(self.broker_url, self.queue_env)
        self.env.update(self.queue_env)
        if state_yaml is not None:
            config = workdir / "state.yaml"
            config.write_text(state_yaml)
            self.env["STATE_CONFIG"] = str(config)
        self.workers: list[Worker] = []
        self.client = Client(self.broker_url, self.backend_url, **self.queue_settings)

    def client_env(self) -> dict[str, str]:
        """The environment of a client subprocess on this deployment (CLI, console, Flower,
        an example): the ambient one without our variables, plus the broker, the result
        backend and the queue type."""
        ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        return ambient | {
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.backend_url,
            **self.queue_env,
        }

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
        if self.vhost is not None:
            self.vhost.delete()


def plain(result: Any) -> Any:
    """A result of set/update/batch without its versions (tests written before versions
    compare the rest; tests/conformance/test_versions_ttl.py checks the versions)."""
    if isinstance(result, dict) and "old_value" in result:
        return {name: value for name, value in result.items() if name != "version"}
    if isinstance(result, dict) and "results" in result:
        return result | {"results": [plain(item) for item in result["results"]]}
    return result


def own_db() -> int:
    """A db of the session's (new, empty) Redis server that no other test uses."""
    return next(_own_dbs)


def redis_state_yaml(url: str, key_prefix: str, **config: object) -> str:
    return adapter_yaml(
        "modules::state::adapters::RedisAdapter", redis_url=url, key_prefix=key_prefix, **config
    )


class Events:
    """A trigger listener (a StateService's ``on_change``) that records the events, or fails
    while ``broken``, as a dispatch fails while the broker is away."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.broken = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.broken:
            raise ConnectionError("the broker is away")
        self.events.append(event)

    def expiries(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("reason") == "expired"]
