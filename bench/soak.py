"""The soak: many mutations with 10 KB values through real workers, and what stays behind.

``python -m bench --only soak`` (also part of the full run). Every byte the system keeps
must be bounded: per operation, what the state store keeps beyond the live data (the
records of applied operations), what the result backend keeps once the results were read
and the handlers ran, how many files the embedded default leaves in its data folder, and
whether the worker's memory grows while it keeps working. See bench/README.md.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.result import AsyncResult

from state_tasks import III, create_app
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisServer, Worker, adapter_yaml, wait_until
from state_tasks.core.service import StateService
from state_tasks.embedded_broker import embedded_settings
from state_tasks.settings import DEFAULT_RESULT_EXPIRES_S
from state_tasks.triggers.registry import TriggerRegistry

if TYPE_CHECKING:
    from bench.__main__ import Bench

#: A figure as bench/__main__.py prints it: name, value, target, detail.
FigureRow = tuple[str, float, str, dict[str, Any]]

REPO = Path(__file__).resolve().parent.parent

#: The mutations rotate over this many keys, so the live data stays the same size
#: (100 x 10 KB) while the operations pile up.
SOAK_KEYS = 100
BLOB = "0123456789" * 1000  # a 10 KB value
SCOPE = "soak"
#: Where bench.handlers' soak handler counts what it handled.
COUNT = {"scope": "soak-count", "key": "handled"}
#: Calls in flight at once: a batch is sent, then its results are read.
BATCH = 200
#: The embedded default's result expiry and cleanup interval in the soak: short, so the
#: cleanup is seen within the run (the defaults are 3600 s and 60 s).
EMBEDDED_EXPIRES_S = 5
EMBEDDED_CLEANUP_INTERVAL_S = 1
#: Threads of the embedded worker. With one (the default) and one message reserved at a
#: time, the filesystem transport waits one polling interval (20 ms) between two tasks, so
#: 10,000 mutations and their handlers would take over five minutes.
EMBEDDED_CONCURRENCY = 4

TRIGGERS: list[dict[str, Any]] = [
    # Every change: one handler.
    {"type": "state", "function_id": "bench::soakHandler", "config": {"scope": SCOPE}},
    # One change in a hundred (key k0): a condition, the gate, and every other time the
    # handler.
    {
        "type": "state",
        "function_id": "bench::soakHandler",
        "config": {"scope": SCOPE, "key": "k0", "condition_function_id": "bench::soakCondition"},
    },
]


def soak_value(i: int) -> dict[str, Any]:
    return {"i": i, "blob": BLOB}


def soak_key(i: int) -> str:
    return f"k{i % SOAK_KEYS}"


def handled_after(ops: int) -> int:
    """How many handler runs the first ``ops`` mutations cause (see TRIGGERS and
    bench.handlers.soak_condition)."""
    conditional = sum(1 for i in range(0, ops, SOAK_KEYS) if (i // 100) % 2 == 0)
    return ops + conditional


# -- process memory ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (a prefork worker's pool children)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
        pending.extend(_children(current))
    return total


# -- Redis memory ----------------------------------------------------------------------


def keyspace_bytes(client: redis.Redis) -> int:
    """Memory of the server's keys and values and their hash tables, without the memory of
    client connections and buffers (``MEMORY STATS``)."""
    stats = client.memory_stats()
    tables = sum(
        int(value.get("overhead.hashtable.main", 0))
        + int(value.get("overhead.hashtable.expires", 0))
        for name, value in stats.items()
        if name.startswith("db.") and isinstance(value, dict)
    )
    return int(stats["dataset.bytes"]) + tables


def db_bytes(client: redis.Redis) -> tuple[int, int]:
    """(keys, bytes) of one db: the sum of ``MEMORY USAGE`` over its keys."""
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return len(keys), sum(int(size or 0) for size in pipe.execute())


def settle(client: redis.Redis, seconds: float = 2.5) -> None:
    """Let Redis shrink idle client buffers (its cron runs ten times a second)."""
    time.sleep(seconds)
    client.ping()


# -- driving a deployment ------------------------------------------------------------


@dataclass
class SoakClient:
    """Sends the soak's mutations to one deployment in pipelined batches."""

    app: Celery
    kinds: Callable[[int], str]  # "wait" (read, then forget), "void", or "unread"
    iii: III = field(init=False)

    def __post_init__(self) -> None:
        self.iii = III(self.app, timeout_ms=120_000)

    def mutate(self, start: int, stop: int) -> None:
        for first in range(start, stop, BATCH):
            waiting: list[AsyncResult] = []
            for i in range(first, min(first + BATCH, stop)):
                kind = self.kinds(i)
                result = self.app.send_task(
                    "state::set",
                    kwargs={"scope": SCOPE, "key": soak_key(i), "value": soak_value(i)},
                    ignore_result=kind == "void",
                )
                if kind == "wait":
                    waiting.append(result)
            for result in waiting:
                result.get(timeout=300, interval=0.005)
                result.forget()  # read once: what iii.trigger does

    def handled(self) -> int:
        value = self.iii.trigger({"function_id": "state::get", "payload": COUNT})
        return int(value["n"]) if isinstance(value, dict) else 0

    def wait_handled(self, expected: int, timeout_s: float = 600) -> None:
        wait_until(
            lambda: self.handled() >= expected,
            timeout_s,
            f"{expected} handler runs",
            interval_s=0.2,
        )

    def register_triggers(self) -> None:
        for spec in TRIGGERS:
            self.iii.register_trigger(spec)


