"""The change log's figures (issue 23): what it costs a write, how late a watcher sees a
change, and what it keeps per entry beyond the event itself.

``python -m bench --only changelog_set_cost,watch_lag_p99_ms,changelog_bytes_per_entry``.
All on the bench's own redis-server (a free port, never 6379); see bench/README.md:

- ``changelog_set_cost``: ``RedisAdapter.set`` ops/s with the change log (the defaults,
  the stream already at ``max_entries``, so every write also trims) ÷ the same with
  ``use_change_log(None)``: the same server, db, scope, keys and value, in short
  alternating rounds; the median of the rounds' ratios. The server's µs per script call
  of each (``INFO commandstats``) are in the detail.
- ``watch_lag_p99_ms``: one writer sends ``state::set`` tasks at a steady rate to the
  Redis worker (prefork, 2 children) and notes when each result came back (the change is
  acknowledged); a ``state_tasks.watch(after="now")`` consumer in a thread of this process
  (its own Celery app, the default ``poll_interval_s``) notes when it has each change: the
  99th percentile of (had − acknowledged), in ms. ``watch_lag_direct_p99_ms``: the same
  with ``watch(direct=True)`` reading the worker's own ``state.yaml`` (the RedisAdapter).
- ``changelog_bytes_per_entry``: 1,000 keys written, then N changes of them through
  ``StateService.call('state::set')`` with an operation id (as a Celery task has), so
  each is an update with an old and a new value; the growth of ``MEMORY USAGE
  <prefix>:log SAMPLES 0`` (exact) ÷ N − the mean length of an entry's event as
  ``state::changes`` returns it (compact JSON, the cursor left out). ``_1kb``: the same
  with ~1 KB values. ``_kv``: the KvStore, with ``tracemalloc``: the traced growth over
  the same N changes with the log, less the same without it (what the log alone keeps),
  ÷ N − the mean event JSON length.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis

from bench.harness import median, timed_ops_per_s
from state_tasks import create_app, watch
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.batch import BatchOp
from state_tasks.core.changes import DEFAULT_MAX_ENTRIES
from state_tasks.core.service import StateService
from state_tasks.watching import DEFAULT_POLL_INTERVAL_S

if TYPE_CHECKING:
    from bench.__main__ import Bench

FigureRow = tuple[str, float, str, dict[str, Any]]

VALUE = {"name": "Alice", "email": "alice@example.com", "preferences": {"theme": "dark"}}
VALUE_JSON = json.dumps(VALUE, separators=(",", ":"))
#: The bench server's dbs these figures use (the others are bench/__main__.py's).
SET_COST_DB = 12
BYTES_DB = 13
#: changelog_set_cost: sets per round, and as many as SET_COST_ROUNDS rounds of
#: adapter_ops sets would make (each round alternating: without the log, with it).
SET_COST_CHUNK = 1000
SET_COST_ROUNDS = 9
#: Changes per second the watch_lag writer sends (it writes 2 x round_trips of them: 1,000,
#: or 300 with --quick).
WATCH_RATE_PER_S = 25
#: changelog_bytes_per_entry: the changes rotate over this many keys (in 10 scopes).
BYTES_KEYS = 1000
#: The stream-node-max-bytes of the variant in changelog_bytes_per_entry's detail.
BIG_STREAM_NODE_BYTES = 65536
#: The padding of the values: ~150 bytes of JSON, and ~1 KB.
SMALL_PAD, LARGE_PAD = 40, 900


def _script_stats(client: Any) -> tuple[int, float]:
    """(calls, µs) of the script commands the server ran so far."""
    stats = client.info("commandstats")
    calls, usec = 0, 0.0
    for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"):
        if name in stats:
            calls += int(stats[name]["calls"])
            usec += float(stats[name]["usec"])
    return calls, usec


def changelog_set_cost(bench: Bench) -> FigureRow:
    url = bench.server.url(SET_COST_DB)
    raw: Any = redis.Redis.from_url(url)
    raw.flushdb()
    logged = RedisAdapter(redis_url=url, key_prefix="log-on")
    unlogged = RedisAdapter(redis_url=url, key_prefix="log-off")
    unlogged.use_change_log(None)
    n = bench.sizes.adapter_ops
    try:
        # The log at its size already (the default max_entries), so each write also trims:
        # the steady state of a store that has been busy for a while.
        for first in range(0, DEFAULT_MAX_ENTRIES, 1000):
            logged.batch(
                "fill",
                [
                    BatchOp("set", f"k{i}", value_json=VALUE_JSON)
                    for i in range(first, first + 1000)
                ],
            )
        server_us: dict[str, list[float]] = {"with": [], "without": [], "warm-up": []}

        def rate(adapter: RedisAdapter, which: str, count: int) -> float:
            calls, usec = _script_stats(raw)
            ops = timed_ops_per_s(lambda i: adapter.set("bench", f"k{i % 1000}", VALUE_JSON), count)
            calls2, usec2 = _script_stats(raw)
            server_us[which].append((usec2 - usec) / max(1, calls2 - calls))
            return ops

        rate(logged, "warm-up", 1000), rate(unlogged, "warm-up", 1000)  # scripts, keys
        # Many short rounds, alternating: a shared machine's load changes over seconds, so
        # both sides see the same mix of it.
        rounds = SET_COST_ROUNDS * n // SET_COST_CHUNK
        with_log, without_log = [], []
        for _ in range(rounds):
            without_log.append(rate(unlogged, "without", SET_COST_CHUNK))
            with_log.append(rate(logged, "with", SET_COST_CHUNK))
        log_length = raw.xlen(logged.layout.log_key(logged.layout.tags[0]))
    finally:
        logged.close()
        unlogged.close()
        raw.flushdb()
    bench.baselines["adapter_set_no_log_ops_per_s"] = median(without_log)
    # The median of each round's ratio (the two halves of a round are a tenth of a second
    # apart): on two shared cores the rate jumps between two levels (about 8,000 and
    # 17,000 sets/s: the client and its Redis on one core or on two), and a ratio of the
    # medians over all rounds depends on which rounds fell on which level.
    ratios = [a / b for a, b in zip(with_log, without_log, strict=True)]
    return (
        "changelog_set_cost",
        median(ratios),
        ">= 0.8",
        {
            "set_per_s_with_log": round(median(with_log)),
            "set_per_s_without_log": round(median(without_log)),
            "ratio_of_medians": round(median(with_log) / median(without_log), 3),
            "server_us_per_set": {
                "with_log": round(median(server_us["with"]), 2),
                "without_log": round(median(server_us["without"]), 2),
            },
            "log_entries": log_length,
            "rounds": rounds,
            "ops_per_round": SET_COST_CHUNK,
        },
    )


# -- watch lag --------------------------------------------------------------------------


@contextmanager
def _state_config(path: str) -> Iterator[None]:
    """``STATE_CONFIG`` set for ``watch(direct=True)`` (python -m bench clears it)."""
    previous = os.environ.get("STATE_CONFIG")
    os.environ["STATE_CONFIG"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STATE_CONFIG", None)
        else:
            os.environ["STATE_CONFIG"] = previous


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _watch_lag(bench: Bench, direct: bool) -> tuple[float, dict[str, Any]]:
    """Lags (ms) from a change's acknowledgement to a watcher having it; the p99 and detail."""
    deployment = bench.deployment("redis")
    changes = 2 * bench.sizes.round_trips
    scope = f"watch-lag-{'direct' if direct else 'workers'}-{time.monotonic_ns()}"
    seen: dict[str, float] = {}
    seen_lock = threading.Condition()
    watch_app = None
    if direct:
        with _state_config(str(bench.workdir / "redis" / "state.yaml")):
            watcher = watch(scope=scope, after="now", direct=True)
    else:  # its own app: the writer's waits for its results meanwhile
        watch_app = create_app(
            f"bench-watch-{scope}",
            broker_url=deployment.broker_url,
            result_backend=deployment.broker_url,
        )
        watcher = watch(scope=scope, after="now", app=watch_app)
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            for change in watcher:
                at = time.perf_counter()
                with seen_lock:
                    seen.setdefault(change["key"], at)
                    seen_lock.notify_all()
                if change["key"] == last_key:
                    return
        except BaseException as e:  # reported by the writer
            failure.append(e)
            with seen_lock:
                seen_lock.notify_all()

    def wait_seen(key: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with seen_lock:
            while key not in seen and not failure and time.monotonic() < deadline:
                seen_lock.wait(0.1)
        if failure:
            raise failure[0]
        assert key in seen, f"watch() did not yield {key} within {timeout_s} s"

    last_key = f"k{changes - 1}"
    consumer = threading.Thread(target=consume, name="bench-watch", daemon=True)
    consumer.start()
    acked: dict[str, float] = {}
    try:
        # after="now" is resolved by the watcher's first poll (not by watch() itself): the
        # changes start once it has polled, and are measured once it has one.
        deadline = time.monotonic() + 60
        while watcher.cursor == "now" and not failure and time.monotonic() < deadline:
            time.sleep(0.01)
        deployment.round_trip_s("state::set", {"scope": scope, "key": "start", "value": 0})
        wait_seen("start", 60)
        period = 1 / WATCH_RATE_PER_S
        next_at = time.perf_counter()
        for i in range(changes):
            next_at += period
            key = f"k{i}"
            deployment.app.send_task(
                "state::set", kwargs={"scope": scope, "key": key, "value": {"i": i, **VALUE}}
            ).get(timeout=60, interval=0.001)
            acked[key] = time.perf_counter()
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        wait_seen(last_key, 60)
    finally:
        # The consumer ends by itself after the last change; close() from this thread only
        # when it did not (a direct watcher's close() under a poll in progress closes the
        # connection that poll uses: a warning, or a traceback from redis-py's thread).
        consumer.join(5)
        watcher.close()
        consumer.join(10)
        if watch_app is not None:
            watch_app.close()
    with seen_lock:
        lags = [(seen[key] - acked[key]) * 1000 for key in acked]
    missing = [key for key in acked if key not in seen]
    assert not missing, f"watch() missed {len(missing)} changes"
    clamped = [max(0.0, lag) for lag in lags]
    p99 = _percentile(clamped, 0.99)
    return p99, {
        "changes": changes,
        "rate_per_s": WATCH_RATE_PER_S,
        "p50_ms": round(_percentile(clamped, 0.5), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(clamped), 1),
        "seen_before_ack": sum(1 for lag in lags if lag < 0),
        "poll_interval_s": DEFAULT_POLL_INTERVAL_S,
        "through": "watch(direct=True): the worker's state.yaml (RedisAdapter)"
        if direct
        else "watch(): state::changes tasks to the Redis worker (prefork, 2 children)",
    }


def watch_lag(bench: Bench) -> list[FigureRow]:
    through_workers, detail = _watch_lag(bench, direct=False)
    direct, direct_detail = _watch_lag(bench, direct=True)
    return [
        ("watch_lag_p99_ms", through_workers, "<= 250", detail),
        ("watch_lag_direct_p99_ms", direct, "<= 250", direct_detail),
    ]


# -- bytes per entry --------------------------------------------------------------------


def _value(i: int, pad: int) -> dict[str, Any]:
    """A small user record; ~150 bytes of JSON with pad 40, ~1 KB with 900."""
    return {
        "name": f"user-{i:07d}",
        "email": f"user-{i:07d}@example.com",
        "visits": i,
        "plan": "pro",
        "tags": ["a", "b"],
        "bio": "x" * pad,
    }


def _write_changes(service: StateService, first: int, count: int, pad: int) -> None:
    for i in range(first, first + count):
        service.call(
            "state::set",
            {"scope": f"users-{i % 10}", "key": f"u{i % BYTES_KEYS}", "value": _value(i, pad)},
            op_id=str(uuid.uuid4()),
        )


def _all_changes(service: StateService) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        payload: dict[str, Any] = {"limit": 1000}
        if cursor is not None:
            payload["after"] = cursor
        answer = service.call("state::changes", payload)
        found += answer["changes"]
        cursor = answer["cursor"]
        if len(answer["changes"]) < 1000:
            return found


def _event_json_bytes(changes: list[dict[str, Any]]) -> float:
    """The mean length of an entry's event: compact JSON, without its cursor."""
    return statistics.fmean(
        len(
            json.dumps(
                {name: value for name, value in change.items() if name != "cursor"},
                separators=(",", ":"),
            ).encode()
        )
        for change in changes
    )


def _stream_payload_bytes(raw: Any, log_key: str, first_id: bytes) -> int:
    """The bytes of the fields' values of the entries after ``first_id`` (what XADD was
    given: kind, scope, key, old and new text, version, event id)."""
    total, start = 0, b"(" + first_id
    while True:
        rows = raw.xrange(log_key, min=start, count=1000)
        if not rows:
            return total
        total += sum(len(value) for _, fields in rows for value in fields.values())
        start = b"(" + rows[-1][0]


def _redis_bytes_per_entry(
    bench: Bench, n: int, pad: int, node_max_bytes: int | None = None
) -> tuple[float, dict[str, Any]]:
    """``node_max_bytes``: the server's ``stream-node-max-bytes`` meanwhile (default 4096)."""
    url = bench.server.url(BYTES_DB)
    raw: Any = redis.Redis.from_url(url)
    raw.flushdb()
    default_node_max = raw.config_get("stream-node-max-bytes")["stream-node-max-bytes"]
    if node_max_bytes is not None:
        raw.config_set("stream-node-max-bytes", node_max_bytes)
    adapter = RedisAdapter(redis_url=url, key_prefix="bytes")
    log_key = adapter.layout.log_key(adapter.layout.tags[0])
    try:
        service = StateService(adapter)
        # Every key written once first, so that the N measured changes are updates with an
        # old and a new value (the steady state), whatever N.
        _write_changes(service, 0, BYTES_KEYS, pad)
        before = int(raw.memory_usage(log_key, samples=0))
        last_id = raw.xrevrange(log_key, count=1)[0][0]
        _write_changes(service, BYTES_KEYS, n, pad)
        after = int(raw.memory_usage(log_key, samples=0))
        changes = _all_changes(service)[BYTES_KEYS:]
        assert len(changes) == n, (len(changes), n)
        payload = _stream_payload_bytes(raw, log_key, last_id)
        nodes = raw.xinfo_stream(log_key)["radix-tree-keys"]
        node_config = raw.config_get("stream-node-max-*")
    finally:
        adapter.close()
        raw.flushdb()
        raw.config_set("stream-node-max-bytes", default_node_max)
    per_entry = (after - before) / n
    event = _event_json_bytes(changes)
    return per_entry - event, {
        "entries": n,
        "value_json_bytes": len(json.dumps(_value(0, pad), separators=(",", ":"))),
        "stream_bytes_per_entry": round(per_entry, 1),
        "event_json_bytes": round(event, 1),
        "field_values_bytes_per_entry": round(payload / n, 1),
        "stream_nodes": nodes,
        "entries_per_node": round((n + BYTES_KEYS) / nodes, 2),
        "server_config": node_config,
    }


def _kv_traced_growth(n: int, pad: int, with_log: bool) -> tuple[int, list[dict[str, Any]]]:
    store = KvStore()
    if not with_log:
        store.use_change_log(None)
    store.open()
    service = StateService(store)
    try:
        # Traced from before the live data is written (see bench/soak.py).
        tracemalloc.start()
        try:
            _write_changes(service, 0, BYTES_KEYS, pad)  # every key, at its full size
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            _write_changes(service, BYTES_KEYS, n, pad)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        changes = _all_changes(service)[-n:] if with_log else []
    finally:
        store.close()
    return after - before, changes


def _kv_bytes_per_entry(n: int, pad: int) -> tuple[float, dict[str, Any]]:
    without, _ = _kv_traced_growth(n, pad, with_log=False)
    with_log, changes = _kv_traced_growth(n, pad, with_log=True)
    per_entry = (with_log - without) / n
    event = _event_json_bytes(changes)
    return per_entry - event, {
        "entries": n,
        "log_bytes_per_entry": round(per_entry, 1),
        "event_json_bytes": round(event, 1),
        "includes": "the LogEntry objects and what they alone keep alive (the old and new "
        "texts, the event id, the ints), the list's slots; traced growth with the log less "
        "the same changes without it (the operation records cancel out)",
    }


def bytes_per_entry(bench: Bench) -> list[FigureRow]:
    n = max(5000, bench.sizes.adapter_ops)
    small, small_detail = _redis_bytes_per_entry(bench, n, SMALL_PAD)
    large, large_detail = _redis_bytes_per_entry(bench, n, LARGE_PAD)
    # The same with the server's stream nodes up to 64 KB (a server setting, not the
    # adapter's): a ~2 KB entry no longer takes a 4 KB node of its own.
    for detail, pad in ((small_detail, SMALL_PAD), (large_detail, LARGE_PAD)):
        beyond, bigger = _redis_bytes_per_entry(bench, n, pad, BIG_STREAM_NODE_BYTES)
        detail[f"with_stream_node_max_bytes_{BIG_STREAM_NODE_BYTES}"] = {
            "beyond_event_json": round(beyond, 1),
            "stream_bytes_per_entry": bigger["stream_bytes_per_entry"],
            "entries_per_node": bigger["entries_per_node"],
        }
    kv_small, kv_detail = _kv_bytes_per_entry(n, SMALL_PAD)
    kv_large, kv_large_detail = _kv_bytes_per_entry(n, LARGE_PAD)
    kv_detail["with_1kb_values"] = {
        "beyond_event_json": round(kv_large, 1),
        **{k: v for k, v in kv_large_detail.items() if k != "includes"},
    }
    # The target is the Redis log of ordinary (small) values. The 1 KB row and the
    # KvStore's are reported without one: with Redis's default stream-node-max-bytes
    # (4096) an entry of 2 KB of fields fills a stream node of its own (see the detail and
    # bench/README.md), and the KvStore keeps the old and the new text of each entry.
    large_detail["note"] = "reported, no target (see bench/README.md)"
    kv_detail["note"] = "reported, no target (see bench/README.md)"
    return [
        ("changelog_bytes_per_entry", small, "<= 96", small_detail),
        ("changelog_bytes_per_entry_1kb", large, "<= 100000", large_detail),
        ("changelog_bytes_per_entry_kv", kv_small, "<= 100000", kv_detail),
    ]
