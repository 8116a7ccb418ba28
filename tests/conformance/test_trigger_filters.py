"""Declarative trigger filters (``config.when``) on every adapter: a StateService whose
listener is the real :class:`~state_tasks.triggers.dispatch.Dispatcher` over a real
:class:`~state_tasks.triggers.registry.TriggerRegistry` on the adapter, with ``enqueue``
recording what it would send. Each write fires exactly the triggers whose filters pass,
with the events the adapter produced; a condition is only sent for a change its filter
passes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from state_tasks.adapters.base import StateAdapter
from state_tasks.core.service import StateService
from state_tasks.triggers.dispatch import Dispatcher
from state_tasks.triggers.registry import Trigger, TriggerRegistry


class StandInApp:
    """What the Dispatcher uses of a Celery app besides ``enqueue``: a producer for a
    batch of several messages (a no-op here)."""

    def __init__(self) -> None:
        self.producers = 0

    @contextmanager
    def producer_or_acquire(self) -> Iterator[object]:
        self.producers += 1
        yield object()  # no ``batch``: the Dispatcher publishes one by one inside it


class RecordingDispatcher(Dispatcher):
    """The real matching and filtering; ``enqueue`` records instead of sending."""

    def __init__(self, registry: TriggerRegistry) -> None:
        super().__init__(StandInApp(), registry)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.seen: list[dict[str, Any]] = []  # every event the service handed over

    def send_changes(
        self, events: Any, trigger_version: int | None = None
    ) -> None:  # the service's way in
        self.seen.extend(events)
        super().send_changes(events, trigger_version)

    def enqueue(self, trigger: Trigger, event: dict[str, Any], producer: Any = None) -> None:
        # What would be sent first: the condition (chained into the gate), or the handler
        first = trigger.condition_function_id or trigger.function_id
        self.sent.append((first, event))

    def fired(self) -> list[tuple[str, str, str]]:
        """(first task, event type, key) of each enqueued work, in order."""
        return [(name, e["event_type"], e["key"]) for name, e in self.sent]

    def per_change(self) -> list[list[tuple[str, str, str]]]:
        """:meth:`fired` grouped by change, in the changes' order; within one change the
        order of the triggers is the index's (by id), so each group is sorted."""
        groups: dict[str, list[tuple[str, str, str]]] = {}
        for name, e in self.sent:
            groups.setdefault(e["event_id"], []).append((name, e["event_type"], e["key"]))
        return [sorted(group) for group in groups.values()]

    def clear(self) -> None:
        self.sent.clear()
        self.seen.clear()


@pytest.fixture
def registry(adapter: StateAdapter) -> TriggerRegistry:
    return TriggerRegistry(adapter)


@pytest.fixture
def dispatcher(registry: TriggerRegistry) -> RecordingDispatcher:
    return RecordingDispatcher(registry)


@pytest.fixture
def filtered(adapter: StateAdapter, dispatcher: RecordingDispatcher) -> StateService:
    return StateService(adapter, on_change=dispatcher)


def register(registry: TriggerRegistry, function_id: str, when: Any = None, **config: Any) -> None:
    if when is not None:
        config["when"] = when
    registry.register({"type": "state", "function_id": function_id, "config": config})


def call(service: StateService, function_id: str, **payload: Any) -> Any:
    return service.call(function_id, payload)


def check_against_the_events(dispatcher: RecordingDispatcher) -> None:
    """Every enqueued event is one the adapter's change produced, untouched."""
    for _, event in dispatcher.sent:
        assert any(event is seen for seen in dispatcher.seen)


EMAIL_CHANGED = {"all": [{"event_types": ["state:updated"]}, {"changed": ["email"]}]}
BECAME_PAID = {
    "all": [
        {"path": "status", "eq": "paid"},
        {"not": {"path": "status", "of": "old", "eq": "paid"}},
    ]
}


