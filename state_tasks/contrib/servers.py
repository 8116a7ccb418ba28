"""Real servers for tests and benchmarks: a private redis-server and worker subprocesses.

Used by this project's test suite and benchmarks, and usable by yours::

    from state_tasks.contrib.servers import RedisServer, Worker

    server = RedisServer(tmp_path / "redis")           # a free port, nothing on disk
    worker = Worker(tmp_path, {"REDIS_URL": server.url()}, includes=("myhandlers",)).start()
    ...
    worker.stop()
    server.stop()
"""

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

CELERY = [sys.executable, "-m", "celery"]
_names = itertools.count(1)
#: Variables of ours that a developer's shell may carry; a worker started here gets only
#: the ones it is given.
OUR_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "STATE_CONFIG",
    "CELERY_WORKER_POOL",
    "CELERY_WORKER_CONCURRENCY",
    "STATE_TASKS_DATA_DIR",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk."""

    def __init__(
        self, workdir: Path, password: str | None = None, persistent: bool = False
    ) -> None:
        """``persistent``: an append-only file fsynced on every write, so a restart (even
        after ``kill -9``) keeps every acknowledged write."""
        self.password = password
        self.persistent = persistent
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
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--databases",
                "256",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
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
        pythonpath: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name or f"w{next(_names)}"
        self.log_path = workdir / f"{self.name}.log"
        ambient = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        self.env = {**ambient, **env, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
        self.command = [
            *CELERY,
            "-A",
            "state_tasks",
            "worker",
            "-l",
            "info",
            "-n",
            f"{self.name}@%h",
            # One -I with a comma-separated list: Celery keeps only the last of several -I.
            *(("-I", ",".join(includes)) if includes else ()),
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


def adapter_yaml(adapter_class: str, **config: object) -> str:
    """A state.yaml for one adapter with the given config."""
    fields = ", ".join(f"{name}: {json.dumps(value)}" for name, value in config.items())
    return (
        "modules:\n  - class: modules::state::StateModule\n    config:\n      adapter:\n"
        f"        class: {adapter_class}\n        config: {{{fields}}}\n"
    )


class RabbitVhost:
    """A fresh RabbitMQ virtual host on the local server (guest has every permission).

    Needs a running ``rabbitmq-server`` and ``rabbitmqctl`` (root); ``./scripts/test``
    installs and starts them when missing.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5672) -> None:
        self.name = f"state-tasks-{os.getpid()}-{next(_names)}"
        self.url = f"amqp://guest:guest@{host}:{port}/{self.name}"
        _rabbitmqctl("add_vhost", self.name)
        _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    def delete(self) -> None:
        _rabbitmqctl("delete_vhost", self.name)


def _rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([binary, "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
