"""No lost expiry event on the KvStore: an expiry whose event could not be sent (the broker
was away, or the worker died between removing the key and sending) is sent again by a later
sweep, with the same event id, and only once it is sent is it forgotten."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from adapters.file_store import FileKvStore
from adapters.kv_store import KvStore
from state_tasks.core.errors import AdapterUnavailable
from state_tasks.core.service import StateService


class Events:
    """A listener that records events, or fails while ``broken`` (the broker is away)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.broken = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.broken:
            raise ConnectionError("the broker is away")
        self.events.append(event)

    def expiries(self) -> list[tuple[str, str]]:
        return [(e["key"], e["event_id"]) for e in self.events if e.get("reason") == "expired"]


def set_key(service: StateService, key: str, ttl_ms: int | None = None) -> int:
    payload: dict[str, Any] = {"scope": "s", "key": key, "value": key}
    if ttl_ms is not None:
        payload["ttl_ms"] = ttl_ms
    answer = service.call("state::set", payload)
    return int(answer["version"])


def test_an_expiry_whose_event_failed_is_sent_again_with_the_same_id() -> None:
    # Given a key whose expiry was swept while the broker was away
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events, expiry_resend_after_ms=0)
    set_key(service, "k", ttl_ms=10)
    now[0] += 10
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()
    assert store.get("s", "k") is None  # removed all the same
    # When the broker is back, the next sweep sends it, and later sweeps send nothing more
    events.broken = False
    assert service.sweep_expired()[0] == 1
    assert service.sweep_expired()[0] == 0
    ((key, event_id),) = events.expiries()
    assert key == "k" and event_id.startswith("expired-")


def test_a_pending_expiry_waits_for_the_resend_delay() -> None:
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events)  # the default delay: 30 s
    set_key(service, "k", ttl_ms=10)
    now[0] += 10
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()
    events.broken = False
    # A sweep right after does not send it again (a send may still be under way elsewhere)
    assert service.sweep_expired()[0] == 0
    assert [gone.key for gone in store.pending_expiries(0, 10)] == ["k"]


def test_a_pending_expiry_is_claimed_again_by_one_sweep_at_a_time() -> None:
    store = KvStore()
    service = StateService(store)
    set_key(service, "k", ttl_ms=1)
    store.clock_ms = lambda: 2**62  # far past every due time
    (gone,), _ = store.expire_due(10)
    assert [p.key for p in store.pending_expiries(0, 10)] == ["k"]
    assert store.pending_expiries(60_000, 10) == []  # just claimed again
    store.expiries_sent([gone])
    assert store.pending_expiries(0, 10) == []


def test_a_write_meeting_an_expired_key_leaves_its_expiry_pending_when_sending_fails() -> None:
    # Given a key that expired and was not yet swept
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events, expiry_resend_after_ms=0)
    expired_version = set_key(service, "k", ttl_ms=10)
    now[0] += 10
    # When a write meets it while the broker is away
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        set_key(service, "k")
    events.broken = False
    # Then the sweep sends its expiry (the write's own event is its task's retry's work)
    assert service.sweep_expired()[0] == 1
    expiries = [e for e in events.events if e.get("reason") == "expired"]
    assert [e["version"] for e in expiries] == [expired_version]


def test_sent_expiries_are_forgotten() -> None:
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events, expiry_resend_after_ms=0)
    for i in range(3):
        set_key(service, f"k{i}", ttl_ms=10)
    now[0] += 10
    set_key(service, "k0")  # meets it expired: its expiry is sent by this write
    assert service.sweep_expired()[0] == 2
    assert service.sweep_expired()[0] == 0
    assert sorted(key for key, _ in events.expiries()) == ["k0", "k1", "k2"]


# -- the file store keeps pending expiries across a crash ------------------------------------


def open_store(path: Path, now: list[int]) -> FileKvStore:
    store = FileKvStore(file_path=path, save_interval_ms=60_000, clock_ms=lambda: now[0])
    store.open()
    return store


def crash(store: FileKvStore) -> None:
    """Drop the store as a kill -9 would: no save, no flush, the lock let go."""
    store._stop.set()
    if store._saver is not None:
        store._saver.join()
    if store._journal_fd is not None:
        os.close(store._journal_fd)
    store._release_ownership()


def expire_without_sending(store: FileKvStore, now: list[int], key: str) -> None:
    """Set ``key`` with a ttl, let it expire and have a sweep remove it, its event unsent
    (the worker dies before sending)."""
    events = Events()
    service = StateService(store, on_change=events)
    set_key(service, key, ttl_ms=10)
    now[0] += 10
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()


@pytest.mark.parametrize("saved", [False, True], ids=["journal", "ops.json"])
def test_the_file_store_sends_an_expiry_the_dead_worker_did_not(
    tmp_path: Path, saved: bool
) -> None:
    # Given a worker that removed an expired key and died before sending its event
    now = [1_000_000]
    store = open_store(tmp_path, now)
    expire_without_sending(store, now, "k")
    if saved:
        store.save()
    crash(store)
    # When a worker starts on the folder: its first sweep sends it, once
    store = open_store(tmp_path, now)
    events = Events()
    service = StateService(store, on_change=events)
    assert store.get("s", "k") is None
    assert service.sweep_expired()[0] == 1
    assert service.sweep_expired()[0] == 0
    assert [key for key, _ in events.expiries()] == ["k"]
    store.close()
    # And after a clean restart nothing is sent again
    store = open_store(tmp_path, now)
    assert StateService(store, on_change=events).sweep_expired()[0] == 0
    assert len(events.expiries()) == 1
    store.close()


def test_the_file_store_does_not_resend_a_sent_expiry_after_a_crash(tmp_path: Path) -> None:
    # Given an expiry whose event was sent, and a write after it (which journals that)
    now = [1_000_000]
    store = open_store(tmp_path, now)
    events = Events()
    service = StateService(store, on_change=events)
    set_key(service, "k", ttl_ms=10)
    now[0] += 10
    assert service.sweep_expired()[0] == 1
    set_key(service, "other")
    crash(store)
    # When a worker starts on the folder, it sends nothing again
    store = open_store(tmp_path, now)
    assert StateService(store, on_change=events).sweep_expired()[0] == 0
    assert len(events.expiries()) == 1
    store.close()
