"""Real servers for the tests: a private redis-server and celery worker subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from state_tasks import III, create_app

REPO = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery"]
_names = itertools.count(1)
_dbs = itertools.count(1)
#: The Redis db holding the bridge remote's state, wiped before each conformance test.
REMOTE_STATE_DB = 40
#: Variables of ours that a developer's shell may carry; a test sets its own.
OUR_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "STATE_CONFIG",
    "CELERY_WORKER_POOL",
    "STATE_TASKS_DATA_DIR",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.password = password
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; run ./scripts/test, which installs it"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "64",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class Worker:
    """A ``celery -A state_tasks worker`` subprocess with its own environment."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        args: tuple[str, ...] = (),
        includes: tuple[str, ...] = (),
        name: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name or f"w{next(_names)}"
        self.log_path = workdir / f"{self.name}.log"
        ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        self.env = {**ambient, **env, "PYTHONPATH": str(REPO / "tests" / "handlers")}
        self.command = [
            *CELERY,
            "-A",
            "state_tasks",
            "worker",
            "-l",
            "info",
            "-n",
            f"{self.name}@%h",
            *[arg for mod in includes for arg in ("-I", mod)],
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Worker:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            wait_until(self._ready, 60, f"worker {self.name} to be ready:\n{self.tail()}", 0.1)
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker {self.name} exited early:\n{self.tail()}")
        return " ready." in self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def run_to_exit(self, timeout_s: float = 60) -> tuple[int, str]:
        """Start the worker expecting it to refuse to start; return its exit code and log."""
        self.start(wait=False)
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        finally:
            self.stop(signal.SIGKILL)
        return code, self.log()


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
        worker = Worker(self.workdir, {**self.env, **env}, args, includes)
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
