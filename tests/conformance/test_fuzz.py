"""Hostile input against the core and every adapter: only StateError escapes, and a failed
call changes nothing. Bounded example counts, so it runs in CI."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state_tasks.core.errors import StateError
from state_tasks.core.service import STATE_FUNCTIONS, StateService

names = st.one_of(
    st.sampled_from(["s", "k", "", " ", "..", "a:b", "{x}", "\x00", "\ud800", "x" * 1025]),
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=8)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
op_names = st.sampled_from(
    ["set", "merge", "increment", "decrement", "remove", "type", "by", "field", "x"]
)
ops = st.one_of(
    values,
    st.lists(
        st.one_of(
            st.dictionaries(op_names, values, max_size=2),
            st.dictionaries(op_names, st.dictionaries(op_names, values, max_size=2), max_size=2),
        ),
        max_size=3,
    ),
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "scope": names,
        "key": names,
        "value": values,
        "data": values,
        "ops": ops,
        "extra": values,
    },
)


def snapshot(service: StateService) -> dict[str, list[Any]]:
    groups = service.call("state::list_groups", {})["groups"]
    return {group: service.call("state::list", {"scope": group}) for group in groups}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    function_id=st.sampled_from(STATE_FUNCTIONS),
    payload=payloads,
    op_id=st.none() | st.text(min_size=1, max_size=6),
)
def test_only_state_errors_escape_and_failures_change_nothing(
    service: StateService, function_id: str, payload: dict[str, Any], op_id: str | None
) -> None:
    before = snapshot(service)
    try:
        service.call(function_id, payload, op_id)
    except StateError as e:
        assert str(e) and e.code in {"VALIDATION_ERROR", "UPDATE_OP_ERROR", "VALUE_TOO_LARGE"}
        assert snapshot(service) == before