@dataclass
class RunResult:
    ops: int
    seconds: float
    rss_mid: int
    rss_end: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> float:
        return (self.rss_end - self.rss_mid) / 2**20


def run_halves(client: SoakClient, worker: Worker, ops: int) -> RunResult:
    """Drive ``ops`` mutations; the worker's RSS once the first half and then all were
    handled."""
    assert worker.process is not None
    started = time.monotonic()
    half = ops // 2
    client.mutate(0, half)
    client.wait_handled(handled_after(half))
    rss_mid = rss_bytes(worker.process.pid)
    client.mutate(half, ops)
    client.wait_handled(handled_after(ops))
    rss_end = rss_bytes(worker.process.pid)
    return RunResult(ops, time.monotonic() - started, rss_mid, rss_end)


# -- the runs ----------------------------------------------------------------------------


def redis_run(bench: Bench, ops: int) -> tuple[RunResult, dict[str, Any]]:
    """Redis for state (a private server of its own, so its memory is the state's alone),
    broker and results (dbs of the bench's server); a prefork worker with two children."""
    folder = bench.workdir / "soak-redis"
    folder.mkdir(parents=True, exist_ok=True)
    state_server = RedisServer(folder / "state-redis")
    broker_url, results_url = bench.server.url(20), bench.server.url(21)
    worker = None
    app = None
    try:
        state_url = state_server.url(0)
        (folder / "state.yaml").write_text(
            adapter_yaml("redis", redis_url=state_url, key_prefix=SCOPE)
        )
        worker = Worker(
            folder,
            {
                "CELERY_BROKER_URL": broker_url,
                "CELERY_RESULT_BACKEND": results_url,
                "STATE_CONFIG": str(folder / "state.yaml"),
                "CELERY_RESULT_EXPIRES": "",  # the default
            },
            ("--concurrency", "2"),
            includes=("bench.handlers",),
            pythonpath=[REPO],
        ).start()
        app = create_app("bench-soak-redis", broker_url=broker_url, result_backend=results_url)
        client = SoakClient(app, lambda i: "wait" if i % 2 == 0 else "void")
        client.register_triggers()
        state = redis.Redis.from_url(state_url)
        results = redis.Redis.from_url(results_url)
        results_before = db_bytes(results)
        run = run_halves(client, worker, ops)

        # What the result backend keeps once everything was read and every handler ran.
        settle(results, 1.0)
        results_after = db_bytes(results)
        # A result nobody reads is kept until it expires.
        probe = app.send_task(
            "state::set", kwargs={"scope": "soak-probe", "key": "k", "value": soak_value(0)}
        )
        probe.get(timeout=60)
        probe_ttl = results.ttl(f"celery-task-meta-{probe.id}")
        probe_bytes = results.memory_usage(f"celery-task-meta-{probe.id}", samples=0)
        probe.forget()
        app.send_task("state::delete", kwargs={"scope": "soak-probe", "key": "k"}).get(timeout=60)

        # The state store: all it holds, less the live data alone (the same values and
        # triggers written afresh, without operation ids, into the emptied store).
        adapter = RedisAdapter(redis_url=state_url, key_prefix=SCOPE)
        live = {
            (scope, key): adapter.get(scope, key)
            for scope, keys in (
                (SCOPE, [soak_key(i) for i in range(SOAK_KEYS)]),
                (COUNT["scope"], [COUNT["key"]]),
            )
            for key in keys
        }
        settle(state)
        soaked = keyspace_bytes(state)
        soaked_keys = state.dbsize()
        state.flushdb()
        for (scope, key), value_json in live.items():
            assert value_json is not None, (scope, key)
            adapter.set(scope, key, value_json)
        registry = TriggerRegistry(adapter)
        for spec in TRIGGERS:
            registry.register(spec)
        settle(state)
        live_only = keyspace_bytes(state)
        adapter.close()
        detail = {
            "state_keyspace_bytes": soaked,
            "live_data_bytes": live_only,
            "state_keys": soaked_keys,
            "live_keys": state.dbsize(),
            "results_keys_before_after": [results_before[0], results_after[0]],
            "results_bytes_before_after": [results_before[1], results_after[1]],
            "unread_result_ttl_s": probe_ttl,
            "unread_result_bytes": probe_bytes,
        }
        return run, {
            "op_record_bytes": (soaked - live_only) / ops,
            "results_bytes_per_op": (results_after[1] - results_before[1]) / ops,
            **detail,
        }
    finally:
        if worker is not None:
            worker.stop()
        if app is not None:
            app.close()
        state_server.stop()


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def embedded_run(bench: Bench, ops: int) -> tuple[RunResult, dict[str, Any]]:
    """The embedded default: no broker configured, a worker in a folder of its own (the
    KvStore in memory, the filesystem broker and file results under its data folder)."""
    folder = bench.workdir / "soak-embedded"
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    worker = Worker(
        folder,
        {
            "STATE_TASKS_DATA_DIR": str(data),
            "CELERY_RESULT_EXPIRES": str(EMBEDDED_EXPIRES_S),
            "STATE_TASKS_CLEANUP_INTERVAL": str(EMBEDDED_CLEANUP_INTERVAL_S),
            "CELERY_WORKER_CONCURRENCY": str(EMBEDDED_CONCURRENCY),
        },
        includes=("bench.handlers",),
        pythonpath=[REPO],
    ).start()
    app = create_app("bench-soak-embedded", **embedded_settings(str(data)))
    try:
        # A third of the calls read their result, a third are void, and a third never
        # read theirs (a .delay() nobody waits for): those stay until they expire.
        kinds = ("wait", "void", "unread")
        client = SoakClient(app, lambda i: kinds[i % 3])
        client.register_triggers()
        run = run_halves(client, worker, ops)
        files_at_end = count_files(data)
        # Let the unread results expire, and the worker's cleanup see them.
        time.sleep(EMBEDDED_EXPIRES_S + 2 * EMBEDDED_CLEANUP_INTERVAL_S + 1)
        files_after = count_files(data)
        return run, {
            "files_at_end_of_run": files_at_end,
            "files_after_cleanup": files_after,
            "result_expires_s": EMBEDDED_EXPIRES_S,
            "cleanup_interval_s": EMBEDDED_CLEANUP_INTERVAL_S,
        }
    finally:
        worker.stop()
        app.close()


