"""Update ops: both spellings, every error, all-or-nothing, exact numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state_tasks.core.errors import UpdateOpError
from state_tasks.core.ops import apply_ops, parse_ops


def run(current: Any, ops: list[Any], exists: bool = True) -> Any:
    return apply_ops(current, parse_ops(ops), exists=exists)


@pytest.mark.parametrize(
    ("seed", "engine"),
    [
        ({"set": {"a": 1}}, {"type": "set", "path": "", "value": {"a": 1}}),
        ({"merge": {"b": 2}}, {"type": "merge", "value": {"b": 2}}),
        ({"increment": {"field": "n", "by": 5}}, {"type": "increment", "path": "n", "by": 5}),
        ({"decrement": {"field": "n", "by": 5}}, {"type": "decrement", "path": "n", "by": 5}),
        ({"remove": "x"}, {"type": "remove", "path": "x"}),
    ],
)
def test_seed_and_engine_forms_agree(seed: dict[str, Any], engine: dict[str, Any]) -> None:
    current = {"n": 10, "x": True}
    assert run(current, [seed]) == run(current, [engine])


def test_ops_apply_in_order() -> None:
    ops = [
        {"set": {"name": "Alice"}},
        {"merge": {"email": "a@x", "visits": 1}},
        {"increment": {"field": "visits", "by": 2}},
        {"decrement": {"field": "visits", "by": 1}},
        {"remove": "email"},
    ]
    assert run({"old": True}, ops) == {"name": "Alice", "visits": 2}


def test_missing_key_starts_as_empty_object() -> None:
    assert run(None, [{"increment": {"field": "count", "by": 1}}], exists=False) == {"count": 1}
    assert run(None, [], exists=False) == {}


def test_existing_null_is_not_a_missing_key() -> None:
    with pytest.raises(UpdateOpError, match=r"op 0 \(merge\).*null"):
        run(None, [{"merge": {"a": 1}}], exists=True)


def test_engine_set_with_path_sets_one_field() -> None:
    assert run({"a": 1}, [{"type": "set", "path": "b", "value": [1]}]) == {"a": 1, "b": [1]}


def test_missing_field_starts_at_zero_and_by_defaults_to_one() -> None:
    assert run({}, [{"decrement": {"field": "n"}}]) == {"n": -1}


def test_remove_of_missing_field_is_a_no_op() -> None:
    assert run({"a": 1}, [{"remove": "zzz"}]) == {"a": 1}


def test_big_integers_stay_exact() -> None:
    big = 2**64 + 1
    result = run({"n": big}, [{"increment": {"field": "n", "by": 2**70}}])
    assert result["n"] == big + 2**70
    assert isinstance(result["n"], int)


def test_floats_stay_floats_and_empty_containers_stay_distinct() -> None:
    result = run({"f": 1.0, "l": [], "o": {}}, [{"increment": {"field": "f", "by": 1}}])
    assert result == {"f": 2.0, "l": [], "o": {}}
    assert isinstance(result["f"], float)
    assert json.dumps(result) == '{"f": 2.0, "l": [], "o": {}}'


@pytest.mark.parametrize(
    ("current", "ops", "message"),
    [
        (
            {"n": "x"},
            [{"increment": {"field": "n", "by": 1}}],
            r"op 0 \(increment\): field 'n' holds 'x'",
        ),
        (
            {"n": True},
            [{"increment": {"field": "n", "by": 1}}],
            r"op 0 \(increment\).*not a number",
        ),
        (
            {"n": 1},
            [{"increment": {"field": "n", "by": True}}],
            r"op 0 \(increment\): 'by' must be a number",
        ),
        (
            {"n": 1},
            [{"decrement": {"field": "n", "by": "2"}}],
            r"op 0 \(decrement\): 'by' must be a number",
        ),
        ({}, [{"merge": [1]}], r"op 0 \(merge\): merge takes an object"),
        ([1], [{"merge": {"a": 1}}], r"op 0 \(merge\): the current value is \[1\]"),
        (5, [{"remove": "a"}], r"op 0 \(remove\): the current value is 5"),
        ("s", [{"increment": {"field": "a"}}], r"op 0 \(increment\): the current value"),
        ({}, [{"frobnicate": 1}], r"op 0: unknown op 'frobnicate'"),
        ({}, [{"set": 1, "merge": {}}], r"op 0: an op has exactly one key"),
        ({}, [{"type": "explode"}], r"op 0: unknown op type 'explode'"),
        (
            {},
            [{"type": "increment", "path": "a", "by": 1, "extra": 1}],
            r"unknown keys \['extra'\]",
        ),
        ({}, [{"type": "increment"}], r"missing \['path'\]"),
        ({}, [{"remove": ""}], r"op 0 \(remove\).*non-empty string"),
        ({}, ["set"], r"op 0: an op is an object"),
        ({"f": 1e308}, [{"increment": {"field": "f", "by": 1e308}}], r"would become inf"),
    ],
)
def test_errors_name_the_op_and_why(current: Any, ops: list[Any], message: str) -> None:
    with pytest.raises(UpdateOpError, match=message) as info:
        run(current, ops)
    assert info.value.code == "UPDATE_OP_ERROR"
    assert "nothing was written" in info.value.message


def test_error_names_the_index_of_the_failing_op() -> None:
    with pytest.raises(UpdateOpError) as info:
        run({}, [{"set": {"a": "x"}}, {"merge": {"b": 1}}, {"increment": {"field": "a"}}])
    assert info.value.message.startswith("op 2 (increment): field 'a' holds 'x'")


def test_ops_must_be_a_list() -> None:
    with pytest.raises(UpdateOpError, match="'ops' must be an array"):
        parse_ops({"set": 1})


def test_all_or_nothing_leaves_current_untouched() -> None:
    current = {"a": 1, "nested": {"x": 1}}
    snapshot = json.dumps(current)
    with pytest.raises(UpdateOpError):
        run(current, [{"merge": {"b": 2}}, {"remove": "a"}, {"increment": {"field": "nested"}}])
    assert json.dumps(current) == snapshot


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@given(current=json_values, raw_ops=st.lists(json_values, max_size=4))
def test_arbitrary_input_raises_only_update_op_error(current: Any, raw_ops: list[Any]) -> None:
    snapshot = json.dumps(current)
    try:
        run(current, raw_ops)
    except UpdateOpError as e:
        assert str(e)
    assert json.dumps(current) == snapshot


@given(start=st.integers(), steps=st.lists(st.integers(), max_size=20))
def test_increments_are_exact_integer_sums(start: int, steps: list[int]) -> None:
    ops = [{"increment": {"field": "n", "by": step}} for step in steps]
    assert run({"n": start}, ops) == {"n": start + sum(steps)}


def test_typed_op_models_give_the_seed_form() -> None:
    from state_tasks import DecrementOp, IncrementOp, MergeOp, RemoveOp, SetOp, ops_json

    typed = ops_json(
        SetOp(value={"a": 1}),
        MergeOp(value={"b": 2}),
        IncrementOp(field="n", by=3),
        DecrementOp(field="n"),
        RemoveOp(field="a"),
        {"remove": "b"},
    )
    assert typed == [
        {"set": {"a": 1}},
        {"merge": {"b": 2}},
        {"increment": {"field": "n", "by": 3}},
        {"decrement": {"field": "n", "by": 1}},
        {"remove": "a"},
        {"remove": "b"},
    ]
    assert run(None, typed, exists=False) == {"n": 2}
