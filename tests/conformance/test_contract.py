"""The adapter contract and every rule of SPEC §3, run against each adapter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import plain

from state_tasks.adapters.base import StateAdapter
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService


def call(service: StateService, function_id: str, **payload: Any) -> Any:
    return plain(service.call(function_id, payload))


def test_set_returns_old_and_new_and_fires_created_then_updated(
    service: StateService, events: Any
) -> None:
    assert call(service, "state::set", scope="s", key="k", value={"v": 1}) == {
        "old_value": None,
        "new_value": {"v": 1},
    }
    assert call(service, "state::set", scope="s", key="k", value={"v": 2}) == {
        "old_value": {"v": 1},
        "new_value": {"v": 2},
    }
    assert events.kinds() == ["state:created", "state:updated"]
    assert events.events[1]["old_value"] == {"v": 1} and events.events[1]["new_value"] == {"v": 2}


def test_data_is_an_alias_of_value(service: StateService) -> None:
    call(service, "state::set", scope="s", key="k", data=[1, 2])
    assert call(service, "state::get", scope="s", key="k") == [1, 2]


def test_explicit_null_is_a_value(
    service: StateService, adapter: StateAdapter, events: Any
) -> None:
    assert call(service, "state::set", scope="s", key="k", value=None) == {
        "old_value": None,
        "new_value": None,
    }
    assert call(service, "state::get", scope="s", key="k") is None
    assert call(service, "state::list", scope="s") == [None]
    assert call(service, "state::list_groups") == {"groups": ["s"]}
    call(service, "state::set", scope="s", key="k", value=1)
    # (The Bridge documents that it cannot tell a null value from a missing key.)
    second = "state:updated" if adapter.knows_null_from_missing else "state:created"
    assert events.kinds() == ["state:created", second]


def test_get_of_missing_key_is_null(service: StateService) -> None:
    assert call(service, "state::get", scope="nothing", key="here") is None


def test_delete_returns_the_value_and_fires_only_if_it_existed(
    service: StateService, events: Any
) -> None:
    assert call(service, "state::delete", scope="s", key="k") is None
    assert events.kinds() == []
    call(service, "state::set", scope="s", key="k", value="x")
    assert call(service, "state::delete", scope="s", key="k") == "x"
    assert call(service, "state::get", scope="s", key="k") is None
    assert events.kinds() == ["state:created", "state:deleted"]
    assert events.events[-1]["old_value"] == "x" and events.events[-1]["new_value"] is None


def test_update_creates_then_updates(service: StateService, events: Any) -> None:
    result = call(
        service, "state::update", scope="s", key="c", ops=[{"increment": {"field": "n", "by": 1}}]
    )
    assert result == {"old_value": None, "new_value": {"n": 1}}
    result = call(
        service, "state::update", scope="s", key="c", ops=[{"increment": {"field": "n", "by": 1}}]
    )
    assert result == {"old_value": {"n": 1}, "new_value": {"n": 2}}
    assert events.kinds() == ["state:created", "state:updated"]
    assert call(service, "state::get", scope="s", key="c") == {"n": 2}


def test_failed_update_writes_nothing_and_fires_nothing(service: StateService, events: Any) -> None:
    call(service, "state::set", scope="s", key="k", value={"a": 1})
    with pytest.raises(StateError) as info:
        call(
            service,
            "state::update",
            scope="s",
            key="k",
            ops=[{"merge": {"b": 2}}, {"increment": {"field": "zzz", "by": "1"}}],
        )
    assert info.value.code == "UPDATE_OP_ERROR"
    assert "op 1 (increment)" in info.value.message
    assert call(service, "state::get", scope="s", key="k") == {"a": 1}
    with pytest.raises(StateError):
        call(service, "state::update", scope="s", key="new", ops=[{"remove": 3}])
    assert call(service, "state::get", scope="s", key="new") is None
    assert events.kinds() == ["state:created"]


def test_list_values_of_one_scope(service: StateService, adapter: StateAdapter) -> None:
    assert call(service, "state::list", scope="empty") == []
    for i in range(5):
        call(service, "state::set", scope="l", key=f"k{i}", value=i)
    values = call(service, "state::list", scope="l")
    if adapter.ordered_list:
        assert values == [0, 1, 2, 3, 4]
    else:
        assert sorted(values) == [0, 1, 2, 3, 4]


def test_list_groups_sorted_unique_and_only_non_empty(service: StateService) -> None:
    assert call(service, "state::list_groups") == {"groups": []}
    for scope in ["b", "a", "c", "a"]:
        call(service, "state::set", scope=scope, key=f"k-{scope}", value=1)
    call(service, "state::set", scope="a", key="k2", value=1)
    assert call(service, "state::list_groups") == {"groups": ["a", "b", "c"]}
    call(service, "state::delete", scope="b", key="k-b")
    assert call(service, "state::list_groups") == {"groups": ["a", "c"]}


@pytest.mark.parametrize(
    "name",
    [
        "a:b",
        "a",
        "a:",
        ":b",
        "../../etc/passwd",
        "/abs",
        "..",
        ".",
        "a/b",
        "\\",
        "💾 ünïcode",
        "\x00nul",
        " ",
        "*",
        "{slot}",
        "%2F",
        "CON",
        "x" * 1024,
    ],
)
def test_hostile_names_round_trip(service: StateService, name: str) -> None:
    call(service, "state::set", scope=name, key=name, value={"name": name})
    assert call(service, "state::get", scope=name, key=name) == {"name": name}
    assert name in call(service, "state::list_groups")["groups"]
    assert call(service, "state::list", scope=name) == [{"name": name}]


def test_prefix_scopes_and_separator_collisions_do_not_bleed(service: StateService) -> None:
    call(service, "state::set", scope="a:b", key="c", value=1)
    call(service, "state::set", scope="a", key="b:c", value=2)
    call(service, "state::set", scope="ab", key="c", value=3)
    call(service, "state::set", scope="a", key="bc", value=4)
    assert call(service, "state::get", scope="a:b", key="c") == 1
    assert call(service, "state::get", scope="a", key="b:c") == 2
    assert sorted(call(service, "state::list", scope="a")) == [2, 4]
    assert call(service, "state::list", scope="a:b") == [1]
    assert call(service, "state::list", scope="ab") == [3]
    assert call(service, "state::list_groups") == {"groups": ["a", "a:b", "ab"]}


def test_exact_numbers_and_distinct_empty_containers(service: StateService) -> None:
    value = {
        "big": 2**53 + 1,
        "huge": -(10**40),
        "f": 1.0,
        "tiny": 5e-324,
        "l": [],
        "o": {},
        "n": [[], {}],
    }
    call(service, "state::set", scope="n", key="k", value=value)
    stored = call(service, "state::get", scope="n", key="k")
    assert stored == value
    assert json.dumps(stored) == json.dumps(value)
    assert isinstance(stored["f"], float) and isinstance(stored["big"], int)
    result = call(
        service,
        "state::update",
        scope="n",
        key="k",
        ops=[{"increment": {"field": "big", "by": 2**60}}],
    )
    assert result["new_value"]["big"] == 2**53 + 1 + 2**60


def test_big_values_up_to_the_limit(make_adapter: Any, events: Any) -> None:
    service = StateService(make_adapter(max_value_bytes=100_000), on_change=events)
    fits = "x" * (100_000 - 2)
    call(service, "state::set", scope="big", key="k", value=fits)
    assert call(service, "state::get", scope="big", key="k") == fits
    with pytest.raises(StateError) as info:
        call(service, "state::set", scope="big", key="k", value=fits + "y")
    assert info.value.code == "VALUE_TOO_LARGE"
    assert "100001 bytes" in info.value.message
    with pytest.raises(StateError) as info:
        call(service, "state::update", scope="big", key="k2", ops=[{"set": fits + "y"}])
    assert info.value.code == "VALUE_TOO_LARGE"
    assert call(service, "state::get", scope="big", key="k") == fits
    assert call(service, "state::get", scope="big", key="k2") is None
    assert events.kinds() == ["state:created"]


def test_default_limit_is_one_mebibyte(service: StateService) -> None:
    with pytest.raises(StateError, match="limit is 1048576 bytes"):
        call(service, "state::set", scope="s", key="k", value="x" * (1024 * 1024))


@pytest.mark.parametrize(
    ("function_id", "payload", "message"),
    [
        ("state::set", {"scope": "s", "key": "k"}, "'value' is missing"),
        ("state::set", {"scope": "", "key": "k", "value": 1}, "'scope' must be a non-empty string"),
        (
            "state::set",
            {"scope": "s", "key": 7, "value": 1},
            "'key' Input should be a valid string",
        ),
        ("state::set", {"scope": "s", "key": "k", "value": 1, "data": 2}, "not both"),
        (
            "state::set",
            {"scope": "s" * 1025, "key": "k", "value": 1},
            "1025 bytes in UTF-8; the limit is 1024",
        ),
        ("state::set", {"scope": "é" * 513, "key": "k", "value": 1}, "1026 bytes"),
        ("state::set", {"scope": "\ud800", "key": "k", "value": 1}, "not valid Unicode"),
        ("state::set", {"scope": "s", "key": "k", "value": float("nan")}, "not a JSON value"),
        ("state::set", {"scope": "s", "key": "k", "value": {1, 2}}, "not a JSON value"),
        ("state::set", {"scope": "s", "key": "k", "value": "\udfff"}, "not valid Unicode"),
        (
            "state::set",
            {"scope": "s", "key": "k", "vaule": 1, "value": 1},
            "'vaule' is not a known field",
        ),
        ("state::get", {"scope": "s"}, "'key' is required"),
        ("state::get", {"scope": None, "key": "k"}, "'scope' Input should be a valid string"),
        ("state::delete", {"key": "k"}, "'scope' is required"),
        ("state::update", {"scope": "s", "key": "k"}, "'ops' is required"),
        ("state::list", {}, "'scope' is required"),
        ("state::list_groups", {"scope": "s"}, "'scope' is not a known field"),
        ("state::nope", {}, "unknown state function"),
    ],
)
def test_bad_input_raises_validation_error_and_stores_nothing(
    service: StateService, events: Any, function_id: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(StateError) as info:
        service.call(function_id, payload)
    assert info.value.code == "VALIDATION_ERROR"
    assert message in info.value.message
    assert call(service, "state::list_groups") == {"groups": []}
    assert events.kinds() == []


def test_update_with_ops_not_a_list(service: StateService) -> None:
    with pytest.raises(StateError) as info:
        call(service, "state::update", scope="s", key="k", ops={"set": 1})
    assert info.value.code == "UPDATE_OP_ERROR"
    assert call(service, "state::get", scope="s", key="k") is None


def test_stored_values_are_not_aliased_to_the_callers_objects(service: StateService) -> None:
    value = {"list": [1]}
    call(service, "state::set", scope="s", key="k", value=value)
    value["list"].append(2)
    assert call(service, "state::get", scope="s", key="k") == {"list": [1]}


def test_event_payload_shape(service: StateService, events: Any) -> None:
    call(service, "state::set", scope="users", key="u1", value={"a": 1})
    call(service, "state::set", scope="users", key="u1", value={"a": 2})
    first, second = events.events
    assert set(first) == {
        "type",
        "event_type",
        "scope",
        "key",
        "old_value",
        "new_value",
        "event_id",
        "timestamp",
        "version",
    }
    assert first["type"] == "state" and first["scope"] == "users" and first["key"] == "u1"
    assert first["event_id"] != second["event_id"]
    assert first["timestamp"].endswith("+00:00")


def test_trigger_space_is_separate_from_state(adapter: StateAdapter) -> None:
    version = adapter.triggers_version()
    assert adapter.triggers_put("t1", '{"id": "t1"}') is True
    assert adapter.triggers_put("t1", '{"id": "t1"}') is False
    assert adapter.triggers_version() != version
    assert adapter.triggers_load() == {"t1": '{"id": "t1"}'}
    assert adapter.list_groups() == []
    assert adapter.triggers_delete("t1") is True
    assert adapter.triggers_delete("t1") is False
    assert adapter.triggers_load() == {}


def test_an_operation_applied_twice_changes_state_once(
    service: StateService, adapter: StateAdapter, events: Any
) -> None:
    # Given an increment applied under an operation id (a Celery task id)
    ops = [{"increment": {"field": "n", "by": 1}}]
    first = service.call("state::update", {"scope": "s", "key": "c", "ops": ops}, "task-1")
    # When the same task is delivered again: its worker died before acknowledging it, so
    # another worker (a service of its own, on the same storage) runs it
    redelivered = StateService(adapter, on_change=events)
    again = redelivered.call("state::update", {"scope": "s", "key": "c", "ops": ops}, "task-1")
    # Then it returns the recorded result, and the count moved once
    assert first == again
    assert plain(first) == {"old_value": None, "new_value": {"n": 1}}
    assert call(service, "state::get", scope="s", key="c") == {"n": 1}
    service.call("state::update", {"scope": "s", "key": "c", "ops": ops}, "task-2")
    assert call(service, "state::get", scope="s", key="c") == {"n": 2}
    # And its trigger event is sent again with the same event_id, for handlers to dedupe
    assert [e["event_id"] for e in events.events] == ["task-1", "task-1", "task-2"]


def test_set_and_delete_under_an_operation_id_apply_once(service: StateService) -> None:
    # (Each repeat comes after the service moved on to another call: the first delivery
    # finished and its trigger work was sent, so the repeat finds its record settled.)
    first = service.call("state::set", {"scope": "s", "key": "k", "value": 1}, "op-a")
    assert plain(first) == {"old_value": None, "new_value": 1}
    service.call("state::set", {"scope": "s", "key": "k", "value": 2}, "op-b")
    assert service.call("state::set", {"scope": "s", "key": "k", "value": 1}, "op-a") == {
        "old_value": None,
        "new_value": 1,
        "version": first["version"],
        "replayed": True,
    }
    assert call(service, "state::get", scope="s", key="k") == 2
    assert service.call("state::delete", {"scope": "s", "key": "k"}, "op-c") == 2
    service.call("state::set", {"scope": "s", "key": "k", "value": 3}, "op-d")
    assert service.call("state::delete", {"scope": "s", "key": "k"}, "op-c") is None
    assert call(service, "state::get", scope="s", key="k") == 3


def test_a_failed_operation_is_not_recorded(service: StateService) -> None:
    call(service, "state::set", scope="s", key="k", value={"n": "text"})
    with pytest.raises(StateError):
        service.call(
            "state::update",
            {"scope": "s", "key": "k", "ops": [{"increment": {"field": "n"}}]},
            "op-x",
        )
    call(service, "state::set", scope="s", key="k", value={"n": 1})
    result = service.call(
        "state::update", {"scope": "s", "key": "k", "ops": [{"increment": {"field": "n"}}]}, "op-x"
    )
    assert result["new_value"] == {"n": 2}
