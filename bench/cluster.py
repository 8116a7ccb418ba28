"""Redis Cluster figures: what state on a cluster costs against one Redis.

``python -m bench --only cluster_set_vs_single,cluster_list_groups_scaling``. Starts a local
cluster of three masters with one replica each (``state_tasks.contrib.servers.RedisCluster``)
beside the bench's own Redis, both on loopback:

- ``cluster_set_vs_single``: p50 of one ``state::set`` round trip (``.delay().get()``)
  through a worker whose state is on the single Redis ÷ the same through a worker whose
  state is on the cluster; both workers on the same broker server, the rounds interleaved.
  The adapter-level p50s (``RedisAdapter.set`` alone) are in the detail.
- ``cluster_list_groups_scaling``: ``list_groups`` time on the cluster with 100 scopes ×
  ``groups_keys`` keys ÷ with 100 scopes × 10 keys (flat in the number of keys: the groups
  index is read, never the data).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.harness import BenchDeployment, adapter_yaml, median
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisCluster

if TYPE_CHECKING:
    from bench.__main__ import Bench

FigureRow = tuple[str, float, str, dict[str, Any]]

VALUE = {"name": "Alice", "email": "alice@example.com", "preferences": {"theme": "dark"}}
#: The broker db of the worker whose state is on the cluster (the bench's Redis).
CLUSTER_BROKER_DB = 11


class ClusterFigures:
    """The cluster, started on first use and stopped with the bench."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._cluster: RedisCluster | None = None
        self._deployment: BenchDeployment | None = None

    @property
    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            self._cluster = RedisCluster(self.bench.workdir / "cluster", masters=3, replicas=1)
        return self._cluster

    def deployment(self) -> BenchDeployment:
        if self._deployment is None:
            state = adapter_yaml("redis", redis_url=self.cluster.cluster_url(), key_prefix="bench")
            self._deployment = BenchDeployment(
                self.bench.server,
                self.bench.workdir / "cluster-worker",
                CLUSTER_BROKER_DB,
                state,
                ("--concurrency", "2"),
            )
        return self._deployment

    def close(self) -> None:
        if self._deployment is not None:
            self._deployment.close()
        if self._cluster is not None:
            self._cluster.stop()

    def set_vs_single(self) -> FigureRow:
        single, on_cluster = self.bench.deployment("redis"), self.deployment()
        run = f"cluster-vs-single-{time.monotonic_ns()}"
        counter = iter(range(10**9))

        def set_through(deployment: BenchDeployment) -> float:
            key = f"k{next(counter) % 1000}"
            return deployment.round_trip_s("state::set", {"scope": run, "key": key, "value": VALUE})

        cluster_p50, single_p50 = self.bench.p50_pair(
            lambda: set_through(on_cluster), lambda: set_through(single)
        )
        adapters = (
            RedisAdapter(redis_url=self.bench.server.url(2), key_prefix="bench-direct"),
            RedisAdapter(redis_url=self.cluster.cluster_url(), key_prefix="bench-direct"),
        )
        try:
            direct = [self._adapter_set_p50(adapter) for adapter in adapters]
        finally:
            for adapter in adapters:
                adapter.close()
        return (
            "cluster_set_vs_single",
            single_p50 / cluster_p50,
            ">= 0.85",
            {
                "cluster_p50_ms": round(cluster_p50 * 1000, 3),
                "single_p50_ms": round(single_p50 * 1000, 3),
                "adapter_set_p50_us": {
                    "single": round(direct[0] * 1e6, 1),
                    "cluster": round(direct[1] * 1e6, 1),
                },
                "cluster": "3 masters, 1 replica each, loopback",
            },
        )

    def _adapter_set_p50(self, adapter: RedisAdapter) -> float:
        times = []
        for i in range(self.bench.sizes.round_trips * 4):
            started = time.perf_counter()
            adapter.set(f"direct-{i % 50}", f"k{i % 1000}", '{"n": 1}')
            times.append(time.perf_counter() - started)
        return median(times[100:])

    def list_groups_scaling(self) -> FigureRow:
        url = self.cluster.cluster_url()
        small = RedisAdapter(redis_url=url, key_prefix="small")
        big = RedisAdapter(redis_url=url, key_prefix="big")
        keys_per_scope = self.bench.sizes.groups_keys
        try:
            for adapter, keys in ((small, 10), (big, keys_per_scope)):
                for s in range(100):
                    scope = f"scope-{s:03d}"
                    adapter.set(scope, "first", "1")  # the adapter indexes the scope
                    pipe = adapter.client.pipeline(transaction=False)
                    for start in range(1, keys, 1000):  # the bulk of the keys, fast
                        chunk = range(start, min(keys, start + 1000))
                        fields = {f"k{i}": '{"n": 1}' for i in chunk}
                        pipe.hset(adapter.layout.scope_key(scope), mapping=fields)
                    pipe.execute()
            assert big.client.hlen(big.layout.scope_key("scope-000")) == keys_per_scope

            def time_calls(adapter: RedisAdapter) -> float:
                started = time.perf_counter()
                for _ in range(200):
                    groups = adapter.list_groups()
                assert len(groups) == 100, len(groups)
                return (time.perf_counter() - started) / 200

            ratio, big_times, small_times = self.bench.interleaved_ratio(
                lambda: time_calls(big), lambda: time_calls(small)
            )
        finally:
            small.close()
            big.close()
        return (
            "cluster_list_groups_scaling",
            ratio,
            "<= 2.0",
            {
                "big_ms": round(median(big_times) * 1000, 4),
                "small_ms": round(median(small_times) * 1000, 4),
                "big": f"100 scopes x {keys_per_scope} keys",
                "small": "100 scopes x 10 keys",
            },
        )
