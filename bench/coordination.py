"""Coordination's figures (issue 27): what a lock, a barrier arrival and a fan-in cost
against the plain state calls and the Celery primitive they stand in for.

``python -m bench --only lock_roundtrip_vs_set,barrier_arrive_vs_update,fan_in_vs_chord``.
All on the bench's Redis deployment (one worker, prefork, 2 children; RedisAdapter; broker
and results on the bench's redis-server); see bench/README.md:

- ``lock_roundtrip_vs_set``: p50 of taking and releasing a lock through the worker (one
  ``state::lock`` round trip, then one ``state::unlock`` round trip with its token,
  sequential) ÷ p50 of one ``state::set`` round trip, interleaved.
- ``barrier_arrive_vs_update``: ``state::arrive`` tasks/s (distinct members of one barrier
  expecting 1,000,000, which never fires during the run; its ``then`` is ``bench::noop``)
  ÷ ``state::update`` tasks/s (one increment of one key), 600 in flight (300 with
  ``--quick``), interleaved rounds, every result collected.
- ``fan_in_vs_chord``: the time from sending ``state_tasks.fan_in`` of 1,000
  ``bench::noop`` members until its callback (a ``state::set`` of a key of its own) has
  written, ÷ the same for a Celery ``chord`` of the same members and callback (immutable),
  interleaved rounds; both wait by polling the callback's key.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from celery import chord
from celery.canvas import Signature

from bench.harness import BenchDeployment, median
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.coordination import fan_in

if TYPE_CHECKING:
    from bench.__main__ import Bench

FigureRow = tuple[str, float, str, dict[str, Any]]

VALUE = {"name": "Alice", "email": "alice@example.com", "preferences": {"theme": "dark"}}
#: The locks' time to live: far longer than a round trip, so none expires under its holder.
LOCK_TTL_MS = 30_000
#: The barrier of barrier_arrive_vs_update: never complete within a run.
BARRIER_EXPECTED = 1_000_000
#: barrier_arrive_vs_update's tasks in flight per round, at most (half the throughput
#: figures' with --quick: 300; 600 in a full run), so that its 10 rounds take seconds.
ARRIVE_IN_FLIGHT = 600
#: fan_in_vs_chord's members, and its rounds (3 with --quick, 5 in a full run).
FAN_IN_MEMBERS = 1000
#: How often fan_in_vs_chord looks for its callback's key (one script call on the state
#: Redis each): a few ms of resolution on rounds of a second or more.
POLL_S = 0.005


def _get(deployment: BenchDeployment, task: str, kwargs: dict[str, Any]) -> Any:
    return deployment.app.send_task(task, kwargs=kwargs).get(timeout=60, interval=0.001)


def lock_roundtrip_vs_set(bench: Bench) -> FigureRow:
    deployment = bench.deployment("redis")
    scope = f"bench-lock-{time.monotonic_ns()}"
    lock = {"scope": scope, "key": "lock"}
    lock_s: list[float] = []
    unlock_s: list[float] = []

    def lock_unlock() -> float:
        started = time.perf_counter()
        got = _get(deployment, "state::lock", lock | {"owner": "bench", "ttl_ms": LOCK_TTL_MS})
        locked = time.perf_counter()
        assert got["acquired"], got
        released = _get(deployment, "state::unlock", lock | {"token": got["token"]})
        done = time.perf_counter()
        assert released["released"], released
        lock_s.append(locked - started)
        unlock_s.append(done - locked)
        return done - started

    both_p50, set_p50 = bench.p50_pair(
        lock_unlock,
        lambda: deployment.round_trip_s(
            "state::set", {"scope": scope, "key": "value", "value": VALUE}
        ),
    )
    return (
        "lock_roundtrip_vs_set",
        both_p50 / set_p50,
        "<= 2.2",
        {
            "lock_unlock_p50_ms": round(both_p50 * 1000, 3),
            "set_p50_ms": round(set_p50 * 1000, 3),
            "lock_p50_ms": round(median(lock_s) * 1000, 3),
            "unlock_p50_ms": round(median(unlock_s) * 1000, 3),
            "round_trips": bench.sizes.round_trips,
        },
    )


def barrier_arrive_vs_update(bench: Bench) -> FigureRow:
    deployment = bench.deployment("redis")
    n = min(ARRIVE_IN_FLIGHT, bench.sizes.tasks // 2)
    scope = f"bench-barrier-{time.monotonic_ns()}"
    barrier = {
        "scope": scope,
        "key": "barrier",
        "expected": BARRIER_EXPECTED,
        "then": {"task": "bench::noop", "kwargs": {}},
    }
    update = {"scope": scope, "key": "counter", "ops": [{"increment": {"field": "n", "by": 1}}]}
    rounds = itertools.count()

    def arrivals(count: int) -> float:
        round_ = next(rounds)
        return deployment.throughput(
            "state::arrive", lambda i: barrier | {"member": f"r{round_}-m{i}"}, count
        )

    def updates(count: int) -> float:
        return deployment.throughput("state::update", lambda i: update, count)

    arrivals(50), updates(50)  # warm up: the barrier and the counter exist
    ratio, arrive_rates, update_rates = bench.interleaved_ratio(
        lambda: arrivals(n), lambda: updates(n)
    )
    record = _get(deployment, "state::get", {"scope": scope, "key": "barrier"})["barrier"]
    total = 50 + n * bench.sizes.rounds
    assert record["arrived"] == total and not record["fired"], (record, total)
    return (
        "barrier_arrive_vs_update",
        ratio,
        ">= 0.8",
        {
            "arrive_per_s": round(median(arrive_rates)),
            "update_per_s": round(median(update_rates)),
            "in_flight": n,
            "arrived": record["arrived"],
        },
    )


def fan_in_vs_chord(bench: Bench) -> FigureRow:
    deployment = bench.deployment("redis")
    app = deployment.app
    adapter = RedisAdapter(redis_url=bench.server.url(2), key_prefix="bench")  # its state
    scope = f"bench-fan-in-{time.monotonic_ns()}"
    runs = itertools.count()
    sent: dict[str, list[float]] = {"fan_in": [], "chord": []}  # the client's sending
    rounds = 3 if bench.sizes.round_trips < 500 else bench.sizes.rounds

    def members(count: int) -> list[Signature]:
        return [app.signature("bench::noop") for _ in range(count)]

    def callback(key: str) -> Signature:
        return app.signature(
            "state::set", kwargs={"scope": scope, "key": key, "value": 1}, immutable=True
        )

    def wait_for(key: str, timeout_s: float = 300) -> float:
        deadline = time.monotonic() + timeout_s
        while adapter.get(scope, key) is None:
            assert time.monotonic() < deadline, f"the callback {key} did not run"
            time.sleep(POLL_S)
        return time.perf_counter()

    def forget(task_ids: list[str]) -> None:
        """Drop the members' results and this client's subscriptions to them (untimed)."""
        for task_id in task_ids:
            app.AsyncResult(task_id).forget()

    def run_fan_in(count: int) -> float:
        key = f"fan-in-{next(runs)}"
        started = time.perf_counter()
        started_fan_in = fan_in(members(count), callback(key), scope=scope, key=key, app=app)
        sent["fan_in"].append(time.perf_counter() - started)
        elapsed = wait_for(key) - started
        forget(started_fan_in.task_ids)
        return elapsed

    def run_chord(count: int) -> float:
        key = f"chord-{next(runs)}"
        started = time.perf_counter()
        result = chord(members(count), callback(key), app=app).apply_async()
        sent["chord"].append(time.perf_counter() - started)
        elapsed = wait_for(key) - started
        forget([member.id for member in result.parent.results] + [result.id])
        return elapsed

    try:
        run_fan_in(20), run_chord(20)  # warm up
        fan_in_s, chord_s = [], []
        for _ in range(rounds):
            chord_s.append(run_chord(FAN_IN_MEMBERS))
            fan_in_s.append(run_fan_in(FAN_IN_MEMBERS))
    finally:
        adapter.close()
    return (
        "fan_in_vs_chord",
        median(fan_in_s) / median(chord_s),
        "<= 1.5",
        {
            "fan_in_s": round(median(fan_in_s), 3),
            "chord_s": round(median(chord_s), 3),
            "send_s": {side: round(median(times[1:]), 3) for side, times in sent.items()},
            "members": FAN_IN_MEMBERS,
            "rounds": rounds,
            "fan_in_rounds_s": [round(s, 3) for s in fan_in_s],
            "chord_rounds_s": [round(s, 3) for s in chord_s],
        },
    )
