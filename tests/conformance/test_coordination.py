"""Locks, once-guards' records and barriers (issue 27) on every adapter, through the
StateService: ``state::lock``, ``state::extend``, ``state::unlock``, ``state::arrive``.

What a user relies on: one holder at a time, tokens that only grow (across expiries,
deletes and take-overs), only the holder's token extends or releases, a redelivered call
answers what it answered; a barrier counts each member once, concurrent arrivals included,
and sends its ``then`` once, never on a repeat; bad input is refused and writes nothing.

Through real workers, with SIGKILLed children: tests/integration/test_coordination_workers.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import Recorder

from state_tasks.adapters.base import StateAdapter
from state_tasks.core.coordination import arrived_key, then_task_id
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService


class Sent:
    """The barrier callbacks a service sent: ``(task, kwargs, task_id)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, kwargs: dict[str, Any], task_id: str) -> None:
        with self.lock:
            self.calls.append((name, kwargs, task_id))


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def coord(adapter: StateAdapter, events: Recorder, sent: Sent) -> StateService:
    return StateService(adapter, on_change=events, send_task=sent)


def lock(
    service: StateService, key: str, owner: str, ttl_ms: int = 10_000, op: str | None = None
) -> Any:
    payload = {"scope": "locks", "key": key, "owner": owner, "ttl_ms": ttl_ms}
    return service.call("state::lock", payload, op or uuid.uuid4().hex)


def unlock(service: StateService, key: str, token: int, op: str | None = None) -> bool:
    payload = {"scope": "locks", "key": key, "token": token}
    return service.call("state::unlock", payload, op or uuid.uuid4().hex)["released"]  # type: ignore[no-any-return]


def extend(service: StateService, key: str, token: int, ttl_ms: int = 10_000) -> Any:
    payload = {"scope": "locks", "key": key, "token": token, "ttl_ms": ttl_ms}
    return service.call("state::extend", payload, uuid.uuid4().hex)


def test_one_holder_and_only_its_token_extends_or_releases(
    coord: StateService, events: Recorder
) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    first = lock(coord, key, "alice", 5_000)
    assert first["acquired"] is True and first["owner"] == "alice"
    assert 4_000 < first["expires_in_ms"] <= 5_000  # what is left, read after taking it
    token = first["token"]
    # Another owner is told who holds it and for how long; it gets no token.
    other = lock(coord, key, "bob", 5_000)
    assert other["acquired"] is False and other["owner"] == "alice"
    assert "token" not in other and 0 < other["expires_in_ms"] <= 5_000
    # The lock is visible as what it is, with its token as the key's version.
    entry = coord.call("state::get", {"scope": "locks", "key": key, "with_version": True})
    assert entry["value"] == {"lock": {"owner": "alice", "ttl_ms": 5_000}}
    assert entry["version"] == token and 0 < entry["expires_in_ms"] <= 5_000
    # A wrong token neither extends nor releases; the holder's does.
    assert extend(coord, key, token + 1000) == {"extended": False, "expires_in_ms": None}
    assert unlock(coord, key, token + 1000) is False
    assert extend(coord, key, token, 20_000) == {"extended": True, "expires_in_ms": 20_000}
    entry = coord.call("state::get", {"scope": "locks", "key": key, "with_version": True})
    assert entry["value"]["lock"] == {"owner": "alice", "ttl_ms": 20_000, "token": token}
    assert 5_000 < entry["expires_in_ms"] <= 20_000
    assert lock(coord, key, "bob")["acquired"] is False
    assert unlock(coord, key, token) is True
    assert unlock(coord, key, token) is False
    assert coord.call("state::get", {"scope": "locks", "key": key}) is None
    then = lock(coord, key, "bob")
    assert then["acquired"] is True and then["token"] > token
    # Each acquisition, extension and release is an ordinary change of the key.
    mine = [e["event_type"] for e in events.events if e["key"] == key]
    assert mine == ["state:created", "state:updated", "state:deleted", "state:created"]


def test_tokens_grow_across_expiry_release_and_take_over(coord: StateService) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    tokens = [lock(coord, key, "a", ttl_ms=200)["token"]]
    time.sleep(0.35)  # expired: free for anyone, whether or not a sweeper removed it
    got = lock(coord, key, "b", ttl_ms=10_000)
    assert got["acquired"] is True
    tokens.append(got["token"])
    assert extend(coord, key, got["token"])["extended"] is True
    # The same owner again (a retried task that uses its id as owner) takes it over.
    again = lock(coord, key, "b")
    assert again["acquired"] is True
    tokens.append(again["token"])
    assert unlock(coord, key, got["token"]) is False  # the old token is stale now
    assert unlock(coord, key, again["token"]) is True
    tokens.append(lock(coord, key, "c")["token"])
    assert tokens == sorted(set(tokens)), tokens


