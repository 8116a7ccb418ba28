"""``python -m bench [--quick] [--only NAME,...]``: every figure, as ratios against baselines.

Starts its own redis-server on a free port and its own worker subprocesses, runs each
figure with its baseline measured side by side (interleaved rounds, medians), stops
everything, and prints one JSON object per line, then a table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.changelog import bytes_per_entry, changelog_set_cost, watch_lag
from bench.cluster import ClusterFigures
from bench.coordination import barrier_arrive_vs_update, fan_in_vs_chord, lock_roundtrip_vs_set
from bench.costs import costs
from bench.filters import filter_match_10k, filter_messages_vs_condition
from bench.harness import BenchDeployment, adapter_yaml, median, timed_ops_per_s
from bench.soak import soak
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisServer
from state_tasks.core.batch import BatchOp
from state_tasks.core.ops import parse_ops
from state_tasks.core.service import StateService
from state_tasks.triggers.registry import TriggerRegistry

VALUE = {"name": "Alice", "email": "alice@example.com", "preferences": {"theme": "dark"}}
VALUE_JSON = json.dumps(VALUE, separators=(",", ":"))
INCREMENT = parse_ops([{"increment": {"field": "n", "by": 1}}])
#: Operations per batch in the batch figures.
BATCH_SIZE = 100
#: Keys in the big scope of list_page_cost_flat.
PAGING_BIG_KEYS = 1_000_000


@dataclass
class Sizes:
    rounds: int
    tasks: int  # tasks in flight per throughput round
    round_trips: int  # sequential round trips per latency figure
    adapter_ops: int  # in-process operations per round
    groups_keys: int  # keys per scope in the big list_groups store
    memory_keys: int
    soak_ops: int  # mutations of 10 KB values in the soak, per deployment


QUICK = Sizes(
    rounds=5,
    tasks=600,
    round_trips=150,
    adapter_ops=3000,
    groups_keys=10_000,
    memory_keys=1_000_000,
    soak_ops=2_000,
)
FULL = Sizes(
    rounds=5,
    tasks=3000,
    round_trips=500,
    adapter_ops=20_000,
    groups_keys=10_000,
    memory_keys=1_000_000,
    soak_ops=10_000,
)


@dataclass
class Figure:
    name: str
    value: float
    target: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        match = re.fullmatch(r"(>=|<=|≥|≤)\s*([0-9.]+)", self.target)
        assert match, self.target
        op, bound = match.group(1), float(match.group(2))
        return self.value >= bound if op in (">=", "≥") else self.value <= bound

    def line(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "value": round(self.value, 3),
                "target": self.target,
                "ok": self.ok,
                "detail": self.detail,
            }
        )


class Bench:
    def __init__(self, sizes: Sizes, workdir: Path) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.server = RedisServer(workdir / "redis")
        self.baselines: dict[str, float] = {}
        self._deployments: dict[str, BenchDeployment] = {}
        self.cluster = ClusterFigures(self)

    # -- deployments, started on first use --------------------------------------------

    def deployment(self, name: str) -> BenchDeployment:
        if name not in self._deployments:
            self._deployments[name] = self._start(name)
        return self._deployments[name]

    def _start(self, name: str) -> BenchDeployment:
        folder = self.workdir / name
        if name == "redis":
            state = adapter_yaml("redis", redis_url=self.server.url(2), key_prefix="bench")
            return BenchDeployment(
                self.server, folder, 1, state, ("--concurrency", "2"), record_db=3
            )
        if name == "kv":
            return BenchDeployment(self.server, folder, 4, None)
        if name == "remote":
            return BenchDeployment(self.server, folder, 8, None)
        if name == "bridge":
            remote = self.deployment("remote")
            state = adapter_yaml(
                "bridge",
                broker_url=remote.broker_url,
                result_backend=remote.broker_url,
                timeout_ms=30_000,
            )
            return BenchDeployment(self.server, folder, 9, state)
        raise ValueError(name)

    def close(self) -> None:
        self.cluster.close()
        for deployment in self._deployments.values():
            deployment.close()
        self.server.stop()

    # -- helpers ------------------------------------------------------------------------

    def interleaved_ratio(
        self, measure_a: Callable[[], float], measure_b: Callable[[], float]
    ) -> tuple[float, list[float], list[float]]:
        """Median of a/b over alternating rounds, with the raw figures."""
        a_values, b_values = [], []
        for _ in range(self.sizes.rounds):
            b_values.append(measure_b())
            a_values.append(measure_a())
        return median(a_values) / median(b_values), a_values, b_values

    def p50_pair(self, a: Callable[[], float], b: Callable[[], float]) -> tuple[float, float]:
        a_times, b_times = [], []
        for _ in range(10):  # warm up
            a(), b()
        for _ in range(self.sizes.round_trips):
            b_times.append(b())
            a_times.append(a())
        return median(a_times), median(b_times)

    # -- figures ------------------------------------------------------------------------

    def celery_set_vs_noop(self, which: str) -> Figure:
        deployment = self.deployment(which)
        n = self.sizes.tasks
        run = f"{which}-{time.monotonic_ns()}"
        deployment.throughput("bench::noop", lambda i: {}, 50)  # warm up
        ratio, sets, noops = self.interleaved_ratio(
            lambda: deployment.throughput(
                "state::set", lambda i: {"scope": run, "key": f"k{i}", "value": VALUE}, n
            ),
            lambda: deployment.throughput("bench::noop", lambda i: {}, n),
        )
        self.baselines[f"noop_tasks_per_s_{which}"] = median(noops)
        return Figure(
            f"celery_set_vs_noop_{which}",
            ratio,
            ">= 0.85",
            {"set_per_s": round(median(sets)), "noop_per_s": round(median(noops)), "in_flight": n},
        )

    def celery_get_latency_vs_noop(self) -> Figure:
        deployment = self.deployment("redis")
        deployment.app.send_task(
            "state::set", kwargs={"scope": "lat", "key": "k", "value": VALUE}
        ).get()
        get_p50, noop_p50 = self.p50_pair(
            lambda: deployment.round_trip_s("state::get", {"scope": "lat", "key": "k"}),
            lambda: deployment.round_trip_s("bench::noop", {}),
        )
        self.baselines["noop_round_trip_ms"] = noop_p50 * 1000
        return Figure(
            "celery_get_latency_vs_noop",
            get_p50 / noop_p50,
            "<= 1.15",
            {"get_p50_ms": round(get_p50 * 1000, 3), "noop_p50_ms": round(noop_p50 * 1000, 3)},
        )

    def trigger_latency_vs_noop(self) -> Figure:
        deployment = self.deployment("redis")
        record = redis.Redis.from_url(self.server.url(3), decode_responses=True)
        record.delete("bench:started")
        handle = deployment.iii.register_trigger(
            {"type": "state", "function_id": "bench::handler", "config": {"scope": "bench-trig"}}
        )
        latencies = []
        try:
            for i in range(self.sizes.round_trips):
                started = time.time()
                deployment.app.send_task(
                    "state::set", kwargs={"scope": "bench-trig", "key": f"k{i}", "value": i}
                )
                popped = record.blpop(["bench:started"], timeout=30)
                assert popped is not None, "the handler did not run"
                key, at = popped[1].split(" ")
                assert key == f"k{i}", (key, i)
                latencies.append(float(at) - started)
        finally:
            handle.unregister()
        noop_p50 = median(
            [deployment.round_trip_s("bench::noop", {}) for _ in range(self.sizes.round_trips)]
        )
        p50 = median(latencies[5:])
        return Figure(
            "trigger_latency_vs_noop",
            p50 / noop_p50,
            "<= 3.0",
            {
                "set_to_handler_p50_ms": round(p50 * 1000, 3),
                "noop_p50_ms": round(noop_p50 * 1000, 3),
            },
        )

    def trigger_match_10k(self) -> Figure:
        deployment = self.deployment("redis")
        registry = TriggerRegistry(RedisAdapter(redis_url=self.server.url(2), key_prefix="bench"))
        specs = [
            {
                "type": "state",
                "function_id": "bench::handler",
                "config": {"scope": f"elsewhere-{i}", "key": f"k{i % 7}"},
            }
            for i in range(10_000)
        ]
        n = self.sizes.tasks

        def measure() -> float:
            return deployment.throughput(
                "state::set", lambda i: {"scope": "bench-match", "key": f"k{i}", "value": i}, n
            )

        def with_triggers() -> float:
            ids = [registry.register(spec).id for spec in specs]
            deployment.throughput(
                "state::set", lambda i: {"scope": "bench-match", "key": "w", "value": i}, 20
            )
            try:
                return measure()
            finally:
                for trigger_id in ids:
                    registry.unregister(trigger_id)

        ratio, with_values, without = self.interleaved_ratio(with_triggers, measure)
        return Figure(
            "trigger_match_10k",
            ratio,
            ">= 0.9",
            {
                "sets_per_s_with_10k": round(median(with_values)),
                "sets_per_s_with_none": round(median(without)),
            },
        )

    def redis_vs_hset(self) -> list[Figure]:
        raw = redis.Redis.from_url(self.server.url(5), decode_responses=True)
        adapter = RedisAdapter(redis_url=self.server.url(5), key_prefix="cmp")
        n = self.sizes.adapter_ops
        hset = lambda: timed_ops_per_s(lambda i: raw.hset("raw-hash", f"k{i}", VALUE_JSON), n)  # noqa: E731
        set_ratio, sets, hsets = self.interleaved_ratio(
            lambda: timed_ops_per_s(lambda i: adapter.set("bench", f"k{i}", VALUE_JSON), n), hset
        )
        update_ratio, updates, hsets2 = self.interleaved_ratio(
            lambda: timed_ops_per_s(lambda i: adapter.update("bench", "counter", INCREMENT), n),
            hset,
        )
        self.baselines["raw_hset_ops_per_s"] = median(hsets + hsets2)
        return [
            Figure(
                "redis_set_vs_hset",
                set_ratio,
                ">= 0.7",
                {"set_per_s": round(median(sets)), "hset_per_s": round(median(hsets))},
            ),
            Figure(
                "redis_update_vs_hset",
                update_ratio,
                ">= 0.5",
                {"update_per_s": round(median(updates)), "hset_per_s": round(median(hsets2))},
            ),
        ]

    def redis_set_if_version_vs_set(self) -> Figure:
        """``set`` with ``if_version`` (the key's current version) against a plain ``set``
        of the same keys, adapter level, interleaved rounds."""
        adapter = RedisAdapter(redis_url=self.server.url(5), key_prefix="cas")
        n = self.sizes.adapter_ops
        versions = {i: adapter.set_versioned("cas", f"k{i}", VALUE_JSON).version for i in range(n)}

        def checked(i: int) -> None:
            versions[i] = adapter.set_versioned(
                "cas", f"k{i}", VALUE_JSON, if_version=versions[i]
            ).version

        ratio, checked_rates, plain_rates = self.interleaved_ratio(
            lambda: timed_ops_per_s(checked, n),
            lambda: timed_ops_per_s(lambda i: adapter.set("plain", f"k{i}", VALUE_JSON), n),
        )
        return Figure(
            "redis_set_if_version_vs_set",
            ratio,
            ">= 0.9",
            {
                "if_version_per_s": round(median(checked_rates)),
                "set_per_s": round(median(plain_rates)),
            },
        )

    def expiry(self) -> list[Figure]:
        """5,000 keys with ttls spread over 5 s, expired by the workers of the Redis
        deployment (three, each with its sweeper). First with no trigger on their scope: the
        sets per second of this process meanwhile against the same with nothing expiring
        (the cost of expiry itself). Then with a trigger: how late each expiry fired after its
        due time (the event's timestamp; when its handler started is in the detail)."""
        deployment = self.deployment("redis")
        while len(deployment.extra_workers) < 2:
            deployment.add_worker()
        record = redis.Redis.from_url(self.server.url(3), decode_responses=True)
        record.delete("bench:expired")
        writer = RedisAdapter(redis_url=self.server.url(2), key_prefix="bench")
        service = StateService(writer)
        keys, spread_ms, first_ms = 5000, 5000, 1000
        window_s = (first_ms + spread_ms) / 1000

        def sets_per_s(seconds: float) -> float:
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                writer.set("expiry-writes", f"k{done % 1000}", VALUE_JSON)
                done += 1
            return done / (time.perf_counter() - started)

        def expire_keys(scope: str) -> dict[str, float]:
            dues: dict[str, float] = {}
            for start in range(0, keys, 1000):
                sent = time.time()
                operations = []
                for i in range(start, start + 1000):
                    ttl_ms = first_ms + i * spread_ms // keys
                    dues[f"k{i}"] = sent + ttl_ms / 1000
                    operations.append({"op": "set", "key": f"k{i}", "value": i, "ttl_ms": ttl_ms})
                service.call("state::batch", {"scope": scope, "operations": operations})
            return dues

        quiet = sets_per_s(window_s)
        expire_keys(f"expiry-cost-{time.monotonic_ns()}")
        busy = sets_per_s(window_s)
        scope = f"expiry-{time.monotonic_ns()}"
        handle = deployment.iii.register_trigger(
            {"type": "state", "function_id": "bench::expiryHandler", "config": {"scope": scope}}
        )
        try:
            dues = expire_keys(scope)
            deadline = time.monotonic() + 180
            while record.llen("bench:expired") < keys and time.monotonic() < deadline:
                time.sleep(0.2)
            rows = [line.split(" ") for line in record.lrange("bench:expired", 0, -1)]
        finally:
            handle.unregister()
            writer.close()
        fired = sorted(
            (datetime.fromisoformat(stamp).timestamp() - dues[key]) * 1000 for key, stamp, _ in rows
        )
        started = sorted((float(at) - dues[key]) * 1000 for key, _, at in rows)
        counts = Counter(key for key, _, _ in rows)

        def p99(values: list[float]) -> float:
            return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 1e9

        lag = Figure(
            "expiry_lag_p99_ms",
            p99(fired) if len(counts) == keys else 1e9,
            "<= 1000",
            {
                "expired": len(counts),
                "fired_twice": sum(1 for n in counts.values() if n > 1),
                "p50_ms": round(fired[len(fired) // 2], 1) if fired else None,
                "max_ms": round(fired[-1], 1) if fired else None,
                "handler_started_p99_ms": round(p99(started), 1),
                "workers": 1 + len(deployment.extra_workers),
            },
        )
        cost = Figure(
            "expiry_cost_vs_set",
            busy / quiet,
            ">= 0.8",
            {"sets_per_s_expiring": round(busy), "sets_per_s_quiet": round(quiet)},
        )
        return [lag, cost]

    def redis_list_groups_scaling(self) -> Figure:
        raw = redis.Redis.from_url(self.server.url(6), decode_responses=True)
        raw.flushdb()
        small = RedisAdapter(redis_url=self.server.url(6), key_prefix="small")
        big = RedisAdapter(redis_url=self.server.url(6), key_prefix="big")
        for adapter, keys in ((small, 10), (big, self.sizes.groups_keys)):
            for s in range(100):
                scope = f"scope-{s:03d}"
                adapter.set(scope, "first", "1")  # the adapter indexes the scope
                fields = {f"k{i}": VALUE_JSON for i in range(keys - 1)}
                pipe = raw.pipeline(transaction=False)
                items = list(fields.items())
                for start in range(0, len(items), 1000):  # the bulk of the keys, fast
                    pipe.hset(
                        adapter.layout.scope_key(scope), mapping=dict(items[start : start + 1000])
                    )
                pipe.execute()
        assert raw.hlen(big.layout.scope_key("scope-000")) == self.sizes.groups_keys

        def time_calls(adapter: RedisAdapter) -> float:
            started = time.perf_counter()
            for _ in range(200):
                groups = adapter.list_groups()
            assert len(groups) == 100
            return (time.perf_counter() - started) / 200

        ratio, big_times, small_times = self.interleaved_ratio(
            lambda: time_calls(big), lambda: time_calls(small)
        )
        return Figure(
            "redis_list_groups_scaling",
            ratio,
            "<= 2.0",
            {
                "big_ms": round(median(big_times) * 1000, 4),
                "small_ms": round(median(small_times) * 1000, 4),
                "big": f"100 scopes x {self.sizes.groups_keys} keys",
                "small": "100 scopes x 10 keys",
            },
        )

    def kv_save_dirty_only(self) -> Figure:
        big = FileKvStore(file_path=self.workdir / "save-big", save_interval_ms=3_600_000)
        one = FileKvStore(file_path=self.workdir / "save-one", save_interval_ms=3_600_000)
        big.open(), one.open()
        try:
            for s in range(100):
                for k in range(1000):
                    big.set(f"scope-{s:03d}", f"k{k}", VALUE_JSON)
            for k in range(1000):
                one.set("scope-000", f"k{k}", VALUE_JSON)
            big.save(), one.save()

            def timed_save(store: FileKvStore) -> float:
                store.set("scope-000", "k0", str(time.monotonic_ns()))
                started = time.perf_counter()
                written = store.save()
                assert written == 1, written
                return time.perf_counter() - started

            ratio, big_times, one_times = self.interleaved_ratio(
                lambda: timed_save(big), lambda: timed_save(one)
            )
        finally:
            big.close(), one.close()
        return Figure(
            "kv_save_dirty_only",
            ratio,
            "<= 2.0",
            {
                "save_ms_100x1000": round(median(big_times) * 1000, 3),
                "save_ms_one_scope": round(median(one_times) * 1000, 3),
            },
        )

    def kv_journal_vs_memory(self) -> list[Figure]:
        n = self.sizes.adapter_ops
        stores = {
            policy: FileKvStore(file_path=self.workdir / f"journal-{policy}", fsync=policy)
            for policy in ("interval", "always")
        }
        for store in stores.values():
            store.open()
        memory = StateService(KvStore())
        try:

            def rate(service: StateService) -> Callable[[], float]:
                return lambda: timed_ops_per_s(
                    lambda i: service.call(
                        "state::set", {"scope": "s", "key": f"k{i}", "value": VALUE}
                    ),
                    n,
                )

            interval_ratio, interval, mem = self.interleaved_ratio(
                rate(StateService(stores["interval"])), rate(memory)
            )
            always_ratio, always, mem2 = self.interleaved_ratio(
                rate(StateService(stores["always"])), rate(memory)
            )
            adapter_only = timed_ops_per_s(
                lambda i: stores["interval"].set("a", f"k{i}", VALUE_JSON), n
            )
            adapter_memory = timed_ops_per_s(
                lambda i: memory.adapter.set("a", f"k{i}", VALUE_JSON), n
            )
        finally:
            for store in stores.values():
                store.close()
        return [
            Figure(
                "kv_journal_vs_memory",
                interval_ratio,
                ">= 0.5",
                {
                    "file_interval_sets_per_s": round(median(interval)),
                    "in_memory_sets_per_s": round(median(mem)),
                    "measured_at": "StateService.call('state::set'), no Celery transport",
                    "adapter_only_ratio": round(adapter_only / adapter_memory, 3),
                },
            ),
            Figure(
                "kv_journal_always_vs_memory",
                always_ratio,
                ">= 0.0",
                {
                    "file_always_sets_per_s": round(median(always)),
                    "in_memory_sets_per_s": round(median(mem2)),
                    "note": "reported, no target: one fsync per write",
                },
            ),
        ]

    def kv_memory_per_json_byte(self) -> Figure:
        code = MEMORY_PROBE.replace("N_KEYS", str(self.sizes.memory_keys))
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        result = json.loads(done.stdout)
        return Figure(
            "kv_memory_per_json_byte",
            result["rss_growth"] / result["json_bytes"],
            "<= 3.0",
            {
                "keys": self.sizes.memory_keys,
                "rss_growth_mb": round(result["rss_growth"] / 2**20, 1),
                "json_mb": round(result["json_bytes"] / 2**20, 1),
                "mean_value_bytes": round(result["json_bytes"] / self.sizes.memory_keys, 1),
            },
        )

    def batch_vs_single_ops_per_s(self) -> Figure:
        deployment = self.deployment("redis")
        run = f"batch-{time.monotonic_ns()}"
        singles = self.sizes.tasks
        batches = max(1, singles // 10)

        def batch(i: int) -> dict[str, Any]:
            operations = [
                {"op": "set", "key": f"b{i}-{j}", "value": VALUE} for j in range(BATCH_SIZE)
            ]
            return {"scope": run, "operations": operations}

        deployment.throughput("state::batch", batch, 5)  # warm up
        ratio, batched, single = self.interleaved_ratio(
            lambda: BATCH_SIZE * deployment.throughput("state::batch", batch, batches),
            lambda: deployment.throughput(
                "state::set", lambda i: {"scope": run, "key": f"s{i}", "value": VALUE}, singles
            ),
        )
        return Figure(
            "batch_vs_single_ops_per_s",
            ratio,
            ">= 20",
            {
                "batched_ops_per_s": round(median(batched)),
                "single_ops_per_s": round(median(single)),
                "batch_size": BATCH_SIZE,
                "tasks_in_flight": {"batches": batches, "singles": singles},
            },
        )

    def redis_batch_vs_pipelined_hset(self) -> Figure:
        raw = redis.Redis.from_url(self.server.url(5), decode_responses=True)
        adapter = RedisAdapter(redis_url=self.server.url(5), key_prefix="cmp-batch")
        keys = [f"k{i}" for i in range(BATCH_SIZE)]
        operations = [BatchOp("set", key, value_json=VALUE_JSON) for key in keys]
        rounds = max(20, self.sizes.adapter_ops // BATCH_SIZE)

        def pipelined(_: int) -> None:
            pipe = raw.pipeline(transaction=False)
            for key in keys:
                pipe.hset("raw-batch-hash", key, VALUE_JSON)
            pipe.execute()

        ratio, batched, hsets = self.interleaved_ratio(
            lambda: BATCH_SIZE * timed_ops_per_s(lambda i: adapter.batch("b", operations), rounds),
            lambda: BATCH_SIZE * timed_ops_per_s(pipelined, rounds),
        )
        return Figure(
            "redis_batch_vs_pipelined_hset",
            ratio,
            ">= 0.5",
            {
                "batch_sets_per_s": round(median(batched)),
                "pipelined_hset_per_s": round(median(hsets)),
                "batch_size": BATCH_SIZE,
            },
        )

    def list_page_cost_flat(self) -> list[Figure]:
        raw = redis.Redis.from_url(self.server.url(7), decode_responses=True)
        raw.flushdb()
        adapter = RedisAdapter(redis_url=self.server.url(7), key_prefix="paging")
        small_keys, big_keys = 1000, PAGING_BIG_KEYS
        started = time.perf_counter()
        for scope, count in (("small", small_keys), ("big", big_keys)):
            for first in range(0, count, 1000):  # through the adapter: hash and key index
                adapter.batch(
                    scope,
                    [
                        BatchOp("set", f"k{i:07d}", value_json="1")
                        for i in range(first, first + 1000)
                    ],
                )
        fill_s = time.perf_counter() - started
        assert raw.hlen(adapter.layout.scope_key("big")) == big_keys

        def page_time(scope: str, prefix: str, after: str | None) -> float:
            started = time.perf_counter()
            for _ in range(200):
                rows, _more = adapter.list_page(scope, prefix, after, 100)
            assert len(rows) == 100, len(rows)
            return (time.perf_counter() - started) / 200

        middle = f"k{small_keys // 2:07d}"  # a page from the middle: the cursor's case
        page_ratio, big_pages, small_pages = self.interleaved_ratio(
            lambda: page_time("big", "", middle), lambda: page_time("small", "", middle)
        )
        prefix = "k00001"  # k0000100 .. k0000199 in both scopes
        prefix_ratio, big_prefix, small_prefix = self.interleaved_ratio(
            lambda: page_time("big", prefix, None), lambda: page_time("small", prefix, None)
        )
        raw.flushdb()
        sizes = f"{big_keys:,} keys over {small_keys:,} keys in the scope"
        return [
            Figure(
                "list_page_cost_flat",
                page_ratio,
                "<= 2",
                {
                    "page_ms_big": round(median(big_pages) * 1000, 4),
                    "page_ms_small": round(median(small_pages) * 1000, 4),
                    "ratio": sizes,
                    "fill_s": round(fill_s, 1),
                },
            ),
            Figure(
                "list_page_cost_flat_prefix",
                prefix_ratio,
                "<= 2",
                {
                    "prefix_page_ms_big": round(median(big_prefix) * 1000, 4),
                    "prefix_page_ms_small": round(median(small_prefix) * 1000, 4),
                    "prefix": f"{prefix!r}, matching 100 keys in either scope",
                    "ratio": sizes,
                },
            ),
        ]

    def bridge_get_vs_direct(self) -> Figure:
        remote, bridge = self.deployment("remote"), self.deployment("bridge")
        remote.app.send_task("state::set", kwargs={"scope": "b", "key": "k", "value": VALUE}).get()
        bridged, direct = self.p50_pair(
            lambda: bridge.round_trip_s("state::get", {"scope": "b", "key": "k"}),
            lambda: remote.round_trip_s("state::get", {"scope": "b", "key": "k"}),
        )
        return Figure(
            "bridge_get_vs_direct",
            bridged / direct,
            "<= 2.5",
            {"bridge_p50_ms": round(bridged * 1000, 3), "direct_p50_ms": round(direct * 1000, 3)},
        )


MEMORY_PROBE = """
import gc, json
from state_tasks.adapters.kv_store import KvStore

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096

store = KvStore()
gc.collect()
before = rss()
total = 0
for i in range(N_KEYS):
    value = ('{"name":"user-%07d","email":"user-%07d@example.com","visits":%d,"tags":["a","b"]}'
             % (i, i, i))
    total += len(value.encode())
    store.set("users", "u%07d" % i, value)
gc.collect()
print(json.dumps({"rss_growth": rss() - before, "json_bytes": total}))
"""

FIGURES: dict[str, Callable[[Bench], Figure | list[Figure]]] = {
    "redis_set_vs_hset": lambda b: b.redis_vs_hset(),  # also redis_update_vs_hset
    "redis_set_if_version_vs_set": Bench.redis_set_if_version_vs_set,
    "expiry_lag_p99_ms": lambda b: b.expiry(),  # also expiry_cost_vs_set
    "redis_list_groups_scaling": Bench.redis_list_groups_scaling,
    "kv_save_dirty_only": Bench.kv_save_dirty_only,
    "kv_journal_vs_memory": Bench.kv_journal_vs_memory,
    "kv_memory_per_json_byte": Bench.kv_memory_per_json_byte,
    "celery_set_vs_noop_redis": lambda b: b.celery_set_vs_noop("redis"),
    "celery_set_vs_noop_kv": lambda b: b.celery_set_vs_noop("kv"),
    "celery_get_latency_vs_noop": Bench.celery_get_latency_vs_noop,
    "trigger_match_10k": Bench.trigger_match_10k,
    "trigger_latency_vs_noop": Bench.trigger_latency_vs_noop,
    "bridge_get_vs_direct": Bench.bridge_get_vs_direct,
    "batch_vs_single_ops_per_s": Bench.batch_vs_single_ops_per_s,
    "redis_batch_vs_pipelined_hset": Bench.redis_batch_vs_pipelined_hset,
    "list_page_cost_flat": lambda b: b.list_page_cost_flat(),  # also list_page_cost_flat_prefix
    # the change log (bench/changelog.py)
    "changelog_set_cost": lambda b: Figure(*changelog_set_cost(b)),
    # also watch_lag_direct_p99_ms
    "watch_lag_p99_ms": lambda b: [Figure(*row) for row in watch_lag(b)],
    # also changelog_bytes_per_entry_1kb, changelog_bytes_per_entry_kv
    "changelog_bytes_per_entry": lambda b: [Figure(*row) for row in bytes_per_entry(b)],
    # declarative trigger filters (bench/filters.py)
    "filter_messages_vs_condition": lambda b: Figure(*filter_messages_vs_condition(b)),
    "filter_match_10k": lambda b: Figure(*filter_match_10k(b)),
    # redis_op_record_bytes, kv_op_record_bytes, results_bytes_per_op,
    # embedded_files_after_10k, soak_rss_growth_mb (bench/soak.py)
    "soak": lambda b: [Figure(*row) for row in soak(b)],
    # cost_worker_cpu_us_per_op, cost_state_redis_cpu_us_per_op,
    # cost_broker_redis_cpu_us_per_op, cost_rabbitmq_cpu_us_per_op (bench/costs.py)
    "cost_per_op": lambda b: [Figure(*row) for row in costs(b)],
    # coordination: locks, barriers, fan-in (bench/coordination.py)
    "lock_roundtrip_vs_set": lambda b: Figure(*lock_roundtrip_vs_set(b)),
    "barrier_arrive_vs_update": lambda b: Figure(*barrier_arrive_vs_update(b)),
    "fan_in_vs_chord": lambda b: Figure(*fan_in_vs_chord(b)),
    # bench/cluster.py: a local cluster of three masters with a replica each
    "cluster_set_vs_single": lambda b: Figure(*b.cluster.set_vs_single()),
    "cluster_list_groups_scaling": lambda b: Figure(*b.cluster.list_groups_scaling()),
}


@contextmanager
def bench_session(sizes: Sizes) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="state-tasks-bench-") as folder:
        bench = Bench(sizes, Path(folder))
        try:
            yield bench
        finally:
            bench.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller rounds (under 3 minutes)")
    parser.add_argument("--only", help="comma-separated figure names (see bench/README.md)")
    args = parser.parse_args(argv)
    for variable in (
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "REDIS_URL",
        "STATE_CONFIG",
        "CELERY_RESULT_EXPIRES",
        "STATE_TASKS_CLEANUP_INTERVAL",
    ):
        os.environ.pop(variable, None)
    selected = list(FIGURES)
    if args.only:
        selected = [name.strip() for name in args.only.split(",")]
        unknown = set(selected) - set(FIGURES)
        if unknown:
            parser.error(f"unknown figures {sorted(unknown)}; known: {', '.join(FIGURES)}")
    figures: list[Figure] = []
    started = time.monotonic()
    with bench_session(QUICK if args.quick else FULL) as bench:
        for name in selected:
            gc.collect()
            produced = FIGURES[name](bench)
            for figure in produced if isinstance(produced, list) else [produced]:
                figures.append(figure)
                print(figure.line(), flush=True)
        baselines = {k: round(v, 3) for k, v in bench.baselines.items()}
    print(
        json.dumps(
            {
                "name": "baselines",
                "value": baselines,
                "detail": {
                    "seconds": round(time.monotonic() - started, 1),
                    "mode": "quick" if args.quick else "full",
                },
            }
        )
    )
    print()
    print(f"{'figure':<30} {'value':>8}  {'target':<8} ok")
    for figure in figures:
        verdict = "yes" if figure.ok else "NO"
        print(f"{figure.name:<30} {figure.value:>8.3f}  {figure.target:<8} {verdict}")
    for name, value in baselines.items():
        print(f"baseline {name:<38} {value:>12}")
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
