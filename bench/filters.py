"""Declarative trigger filters' figures (issue 26): what a filter saves against the
equivalent condition function, and what 10,000 filtered triggers that cannot match cost
a write.

``python -m bench --only filter_messages_vs_condition,filter_match_10k``. See bench/README.md:

- ``filter_messages_vs_condition``: a worker (prefork, 2 children; its state on the bench's
  Redis) whose **broker is a redis-server of its own**, so that server's ``INFO
  commandstats`` counts this figure's messages only. 10,000 ``state::set`` tasks (2,000 with
  ``--quick``) over 100 existing keys, of which 1% change the watched field (``email``),
  once with a trigger whose ``when`` is ``{"all": [{"event_types": ["state:updated"]},
  {"changed": ["email"]}]}`` and once with the same trigger through the equivalent
  condition function (``bench::emailChanged``, the seed's). Broker messages are the
  ``LPUSH`` and ``RPUSH`` calls of the broker server (kombu's Redis transport publishes a
  message with one ``LPUSH``; task events and results do not push) between before the
  writes and once the queue is empty with nothing unacknowledged, less the writes' own
  messages (one each): the trigger work's messages. The figure is those with the filter ÷
  those with the condition. The handler counts its runs (both must be the 1%).
- ``filter_match_10k``: as ``trigger_match_10k``, with a ``when`` on each of the 10,000
  triggers (other scopes and keys: the match index never hands them to the filter); both
  sides after the same 20 warm-up writes (each worker process reloads its index), in 7
  rounds of (none, with); the median of the rounds' ratios.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis

from bench.harness import BenchDeployment, adapter_yaml, median
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.contrib.servers import RedisServer
from state_tasks.triggers.registry import TriggerRegistry

if TYPE_CHECKING:
    from bench.__main__ import Bench

FigureRow = tuple[str, float, str, dict[str, Any]]

#: The bench server's db holding filter_messages_vs_condition's state.
STATE_DB = 14
#: Keys the writes rotate over; in each round of KEYS writes one changes its email (1%).
KEYS = 100
#: filter_match_10k's rounds (none, then with the 10,000 triggers), at least.
MATCH_ROUNDS = 7
EMAIL_CHANGED = {"all": [{"event_types": ["state:updated"]}, {"changed": ["email"]}]}


def _pushes(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        int(stats[name]["calls"]) for name in ("cmdstat_lpush", "cmdstat_rpush") if name in stats
    )


def _drained(client: Any) -> bool:
    """The default queue is empty and no message is delivered but unacknowledged."""
    waiting = sum(
        client.llen(key) for key in client.scan_iter("celery*") if client.type(key) == b"list"
    )
    return bool(waiting == 0 and client.hlen("unacked") == 0)


def _writes(deployment: BenchDeployment, scope: str, n: int) -> float:
    """``n`` state::set tasks over KEYS keys, one in KEYS changing its email; seconds."""
    emails = [0] * KEYS
    started = time.perf_counter()
    results = []
    for i in range(n):
        key = i % KEYS
        if key == (i // KEYS) % KEYS:  # one key per round of KEYS writes: 1%
            emails[key] += 1
        value = {"name": "Bo", "email": f"k{key}-{emails[key]}@example.com", "n": i}
        results.append(
            deployment.app.send_task(
                "state::set", kwargs={"scope": scope, "key": f"k{key}", "value": value}
            )
        )
    for result in results:
        result.get(timeout=600)
    return time.perf_counter() - started


def filter_messages_vs_condition(bench: Bench) -> FigureRow:
    writes = 10 * bench.sizes.tasks // 3  # 10,000 (2,000 with --quick)
    broker = RedisServer(bench.workdir / "filters-broker")
    state = adapter_yaml("redis", redis_url=bench.server.url(STATE_DB), key_prefix="filters")
    # Broker and results in db 0, the handler's counts in db 1 (INCR: not a push)
    deployment = BenchDeployment(
        broker, bench.workdir / "filters", 0, state, ("--concurrency", "2"), record_db=1
    )
    client: Any = redis.Redis.from_url(broker.url(0))
    record: Any = redis.Redis.from_url(broker.url(1))
    measured: dict[str, dict[str, Any]] = {}
    try:
        for kind in ("filter", "condition"):
            scope = f"filters-{kind}-{time.monotonic_ns()}"
            for key in range(KEYS):  # the keys exist: every write is an update
                deployment.app.send_task(
                    "state::set",
                    kwargs={
                        "scope": scope,
                        "key": f"k{key}",
                        "value": {"name": "Bo", "email": f"k{key}-0@example.com", "n": -1},
                    },
                ).get(timeout=60)
            config: dict[str, Any] = {"scope": scope}
            if kind == "filter":
                config["when"] = EMAIL_CHANGED
            else:
                config["condition_function_id"] = "bench::emailChanged"
            handle = deployment.iii.register_trigger(
                {"type": "state", "function_id": "bench::countHandler", "config": config}
            )
            try:
                before = _pushes(client)
                seconds = _writes(deployment, scope, writes)
                expected = writes // KEYS
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    handled = int(record.get(f"bench:handled:{scope}") or 0)
                    if handled >= expected and _drained(client):
                        time.sleep(0.3)
                        if _drained(client):
                            break
                    time.sleep(0.1)
                pushes = _pushes(client) - before
            finally:
                handle.unregister()
            measured[kind] = {
                "broker_pushes": pushes,
                "trigger_messages": pushes - writes,
                "handler_runs": int(record.get(f"bench:handled:{scope}") or 0),
                "writes_s": round(seconds, 1),
            }
    finally:
        deployment.close()
        broker.stop()
    for kind, values in measured.items():
        assert values["handler_runs"] == writes // KEYS, (kind, values)
    ratio = measured["filter"]["trigger_messages"] / max(
        1, measured["condition"]["trigger_messages"]
    )
    return (
        "filter_messages_vs_condition",
        ratio,
        "<= 0.05",
        {
            "writes": writes,
            "changing_the_field": writes // KEYS,
            "with_filter": measured["filter"],
            "with_condition": measured["condition"],
            "counted": "LPUSH+RPUSH calls of the broker's own redis-server, less one per write",
        },
    )


def filter_match_10k(bench: Bench) -> FigureRow:
    deployment = bench.deployment("redis")
    registry = TriggerRegistry(RedisAdapter(redis_url=bench.server.url(2), key_prefix="bench"))
    specs = [
        {
            "type": "state",
            "function_id": "bench::handler",
            "config": {
                "scope": f"elsewhere-{i}",
                "key": f"k{i % 7}",
                "when": {
                    "all": [
                        {"event_types": ["state:updated"]},
                        {"changed": ["email", ["address", "city"]]},
                        {"path": "status", "in": ["paid", f"s{i}"]},
                    ]
                },
            },
        }
        for i in range(10_000)
    ]
    n = bench.sizes.tasks

    def measure() -> float:
        return deployment.throughput(
            "state::set", lambda i: {"scope": "bench-filter-match", "key": f"k{i}", "value": i}, n
        )

    def warm_up() -> None:  # every worker process reloads its index once, on both sides
        deployment.throughput(
            "state::set", lambda i: {"scope": "bench-filter-match", "key": "w", "value": i}, 20
        )

    def without_triggers() -> float:
        warm_up()
        return measure()

    def with_triggers() -> float:
        ids = [registry.register(spec).id for spec in specs]
        warm_up()
        try:
            return measure()
        finally:
            for trigger_id in ids:
                registry.unregister(trigger_id)

    # Rounds of (none, with), each pair seconds apart; the figure is the median of the
    # rounds' ratios: on two shared cores the set rate moves by a third between rounds.
    with_values, without = [], []
    for _ in range(max(MATCH_ROUNDS, bench.sizes.rounds)):
        without.append(without_triggers())
        with_values.append(with_triggers())
    ratios = [a / b for a, b in zip(with_values, without, strict=True)]
    return (
        "filter_match_10k",
        median(ratios),
        ">= 0.9",
        {
            "sets_per_s_with_10k_filtered": round(median(with_values)),
            "sets_per_s_with_none": round(median(without)),
            "ratio_of_medians": round(median(with_values) / median(without), 3),
            "round_ratios": [round(r, 3) for r in ratios],
        },
    )
