"""Every row of SPEC §3 through a real worker, called the way a service calls it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from helpers import plain, wait_until

from state_tasks import StateError, UpdateOpError, ValidationError, ValueTooLarge
from state_tasks.tasks import state_get, state_set


def scope() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


def test_set_get_and_the_data_alias(deployment: Any) -> None:
    s = scope()
    assert plain(deployment.call("state::set", scope=s, key="u1", value={"name": "Alice"})) == {
        "old_value": None,
        "new_value": {"name": "Alice"},
    }
    assert plain(deployment.call("state::set", scope=s, key="u1", data={"name": "Bob"})) == {
        "old_value": {"name": "Alice"},
        "new_value": {"name": "Bob"},
    }
    assert deployment.call("state::get", scope=s, key="u1") == {"name": "Bob"}
    assert deployment.call("state::get", scope=s, key="missing") is None


def test_delete_list_and_list_groups(deployment: Any) -> None:
    s = scope()
    for i in range(3):
        deployment.call("state::set", scope=s, key=f"k{i}", value={"i": i})
    values = deployment.call("state::list", scope=s)
    assert sorted(values, key=lambda v: v["i"]) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert s in deployment.call("state::list_groups")["groups"]
    assert deployment.call("state::delete", scope=s, key="k1") == {"i": 1}
    assert deployment.call("state::delete", scope=s, key="k1") is None
    deployment.call("state::delete", scope=s, key="k0")
    deployment.call("state::delete", scope=s, key="k2")
    assert deployment.call("state::list", scope=s) == []
    groups = deployment.call("state::list_groups")["groups"]
    assert s not in groups and groups == sorted(set(groups))


def test_update_in_both_op_spellings_with_exact_numbers(deployment: Any) -> None:
    s = scope()
    result = deployment.call(
        "state::update",
        scope=s,
        key="c",
        ops=[
            {"set": {"n": 2**63, "f": 0.5, "l": [], "o": {}}},
            {"type": "increment", "path": "n", "by": 1},
            {"merge": {"extra": True}},
            {"type": "remove", "path": "extra"},
            {"decrement": {"field": "f", "by": 0.25}},
        ],
    )
    assert plain(result) == {
        "old_value": None,
        "new_value": {"n": 2**63 + 1, "f": 0.25, "l": [], "o": {}},
    }
    assert deployment.call("state::get", scope=s, key="c") == result["new_value"]


@pytest.mark.parametrize(
    ("function_id", "payload", "error", "message"),
    [
        ("state::set", {"key": "k", "value": 1}, ValidationError, "'scope' is required"),
        ("state::set", {"scope": "s", "key": "k"}, ValidationError, "'value' is missing"),
        (
            "state::get",
            {"scope": "s", "key": ""},
            ValidationError,
            "'key' must be a non-empty string",
        ),
        (
            "state::set",
            {"scope": "s", "key": "k", "value": 1, "colour": "red"},
            ValidationError,
            "'colour' is not a known field",
        ),
        (
            "state::update",
            {"scope": "s", "key": "k", "ops": [{"wibble": 1}]},
            UpdateOpError,
            "op 0: unknown op",
        ),
        (
            "state::set",
            {"scope": "s", "key": "k", "value": "x" * (1024 * 1024)},
            ValueTooLarge,
            "the limit is 1048576 bytes",
        ),
    ],
)
def test_bad_input_comes_back_as_state_error_and_stores_nothing(
    deployment: Any,
    function_id: str,
    payload: dict[str, Any],
    error: type[StateError],
    message: str,
) -> None:
    if "scope" in payload and payload["scope"] == "s":
        payload = {**payload, "scope": scope()}
    with pytest.raises(error) as info:
        deployment.call(function_id, **payload)
    assert message in info.value.message
    assert info.value.code == error.default_code
    if "scope" in payload and payload.get("key"):
        assert deployment.call("state::get", scope=payload["scope"], key=payload["key"]) is None
        assert payload["scope"] not in deployment.call("state::list_groups")["groups"]


def test_typed_task_objects_work_with_delay(deployment: Any) -> None:
    s = scope()
    app = deployment.client.app
    result = app.send_task(state_set.name, kwargs={"scope": s, "key": "k", "value": [1]})
    assert plain(result.get(timeout=20)) == {"old_value": None, "new_value": [1]}
    assert app.send_task(state_get.name, kwargs={"scope": s, "key": "k"}).get(timeout=20) == [1]


def test_facade_trigger_waits_or_returns_none_for_void(deployment: Any) -> None:
    s = scope()
    iii = deployment.client.iii
    assert (
        iii.trigger(
            {
                "function_id": "state::set",
                "payload": {"scope": s, "key": "k", "value": 1},
                "action": {"type": "void"},
            }
        )
        is None
    )
    # the void call is applied all the same (by whichever worker takes it: wait for it, as
    # a later call sent meanwhile may be taken first by another worker)
    wait_until(lambda: deployment.call("state::get", scope=s, key="k") == 1, 20, "the void set")
    assert plain(
        iii.trigger(
            {
                "function_id": "state::update",
                "payload": {"scope": s, "key": "k", "ops": [{"set": 2}]},
                "timeout_ms": 20_000,
            }
        )
    ) == {"old_value": 1, "new_value": 2}
    with pytest.raises(ValidationError, match="unknown keys"):
        iii.trigger({"function_id": "state::get", "paylod": {}})
