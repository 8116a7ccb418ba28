"""No lost expiry event, on every adapter that keeps pending expiries (the KvStore in memory
and file-based, Redis on one server, behind Sentinel and on a Cluster): a key removed
because it expired leaves a pending record, in the same atomic step, until the service says
its event was sent; an event that could not be sent (the broker was away, or the worker
died in between) is sent by a later sweep, with the same event id, and only once it is
sent is it forgotten. The file store across a crash is in tests/conformance/test_file_store.py;
a Redis worker killed in between is in tests/integration/test_expiry_workers.py."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from helpers import Events

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.errors import AdapterUnavailable
from state_tasks.core.service import StateService, expiry_event_id

TTL_MS = 100


#: The Bridge keeps no keys: the remote's workers expire them (see conftest).
pytestmark = pytest.mark.expires_itself


def set_key(service: StateService, scope: str, key: str, ttl_ms: int | None = None) -> int:
    payload: dict[str, Any] = {"scope": scope, "key": key, "value": key}
    if ttl_ms is not None:
        payload["ttl_ms"] = ttl_ms
    return int(service.call("state::set", payload)["version"])


def no_pending_records(adapter: StateAdapter) -> None:
    """On Redis, the pending expiries' keys are gone once every event is sent: no memory
    is kept for an expiry whose event went out."""
    if not isinstance(adapter, RedisAdapter):
        return
    layout = adapter.layout
    for tag in layout.tags:
        for name in (layout.expiring_key(tag), layout.expiring_at_key(tag)):
            assert not adapter.client.exists(name), name


def test_an_expiry_whose_event_failed_is_sent_again_with_the_same_id(
    adapter: StateAdapter,
) -> None:
    # Given a key whose expiry was swept while the broker was away
    events = Events()
    service = StateService(adapter, on_change=events, expiry_resend_after_ms=0)
    scope = f"pe-{uuid.uuid4().hex[:6]}"
    version = set_key(service, scope, "k", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()
    assert adapter.get(scope, "k") is None  # removed all the same
    assert events.expiries() == []
    # When the broker is back, the next sweep sends it, and later sweeps send nothing more
    events.broken = False
    assert service.sweep_expired()[0] == 1
    assert service.sweep_expired()[0] == 0
    (event,) = events.expiries()
    assert (event["scope"], event["key"], event["version"]) == (scope, "k", version)
    assert event["old_value"] == "k" and event["new_value"] is None
    assert event["event_id"] == expiry_event_id(scope, "k", version)
    no_pending_records(adapter)


def test_a_pending_expiry_waits_for_the_resend_delay_and_is_claimed_once(
    adapter: StateAdapter,
) -> None:
    events = Events()
    service = StateService(adapter, on_change=events)  # the default delay: 30 s
    scope = f"pe-{uuid.uuid4().hex[:6]}"
    version = set_key(service, scope, "k", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()
    events.broken = False
    # A sweep right after does not send it again (a send may still be under way elsewhere)
    assert service.sweep_expired()[0] == 0
    # Once older than a delay, one claim takes it, and restarts its age: a second claim
    # right after (another sweeper) does not get it, one after the delay again does
    time.sleep(0.3)
    (gone,) = adapter.pending_expiries(200, 10)
    assert (gone.scope, gone.key, gone.value_json, gone.version) == (scope, "k", '"k"', version)
    assert adapter.pending_expiries(200, 10) == []
    time.sleep(0.3)
    assert [again.key for again in adapter.pending_expiries(200, 10)] == ["k"]
    adapter.expiries_sent([gone])
    assert adapter.pending_expiries(0, 10) == []
    assert events.expiries() == []
    no_pending_records(adapter)


def test_a_write_meeting_an_expired_key_leaves_its_expiry_pending_when_sending_fails(
    adapter: StateAdapter,
) -> None:
    # Given a key that expired and was not yet swept
    events = Events()
    service = StateService(adapter, on_change=events, expiry_resend_after_ms=0)
    scope = f"pe-{uuid.uuid4().hex[:6]}"
    expired_version = set_key(service, scope, "k", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    # When a write meets it while the broker is away
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        set_key(service, scope, "k")
    events.broken = False
    # Then the sweep sends its expiry (the write's own event is its task's retry's work)
    assert service.sweep_expired()[0] == 1
    assert [e["version"] for e in events.expiries()] == [expired_version]
    assert service.sweep_expired()[0] == 0


@pytest.mark.parametrize("kind", ["set", "update", "delete", "batch"])
def test_every_write_meeting_an_expired_key_leaves_a_pending_expiry(
    adapter: StateAdapter, kind: str
) -> None:
    service = StateService(adapter)
    scope = f"pe-{uuid.uuid4().hex[:6]}"
    version = set_key(service, scope, "k", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    if kind == "set":
        change = adapter.set_versioned(scope, "k", '"new"')
        gone = change.expired
    elif kind == "update":
        change = adapter.update_versioned(scope, "k", [])
        gone = change.expired
    elif kind == "delete":
        change = adapter.delete_versioned(scope, "k")
        gone = change.expired
    else:
        expired = adapter.batch_versioned(
            scope, [service._batch_op(0, {"op": "set", "key": "k", "value": 1})]
        ).expired
        (gone,) = expired
    assert gone is not None and gone.version == version
    (pending,) = adapter.pending_expiries(0, 10)
    assert (pending.scope, pending.key, pending.version) == (scope, "k", version)
    adapter.expiries_sent([pending])
    assert adapter.pending_expiries(0, 10) == []
    no_pending_records(adapter)


def test_sent_expiries_are_forgotten(adapter: StateAdapter) -> None:
    events = Events()
    service = StateService(adapter, on_change=events, expiry_resend_after_ms=0)
    scope = f"pe-{uuid.uuid4().hex[:6]}"
    for i in range(3):
        set_key(service, scope, f"k{i}", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    set_key(service, scope, "k0")  # meets it expired: its expiry is sent by this write
    assert service.sweep_expired()[0] == 2
    assert service.sweep_expired()[0] == 0
    assert sorted(e["key"] for e in events.expiries()) == ["k0", "k1", "k2"]
    assert adapter.pending_expiries(0, 10) == []
    no_pending_records(adapter)


def test_a_claim_takes_at_most_limit_and_leaves_the_rest_as_old_as_they_were(
    adapter: StateAdapter,
) -> None:
    # Given five pending expiries in five scopes (on a cluster: in different buckets)
    service = StateService(adapter)
    run = uuid.uuid4().hex[:6]
    for i in range(5):
        set_key(service, f"pe-{run}-{i}", "k", ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    swept, _ = adapter.expire_due(100)
    assert len(swept) == 5
    time.sleep(0.3)
    # When a sweep claims two of those older than 150 ms
    first = adapter.pending_expiries(150, 2)
    assert len(first) == 2
    # Then the other three are still old enough for the next, and the two are not
    rest = adapter.pending_expiries(150, 10)
    assert sorted(g.scope for g in first + rest) == sorted(f"pe-{run}-{i}" for i in range(5))
    assert adapter.pending_expiries(150, 10) == []
    adapter.expiries_sent(first + rest)
    assert adapter.pending_expiries(0, 10) == []
    no_pending_records(adapter)


def test_odd_scope_and_key_names_round_trip_through_a_pending_expiry(
    adapter: StateAdapter,
) -> None:
    service = StateService(adapter)
    scope, key = f"pe:{uuid.uuid4().hex[:4]}:é{{x}}%", "1:ü:k"
    version = set_key(service, scope, key, ttl_ms=TTL_MS)
    time.sleep(TTL_MS / 1000 + 0.1)
    adapter.expire_due(10)
    (gone,) = adapter.pending_expiries(0, 10)
    assert (gone.scope, gone.key, gone.version) == (scope, key, version)
    adapter.expiries_sent([gone])
    assert adapter.pending_expiries(0, 10) == []
    no_pending_records(adapter)