def test_a_redelivered_call_answers_what_it_answered(coord: StateService) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    first = lock(coord, key, "w1", op="lock-op")
    repeat = lock(coord, key, "w1", op="lock-op")
    assert repeat["token"] == first["token"] and repeat["acquired"] is True
    assert 0 < repeat["expires_in_ms"] <= first["expires_in_ms"]  # the time left now
    coord.settle_sent()
    assert lock(coord, key, "w1", op="lock-op")["token"] == first["token"]
    assert unlock(coord, key, first["token"], op="unlock-op") is True
    assert unlock(coord, key, first["token"], op="unlock-op") is True
    coord.settle_sent()
    assert unlock(coord, key, first["token"], op="unlock-op") is True
    assert unlock(coord, key, first["token"]) is False
    # Once another holds it, a repeat of the first lock says so: no second holder.
    other = lock(coord, key, "w2")
    again = lock(coord, key, "w1", op="lock-op")
    assert again["acquired"] is False and again["owner"] == "w2", again
    assert unlock(coord, key, first["token"], op="unlock-op") is True  # it did release
    assert unlock(coord, key, other["token"]) is True


def test_concurrent_attempts_give_one_holder(coord: StateService) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: lock(coord, key, f"o{n}"), range(16)))
        winners = [a for a in answers if a["acquired"]]
        assert len(winners) == 1, answers
        assert {a["owner"] for a in answers} == {winners[0]["owner"]}
        assert unlock(coord, key, winners[0]["token"]) is True


def test_bad_input_is_refused_and_writes_nothing(coord: StateService) -> None:
    coord.call("state::set", {"scope": "locks", "key": "plain", "value": {"n": 1}})
    with pytest.raises(StateError) as refused:
        lock(coord, "plain", "a")
    assert refused.value.code == "VALIDATION_ERROR" and "not a lock" in refused.value.message
    assert unlock(coord, "plain", 1) is False
    assert coord.call("state::get", {"scope": "locks", "key": "plain"}) == {"n": 1}
    for payload, field in [
        ({"scope": "locks", "key": "x", "owner": "a"}, "ttl_ms"),
        ({"scope": "locks", "key": "x", "owner": "a", "ttl_ms": 0}, "ttl_ms"),
        ({"scope": "locks", "key": "x", "ttl_ms": 10}, "owner"),
    ]:
        with pytest.raises(StateError, match=field) as bad:
            coord.call("state::lock", payload)
        assert bad.value.code == "VALIDATION_ERROR"
    with pytest.raises(StateError, match="token"):
        coord.call("state::unlock", {"scope": "locks", "key": "x", "token": 0})
    assert coord.call("state::get", {"scope": "locks", "key": "x"}) is None


THEN = {"task": "reports::publish", "kwargs": {"album": "summer"}}


def arrive(service: StateService, key: str, member: str, expected: int, **more: Any) -> Any:
    payload = {"scope": "joins", "key": key, "member": member, "expected": expected, "then": THEN}
    op = more.pop("op", None) or uuid.uuid4().hex
    return service.call("state::arrive", payload | more, op)


def test_a_barrier_counts_members_once_and_fires_once(coord: StateService, sent: Sent) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    assert arrive(coord, key, "m1", 3) == {"arrived": 1, "expected": 3, "fired": False}
    assert arrive(coord, key, "m1", 3) == {"arrived": 1, "expected": 3, "fired": False}
    assert arrive(coord, key, "m2", 3, error="ValueError: bad row") == {
        "arrived": 2,
        "expected": 3,
        "fired": False,
    }
    assert sent.calls == []
    last = arrive(coord, key, "m3", 3, op="last")
    assert last == {"arrived": 3, "expected": 3, "fired": True}
    # The redelivered last arrival, a repeated member and a late member send nothing more.
    assert arrive(coord, key, "m3", 3, op="last")["fired"] is False
    coord.settle_sent()
    assert arrive(coord, key, "m3", 3, op="last")["fired"] is False
    assert arrive(coord, key, "m2", 3)["fired"] is False
    assert arrive(coord, key, "m4", 3) == {"arrived": 4, "expected": 3, "fired": False}
    record = coord.call("state::get", {"scope": "joins", "key": key})["barrier"]
    assert len(sent.calls) == 1
    assert sent.calls[0] == ("reports::publish", {"album": "summer"}, then_task_id(record["id"]))
    assert record["fired"] is True and record["expected"] == 3 and record["then"] == THEN
    failed = coord.call("state::get", {"scope": "joins", "key": arrived_key(key, "m2")})
    assert failed == {
        "member": "m2",
        "ok": False,
        "error": "ValueError: bad row",
        "barrier": record["id"],
    }


