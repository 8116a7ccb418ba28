"""The expiry sweeper's sleeps and the dispatch of a sweep's events: no server needed (an
in-memory broker and a KvStore)."""

from __future__ import annotations

from typing import Any

import pytest

from state_tasks import create_app
from state_tasks.adapters.kv_store import KvStore
from state_tasks.core.service import StateService
from state_tasks.expiry import DEFAULT_MAX_SLEEP_S, DEFAULT_MIN_SLEEP_S, ExpirySweeper
from state_tasks.triggers.dispatch import Dispatcher
from state_tasks.triggers.registry import TriggerRegistry


class FakeService:
    """Answers each sweep with the next of ``answers``: (fired, ms to the next due time)."""

    def __init__(self, *answers: tuple[int, float | None]) -> None:
        self.answers = list(answers)

    def sweep_expired(self, limit: int) -> tuple[int, float | None]:
        return self.answers.pop(0)


def sleeps(*answers: tuple[int, float | None], limit: int = 50) -> list[float]:
    service = FakeService(*answers)
    sweeper = ExpirySweeper(lambda: service, limit=limit)  # type: ignore[arg-type,return-value]
    return [sweeper.sweep_once() for _ in answers]


def test_a_full_sweep_goes_on_at_once_and_others_wait_at_least_the_minimum() -> None:
    jitter = DEFAULT_MIN_SLEEP_S / 2
    full, due_now, due_soon, due_later, none_due = sleeps(
        (50, 0.0), (3, 0.0), (3, 1.0), (0, 120.0), (0, None)
    )
    assert full == 0.0
    # Keys falling due within the minimum wait for the next sweep, which takes them together
    assert DEFAULT_MIN_SLEEP_S <= due_now <= DEFAULT_MIN_SLEEP_S + jitter
    assert DEFAULT_MIN_SLEEP_S <= due_soon <= DEFAULT_MIN_SLEEP_S + jitter
    assert 0.12 <= due_later <= 0.12 + jitter
    assert DEFAULT_MAX_SLEEP_S <= none_due <= DEFAULT_MAX_SLEEP_S + jitter


def test_sweepers_of_several_workers_do_not_wake_together() -> None:
    # Given the same answer, sleeps differ (a random part), so three workers spread out
    waits = sleeps(*[(2, 0.0)] * 20)
    assert len(set(waits)) > 1


def trigger(registry: TriggerRegistry, function_id: str, **config: str) -> None:
    registry.register({"type": "state", "function_id": function_id, "config": config})


def queued_tasks(app: Any) -> list[tuple[str, str]]:
    """(task name, event key) of each message waiting in the default queue, in order."""
    found: list[tuple[str, str]] = []
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                return found
            args, kwargs, _ = message.payload
            event = args[0] if args else kwargs["event"]
            found.append((message.headers["task"], event["key"]))
            message.ack()


class CountingStore(KvStore):
    """Counts the reads of the trigger version (a round trip on Redis)."""

    version_reads = 0

    def triggers_version(self) -> int:
        self.version_reads += 1
        return super().triggers_version()


def test_send_all_sends_every_matching_triggers_work_reading_the_triggers_once() -> None:
    # Given a handler and a conditional handler on a scope, and one on another scope
    app = create_app("test-dispatch", broker_url="memory://", result_backend="cache+memory://")
    store = CountingStore()
    registry = TriggerRegistry(store)
    trigger(registry, "h", scope="s")
    registry.register(
        {
            "type": "state",
            "function_id": "h2",
            "config": {"scope": "s", "condition_function_id": "c"},
        }
    )
    trigger(registry, "other", scope="t")
    dispatcher = Dispatcher(app, registry)
    store.version_reads = 0
    # When a sweep's three events are sent together
    dispatcher.send_all([{"scope": "s", "key": f"k{i}", "event_id": f"e{i}"} for i in range(3)])
    # Then each event started the handler and the condition (which chains the gate), in the
    # events' order, and the trigger version was read once for all of them
    sent = queued_tasks(app)
    assert sorted(sent) == sorted((name, f"k{i}") for i in range(3) for name in ("h", "c"))
    assert [key for _, key in sent] == ["k0", "k0", "k1", "k1", "k2", "k2"]
    assert store.version_reads == 1


class BatchListener:
    """A listener that takes several events at once, as the Dispatcher does."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.calls.append([event])

    def send_all(self, events: list[dict[str, Any]]) -> None:
        self.calls.append(list(events))


def test_a_sweep_hands_its_events_to_the_listener_together() -> None:
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    listener = BatchListener()
    service = StateService(store, on_change=listener)
    for i in range(5):
        service.call("state::set", {"scope": "s", "key": f"k{i}", "value": i, "ttl_ms": 10})
    listener.calls.clear()
    now[0] += 10
    assert service.sweep_expired(limit=50) == (5, None)
    assert [[e["key"] for e in call] for call in listener.calls] == [[f"k{i}" for i in range(5)]]
    assert {e["reason"] for e in listener.calls[0]} == {"expired"}


@pytest.mark.parametrize("limit", [1, 2])
def test_a_sweep_takes_at_most_its_limit(limit: int) -> None:
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    service = StateService(store, on_change=BatchListener())
    for i in range(3):
        service.call("state::set", {"scope": "s", "key": f"k{i}", "value": i, "ttl_ms": 10})
    now[0] += 10
    assert service.sweep_expired(limit=limit)[0] == limit


class PendingLooks(KvStore):
    """A KvStore that counts the looks for pending expiries."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def pending_expiries(self, older_than_ms: int, limit: int) -> list[Any]:
        self.looks += 1
        return super().pending_expiries(older_than_ms, limit)


def test_pending_expiries_are_looked_for_a_few_times_per_resend_delay_not_every_sweep() -> None:
    store = PendingLooks()
    # With a 30 s resend delay, back-to-back sweeps look once (the next look in 3 s)
    service = StateService(store, expiry_resend_after_ms=30_000)
    for _ in range(20):
        service.sweep_expired()
    assert store.looks == 1
    # With no delay (nothing to wait for), every sweep looks
    eager = StateService(store, expiry_resend_after_ms=0)
    for _ in range(5):
        eager.sweep_expired()
    assert store.looks == 1 + 5