def kv_op_record_bytes(ops: int) -> tuple[float, dict[str, Any]]:
    """What a KvStore keeps per applied operation beyond the live data: traced Python
    memory after ``ops`` sets with operation ids over a fixed set of keys, in-process."""
    store = KvStore()
    service = StateService(store)

    def mutate(i: int) -> None:
        service.call(
            "state::set",
            {"scope": SCOPE, "key": soak_key(i), "value": soak_value(i)},
            str(uuid.uuid4()),
        )

    # Traced from before the live data is written: a value allocated before tracing began
    # and freed under it would not be subtracted, and its replacement would count as growth.
    tracemalloc.start()
    try:
        for i in range(SOAK_KEYS):  # the live data, at its full size
            mutate(i)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(SOAK_KEYS, SOAK_KEYS + ops):
            mutate(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / ops, {"traced_growth_bytes": after - before}


def soak(bench: Bench) -> list[FigureRow]:
    """The soak's figures (bench/README.md)."""
    ops = bench.sizes.soak_ops
    kv_bytes, kv_detail = kv_op_record_bytes(ops)
    redis_result, redis_figures = redis_run(bench, ops)
    embedded_result, embedded_figures = embedded_run(bench, ops)
    runs = {"redis": redis_result, "embedded": embedded_result}
    return [
        (
            "redis_op_record_bytes",
            redis_figures["op_record_bytes"],
            "<= 256",
            {
                "ops": ops,
                "value_bytes": len(BLOB),
                **{
                    k: redis_figures[k]
                    for k in ("state_keyspace_bytes", "live_data_bytes", "state_keys", "live_keys")
                },
            },
        ),
        ("kv_op_record_bytes", kv_bytes, "<= 256", {"ops": ops, **kv_detail}),
        (
            "results_bytes_per_op",
            redis_figures["results_bytes_per_op"],
            "<= 64",
            {
                "ops": ops,
                "result_expires_s": DEFAULT_RESULT_EXPIRES_S,
                **{
                    k: redis_figures[k]
                    for k in (
                        "results_keys_before_after",
                        "results_bytes_before_after",
                        "unread_result_ttl_s",
                        "unread_result_bytes",
                    )
                },
            },
        ),
        (
            "embedded_files_after_10k",
            embedded_figures["files_after_cleanup"],
            "<= 100",
            {"ops": ops, **embedded_figures},
        ),
        (
            "soak_rss_growth_mb",
            max(run.rss_growth_mb for run in runs.values()),
            "<= 20",
            {
                name: {
                    "ops": run.ops,
                    "seconds": round(run.seconds, 1),
                    "ops_per_s": round(run.ops / run.seconds),
                    "rss_mid_mb": round(run.rss_mid / 2**20, 1),
                    "rss_end_mb": round(run.rss_end / 2**20, 1),
                    "growth_mb": round(run.rss_growth_mb, 2),
                }
                for name, run in runs.items()
            },
        ),
    ]


__all__ = ["soak"]