def test_set_and_update_fire_exactly_the_triggers_whose_filters_pass(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    register(registry, "h::email", EMAIL_CHANGED, scope="users", key="profile")
    register(registry, "h::city", {"changed": [["address", "city"]]}, scope="users")
    register(registry, "h::created", {"event_types": ["state:created"]}, scope="users")
    register(registry, "h::unfiltered", None, scope="users", key="profile")
    register(registry, "h::elsewhere", {"path": "", "exists": True}, scope="other")
    profile = {"name": "Bo", "email": "bo@example.com", "address": {"city": "Oslo"}}

    call(filtered, "state::set", scope="users", key="profile", value=profile)
    assert sorted(dispatcher.fired()) == [
        ("h::city", "state:created", "profile"),  # present on one side only: changed
        ("h::created", "state:created", "profile"),
        ("h::unfiltered", "state:created", "profile"),
    ]
    dispatcher.clear()
    # The same email, another name: only the unfiltered trigger
    call(filtered, "state::set", scope="users", key="profile", value={**profile, "name": "B"})
    assert dispatcher.fired() == [("h::unfiltered", "state:updated", "profile")]
    dispatcher.clear()
    # A new email, through an update op
    result = call(
        filtered,
        "state::update",
        scope="users",
        key="profile",
        ops=[{"type": "set", "path": ["email"], "value": "bo@new.example"}],
    )
    assert sorted(dispatcher.fired()) == [
        ("h::email", "state:updated", "profile"),
        ("h::unfiltered", "state:updated", "profile"),
    ]
    sent = dict(dispatcher.sent)["h::email"]
    assert sent["old_value"]["email"] == "bo@example.com"
    assert sent["new_value"] == result["new_value"]
    assert sent["new_value"]["email"] == "bo@new.example"
    check_against_the_events(dispatcher)
    dispatcher.clear()
    # The city changes on another key of the scope: only the scope-wide city trigger
    call(filtered, "state::set", scope="users", key="u2", value={"address": {"city": "Oslo"}})
    dispatcher.clear()
    call(
        filtered,
        "state::update",
        scope="users",
        key="u2",
        ops=[{"merge": {"address": {"city": "Bergen"}}}],
    )
    assert dispatcher.fired() == [("h::city", "state:updated", "u2")]
    dispatcher.clear()
    # A value that is not an object: the paths are missing, nothing is an error
    call(filtered, "state::set", scope="users", key="u2", value=[1, 2, 3])
    call(filtered, "state::set", scope="users", key="u2", value="text")
    assert dispatcher.fired() == [("h::city", "state:updated", "u2")]  # {city} -> missing
    assert len(dispatcher.seen) == 2


def test_comparisons_on_new_and_old_and_a_refusing_filter_sends_nothing(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    register(registry, "h::paid", BECAME_PAID, scope="orders")
    register(registry, "h::big", {"path": "amount", "gt": 100}, scope="orders")
    register(registry, "h::vip", {"path": ["customer", "tier"], "in": ["gold", 1]}, scope="orders")
    register(registry, "h::was_open", {"path": "status", "of": "old", "eq": "open"}, scope="orders")
    steps: list[tuple[dict[str, Any], set[str]]] = [
        ({"status": "open", "amount": 50}, set()),
        ({"status": "open", "amount": 100}, {"h::was_open"}),
        ({"status": "paid", "amount": 100.5}, {"h::paid", "h::big", "h::was_open"}),
        ({"status": "paid", "amount": "150"}, set()),  # a string is not over 100
        ({"status": "paid", "amount": 1, "customer": {"tier": "gold"}}, {"h::vip"}),
        ({"status": "paid", "customer": {"tier": True}}, set()),  # true is not 1
        ({"status": "paid", "customer": {"tier": 1.0}}, {"h::vip"}),  # 1.0 is 1
        ({"status": "paid", "customer": "gold"}, set()),  # through a string: missing
    ]
    for value, expected in steps:
        dispatcher.clear()
        call(filtered, "state::set", scope="orders", key="o1", value=value)
        assert len(dispatcher.seen) == 1
        assert {name for name, _ in dispatcher.sent} == expected, value
        check_against_the_events(dispatcher)


def test_deletes_fire_with_a_null_new_value(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    gone_paid = {
        "all": [{"event_types": ["state:deleted"]}, {"path": "status", "of": "old", "eq": "paid"}]
    }
    register(registry, "h::gone_paid", gone_paid, scope="orders")
    register(registry, "h::no_new", {"path": "status", "exists": False}, scope="orders")
    register(registry, "h::ne", {"path": "status", "ne": "paid"}, scope="orders")
    call(filtered, "state::set", scope="orders", key="a", value={"status": "paid"})
    call(filtered, "state::set", scope="orders", key="b", value={"status": "open"})
    dispatcher.clear()
    assert call(filtered, "state::delete", scope="orders", key="a") == {"status": "paid"}
    call(filtered, "state::delete", scope="orders", key="b")
    call(filtered, "state::delete", scope="orders", key="b")  # absent: no event at all
    assert dispatcher.fired() == [
        ("h::gone_paid", "state:deleted", "a"),
        ("h::no_new", "state:deleted", "a"),
        ("h::no_new", "state:deleted", "b"),  # ne on a missing path: false
    ]
    for _, event in dispatcher.sent:
        assert event["new_value"] is None and event["reason"] == "deleted"
    check_against_the_events(dispatcher)


def test_a_batch_fires_per_change_the_triggers_whose_filters_pass(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    register(registry, "h::paid", BECAME_PAID, scope="orders")
    register(registry, "h::created", {"event_types": ["state:created"]}, scope="orders")
    register(registry, "h::deleted", {"event_types": ["state:deleted"]}, scope="orders", key="c")
    call(filtered, "state::set", scope="orders", key="c", value={"status": "open"})
    dispatcher.clear()
    call(
        filtered,
        "state::batch",
        scope="orders",
        operations=[
            {"op": "set", "key": "a", "value": {"status": "paid"}},
            {"op": "set", "key": "b", "value": {"status": "open"}},
            {"op": "update", "key": "b", "ops": [{"merge": {"status": "paid"}}]},
            {"op": "update", "key": "b", "ops": [{"merge": {"n": 1}}]},  # still paid
            {"op": "delete", "key": "c"},
        ],
    )
    assert dispatcher.per_change() == [
        [("h::created", "state:created", "a"), ("h::paid", "state:created", "a")],
        [("h::created", "state:created", "b")],
        [("h::paid", "state:updated", "b")],
        [("h::deleted", "state:deleted", "c")],
    ]
    assert [e["key"] for e in dispatcher.seen] == ["a", "b", "b", "b", "c"]
    check_against_the_events(dispatcher)
    # Several pieces of work in one batch share one producer
    assert dispatcher.app.producers == 1


def test_a_condition_is_only_sent_for_changes_its_filter_passes(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    register(
        registry,
        "h::handler",
        {"changed": ["email"]},
        scope="users",
        condition_function_id="c::check",
    )
    register(registry, "h::condition_only", None, scope="users", condition_function_id="c::every")
    call(filtered, "state::set", scope="users", key="u", value={"email": "a", "n": 1})
    call(filtered, "state::set", scope="users", key="u", value={"email": "a", "n": 2})
    call(filtered, "state::set", scope="users", key="u", value={"email": "b", "n": 2})
    call(filtered, "state::update", scope="users", key="u", ops=[{"increment": {"field": "n"}}])
    assert dispatcher.per_change() == [
        [("c::check", "state:created", "u"), ("c::every", "state:created", "u")],
        [("c::every", "state:updated", "u")],  # the same email: no condition sent
        [("c::check", "state:updated", "u"), ("c::every", "state:updated", "u")],
        [("c::every", "state:updated", "u")],
    ]
    # Each sent work is the trigger's condition (the handler follows through the gate)
    assert {name for name, _ in dispatcher.sent} == {"c::check", "c::every"}
    check_against_the_events(dispatcher)


@pytest.mark.expires_itself
def test_expiries_fire_the_triggers_whose_filters_pass(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    expired_pro = {
        "all": [{"event_types": ["state:deleted"]}, {"path": "plan", "of": "old", "eq": "pro"}]
    }
    register(registry, "h::expired_pro", expired_pro, scope="sessions")
    register(registry, "h::updates", {"event_types": ["state:updated"]}, scope="sessions")
    register(registry, "h::no_new", {"path": [], "eq": None}, scope="sessions")
    for key, plan in (("s1", "pro"), ("s2", "free"), ("s3", "pro")):
        call(filtered, "state::set", scope="sessions", key=key, value={"plan": plan}, ttl_ms=200)
    call(filtered, "state::set", scope="sessions", key="stays", value={"plan": "pro"})
    assert dispatcher.fired() == []
    time.sleep(0.3)
    fired = 0
    for _ in range(3):
        fired += filtered.sweep_expired()[0]
    assert fired == 3
    assert sorted(dispatcher.fired()) == [
        ("h::expired_pro", "state:deleted", "s1"),
        ("h::expired_pro", "state:deleted", "s3"),
        ("h::no_new", "state:deleted", "s1"),
        ("h::no_new", "state:deleted", "s2"),
        ("h::no_new", "state:deleted", "s3"),
    ]
    for _, event in dispatcher.sent:
        assert event["reason"] == "expired" and event["new_value"] is None
        assert event["old_value"]["plan"] in ("pro", "free")
    check_against_the_events(dispatcher)


@pytest.mark.expires_itself
def test_a_write_meeting_an_expired_key_judges_the_expiry_and_the_write_apart(
    filtered: StateService, registry: TriggerRegistry, dispatcher: RecordingDispatcher
) -> None:
    register(registry, "h::expired", {"event_types": ["state:deleted"]}, scope="w")
    register(registry, "h::created_n", {"path": "n", "eq": 1}, scope="w")
    call(filtered, "state::set", scope="w", key="k", value={"n": 5}, ttl_ms=100)
    dispatcher.clear()
    time.sleep(0.2)
    call(filtered, "state::update", scope="w", key="k", ops=[{"increment": {"field": "n"}}])
    assert dispatcher.fired() == [
        ("h::expired", "state:deleted", "k"),
        ("h::created_n", "state:created", "k"),
    ]
    assert dispatcher.sent[0][1]["reason"] == "expired"
    assert dispatcher.sent[0][1]["old_value"] == {"n": 5}
    assert dispatcher.sent[1][1]["old_value"] is None


def test_triggers_persist_with_their_filter_in_the_adapter(
    adapter: StateAdapter, registry: TriggerRegistry
) -> None:
    register(registry, "h::paid", BECAME_PAID, scope="orders", condition_function_id="c::x")
    register(registry, "h::plain", None, scope="orders")
    # Another registry on the same adapter (another process) lists it as registered
    listed = {t.function_id: t.to_dict() for t in TriggerRegistry(adapter).list()}
    assert listed["h::paid"]["config"] == {
        "scope": "orders",
        "condition_function_id": "c::x",
        "when": BECAME_PAID,
    }
    assert listed["h::plain"]["config"] == {"scope": "orders"}
    found = TriggerRegistry(adapter).match("orders", "o1")
    paid = {"event_type": "state:updated", "old_value": {}, "new_value": {"status": "paid"}}
    assert {t.function_id for t in found if t.passes(paid)} == {"h::paid", "h::plain"}
    assert {t.function_id for t in found if t.passes({**paid, "new_value": {}})} == {"h::plain"}
