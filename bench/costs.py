"""What one state operation costs each part, in CPU: the inputs of docs/scaling.md.

``python -m bench --only cost_per_op``. One prefork worker (two processes) on a state Redis,
a broker Redis and a results Redis of their own, so each server's CPU is the cost of one
role: the worker's CPU from ``/proc`` (main process and pool children), each
Redis's from ``INFO cpu``, both as deltas around a fixed number of ``state::set`` calls in
flight. With RabbitMQ running locally, the same again on a fresh vhost, with the RabbitMQ
node's CPU (``beam.smp`` in ``/proc``) as the broker's cost per message: other users of that
node (a test run) inflate it. Classic and quorum queues, one node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench.harness import REPO
from state_tasks import create_app
from state_tasks.contrib.servers import RabbitVhost, RedisServer, Worker, adapter_yaml
from state_tasks.high_availability import queue_type_settings

if TYPE_CHECKING:
    from bench.__main__ import Bench

FigureRow = tuple[str, float, str, dict[str, Any]]

VALUE = {"name": "Alice", "email": "alice@example.com", "preferences": {"theme": "dark"}}
#: Keys the operations rotate over (a realistic working set, not one hot key).
KEYS = 1000
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its living children (a worker and its pool)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    total = process_cpu_s(pid)
    for child in found.stdout.split():
        try:
            total += process_cpu_s(int(child))
        except FileNotFoundError:  # a child that just ended
            pass
    return total


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _beam_pid() -> int | None:
    found = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    return pids[0] if pids else None


def _run(app: Any, n: int, scope: str) -> float:
    started = time.perf_counter()
    results = [
        app.send_task("state::set", kwargs={"scope": scope, "key": f"k{i % KEYS}", "value": VALUE})
        for i in range(n)
    ]
    for result in results:
        result.get(timeout=300)
    return time.perf_counter() - started


def _measure(
    workdir: Path,
    broker_url: str,
    backend_url: str,
    state: RedisServer,
    n: int,
    env: dict[str, str],
    **client_settings: Any,
) -> dict[str, float]:
    """Run ``n`` sets through one worker; CPU seconds of the worker and the state Redis,
    and the wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "state.yaml").write_text(
        adapter_yaml("redis", redis_url=state.url(0), key_prefix=f"cost{uuid.uuid4().hex[:6]}")
    )
    worker = Worker(
        workdir,
        {
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": backend_url,
            "STATE_CONFIG": str(workdir / "state.yaml"),
            **env,
        },
        ("--concurrency", "2"),
        includes=("bench.handlers",),
        pythonpath=[REPO, workdir],
    ).start()
    app = create_app(
        f"cost-{uuid.uuid4().hex[:6]}",
        broker_url=broker_url,
        result_backend=backend_url,
        **client_settings,
    )
    state_client = redis.Redis(port=state.port)
    try:
        _run(app, min(n, 300), "warm")
        assert worker.process is not None
        cpu0 = tree_cpu_s(worker.process.pid)
        state0 = redis_cpu_s(state_client)
        wall = _run(app, n, "cost")
        return {
            "worker": tree_cpu_s(worker.process.pid) - cpu0,
            "state_redis": redis_cpu_s(state_client) - state0,
            "wall": wall,
        }
    finally:
        worker.stop()
        app.close()


class _Cpu:
    """CPU seconds a Redis server spends between two readings."""

    def __init__(self, server: RedisServer) -> None:
        self.client = redis.Redis(port=server.port)
        self.start = redis_cpu_s(self.client)

    def per_op_us(self, n: int) -> float:
        return (redis_cpu_s(self.client) - self.start) / n * 1e6


def costs(bench: Bench) -> list[FigureRow]:
    n = bench.sizes.tasks * 2
    state = RedisServer(bench.workdir / "cost-state")
    broker = RedisServer(bench.workdir / "cost-broker")
    results = RedisServer(bench.workdir / "cost-results")
    rows: list[FigureRow] = []
    try:
        broker_cpu, results_cpu = _Cpu(broker), _Cpu(results)
        spent = _measure(bench.workdir / "cost-redis", broker.url(0), results.url(0), state, n, {})
        detail: dict[str, Any] = {
            "ops": n,
            "ops_per_s": round(n / spent["wall"]),
            "cpus": os.cpu_count(),
        }
        rows += [
            ("cost_worker_cpu_us_per_op", spent["worker"] / n * 1e6, "<= 5000", detail),
            ("cost_state_redis_cpu_us_per_op", spent["state_redis"] / n * 1e6, "<= 500", detail),
            ("cost_broker_redis_cpu_us_per_op", broker_cpu.per_op_us(n), "<= 2000", detail),
            ("cost_results_redis_cpu_us_per_op", results_cpu.per_op_us(n), "<= 1000", detail),
        ]
        # The same with Celery's task events off (they are on for Flower and the console)
        quiet = bench.workdir / "cost-quiet"
        quiet.mkdir(parents=True, exist_ok=True)
        (quiet / "cost_quiet_settings.py").write_text(
            "worker_send_task_events = False\ntask_send_sent_event = False\n"
        )
        broker_cpu = _Cpu(broker)
        spent = _measure(
            quiet, broker.url(1), results.url(1), state, n,
            {"CELERY_CONFIG_MODULE": "cost_quiet_settings"}, task_send_sent_event=False,
        )  # fmt: skip
        detail = {"ops": n, "ops_per_s": round(n / spent["wall"]), "events": "off"}
        rows += [
            ("cost_worker_cpu_us_per_op_no_events", spent["worker"] / n * 1e6, "<= 5000", detail),
            (
                "cost_broker_redis_cpu_us_per_op_no_events",
                broker_cpu.per_op_us(n),
                "<= 2000",
                detail,
            ),
        ]
        beam = _beam_pid()
        rabbitmq = shutil.which("rabbitmqctl") or Path("/usr/sbin/rabbitmqctl").exists()
        for queue_type in ("classic", "quorum") if beam is not None and rabbitmq else ():
            assert beam is not None
            vhost = RabbitVhost()
            env = {"STATE_TASKS_QUEUE_TYPE": queue_type}
            try:
                beam0 = process_cpu_s(beam)
                spent = _measure(
                    bench.workdir / f"cost-{queue_type}", vhost.url, results.url(2), state, n,
                    env, **queue_type_settings(vhost.url, env),
                )  # fmt: skip
                rows.append(
                    (
                        f"cost_rabbitmq_cpu_us_per_op_{queue_type}",
                        (process_cpu_s(beam) - beam0) / n * 1e6,
                        "<= 5000",
                        {"ops": n, "ops_per_s": round(n / spent["wall"]), "nodes": 1},
                    )
                )
            finally:
                vhost.delete()
    finally:
        for server in (state, broker, results):
            server.stop()
    return rows