def test_concurrent_and_repeated_arrivals_fire_once(coord: StateService, sent: Sent) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    members = [f"m{n}" for n in range(60)]
    arrivals = members + members[::3]  # a third of them twice
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda m: arrive(coord, key, m, len(members)), arrivals))
    assert sum(a["fired"] for a in answers) == 1
    assert len(sent.calls) == 1
    record = coord.call("state::get", {"scope": "joins", "key": key})["barrier"]
    assert record["arrived"] == len(members) and record["fired"] is True


def test_a_barrier_refuses_another_definition(coord: StateService, sent: Sent) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    arrive(coord, key, "m1", 2)
    with pytest.raises(StateError, match="expects 2 members") as other_count:
        arrive(coord, key, "m2", 3)
    assert other_count.value.code == "VALIDATION_ERROR"
    with pytest.raises(StateError, match="fixed by its first arrival"):
        payload = {
            "scope": "joins",
            "key": key,
            "member": "m2",
            "expected": 2,
            "then": {"task": "other"},
        }
        coord.call("state::arrive", payload)
    with pytest.raises(StateError, match="1024 bytes"):
        arrive(coord, key, "m" * 1020, 2)
    with pytest.raises(StateError, match="expected"):
        arrive(coord, key, "m2", 0)
    record = coord.call("state::get", {"scope": "joins", "key": key})["barrier"]
    assert record["arrived"] == 1 and sent.calls == []
    # A key holding a value is not a barrier (and keeps its value).
    coord.call("state::set", {"scope": "joins", "key": "plain", "value": 1})
    with pytest.raises(StateError, match="not a barrier"):
        arrive(coord, "plain", "m1", 2)
    assert coord.call("state::get", {"scope": "joins", "key": "plain"}) == 1


def test_a_complete_barrier_whose_send_failed_sends_on_the_retry(
    coord: StateService, sent: Sent
) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    arrive(coord, key, "m1", 2)
    failing = [True]

    def send(name: str, kwargs: dict[str, Any], task_id: str) -> None:
        if failing.pop(0) if failing else False:
            raise ConnectionError("broker away")
        sent(name, kwargs, task_id)

    coord.coordinator.send_task = send
    with pytest.raises(StateError, match="retrying the arrival sends it") as away:
        arrive(coord, key, "m2", 2, op="last")
    assert away.value.code == "ADAPTER_ERROR" and sent.calls == []
    # The task's retry (same id) sends it, once; a repeated member then sends nothing.
    assert arrive(coord, key, "m2", 2, op="last") == {"arrived": 2, "expected": 2, "fired": True}
    assert arrive(coord, key, "m1", 2)["fired"] is False
    assert len(sent.calls) == 1


def test_a_barrier_key_used_again_counts_afresh(coord: StateService, sent: Sent) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    arrive(coord, key, "m1", 2)
    arrive(coord, key, "m2", 2)
    assert len(sent.calls) == 1
    # Its record deleted (its arrivals' keys left behind), the key is a new barrier
    coord.call("state::delete", {"scope": "joins", "key": key})
    assert arrive(coord, key, "m1", 2) == {"arrived": 1, "expected": 2, "fired": False}
    assert arrive(coord, key, "m1", 2) == {"arrived": 1, "expected": 2, "fired": False}
    assert arrive(coord, key, "m2", 2)["fired"] is True
    assert len(sent.calls) == 2 and sent.calls[0][2] != sent.calls[1][2]


def test_a_barriers_arrivals_expire_with_it(coord: StateService) -> None:
    key = f"b-{uuid.uuid4().hex[:8]}"
    arrive(coord, key, "m1", 3, ttl_ms=600)
    time.sleep(0.25)
    arrive(coord, key, "m2", 3, ttl_ms=600)  # does not extend the barrier, nor m1
    left = coord.call(
        "state::get", {"scope": "joins", "key": arrived_key(key, "m2"), "with_version": True}
    )["expires_in_ms"]
    assert 0 < left <= 400
    time.sleep(0.5)
    assert coord.call("state::get", {"scope": "joins", "key": key}) is None
    # Expired, with its arrivals: m1 again starts a new barrier, counted once
    assert arrive(coord, key, "m1", 3) == {"arrived": 1, "expected": 3, "fired": False}
