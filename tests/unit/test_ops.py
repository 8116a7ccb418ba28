"""Update ops: both spellings, every error, all-or-nothing, exact numbers."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import UpdateOpError, ValidationError
from state_tasks.core.ops import (
    ENGINE_REASONS,
    OWN_REASONS,
    PROTO_POLLUTION_KEYS,
    REASONS,
    Op,
    apply_ops,
    parse_op,
    parse_ops,
)


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


# --- append, nested paths, reasons and details (the engine's update_ops.rs) ---------------


def append(path: Any, value: Any) -> dict[str, Any]:
    return {"type": "append", "path": path, "value": value}


def reason_of(current: Any, ops: Any, exists: bool = True) -> tuple[int | None, str]:
    with pytest.raises(UpdateOpError) as info:
        apply_ops(current, parse_ops(ops), exists=exists)
    details = info.value.details
    assert details is not None and set(details) == {"op_index", "reason"}
    return details["op_index"], details["reason"]


def test_append_seed_and_engine_forms_agree() -> None:
    seed = {"append": {"field": "events", "value": {"kind": "chunk"}}}
    engine = append("events", {"kind": "chunk"})
    current = {"events": [{"kind": "start"}]}
    assert run(current, [seed]) == run(current, [engine])
    assert run(current, [seed]) == {"events": [{"kind": "start"}, {"kind": "chunk"}]}


@pytest.mark.parametrize(
    ("current", "op", "expected"),
    [
        # an array gets one more element, whatever the value (an array is one element)
        ({"l": [1]}, append("l", 2), {"l": [1, 2]}),
        ({"l": [1]}, append("l", [2, 3]), {"l": [1, [2, 3]]}),
        ({"l": []}, append("l", None), {"l": [None]}),
        # a string takes a string
        ({"t": "hello"}, append("t", " world"), {"t": "hello world"}),
        # a missing field or null starts as the string, or as a one-element array
        ({}, append("t", "hello"), {"t": "hello"}),
        ({}, append("e", {"kind": "chunk"}), {"e": [{"kind": "chunk"}]}),
        ({"t": None}, append("t", "x"), {"t": "x"}),
        ({"e": None}, append("e", 1), {"e": [1]}),
        # the whole value: path absent, "" or []
        ([1], {"type": "append", "value": 2}, [1, 2]),
        ("ab", append("", "c"), "abc"),
        (None, append([], "x"), "x"),
        (None, append("", 5), [5]),
        # nested: objects are created on the way, and a missing leaf is always an array
        ({}, append(["entityId", "buffer"], "a"), {"entityId": {"buffer": ["a"]}}),
        ({"entityId": {}}, append(["entityId", "buffer"], "x"), {"entityId": {"buffer": ["x"]}}),
        (
            {"entityId": {"buffer": ["a"]}},
            append(["entityId", "buffer"], "b"),
            {"entityId": {"buffer": ["a", "b"]}},
        ),
        ({"a": {"s": "x"}}, append(["a", "s"], "y"), {"a": {"s": "xy"}}),
        ({"a": {"n": None}}, append(["a", "n"], "y"), {"a": {"n": "y"}}),
        # one segment in an array is the same as the string
        ({}, append(["t"], "x"), {"t": "x"}),
        # a dotted string is one literal field
        (
            {"entityId": {"buffer": ["nested"]}},
            append("entityId.buffer", "flat"),
            {"entityId": {"buffer": ["nested"]}, "entityId.buffer": "flat"},
        ),
    ],
)
def test_append(current: Any, op: dict[str, Any], expected: Any) -> None:
    assert run(current, [op]) == expected


def test_append_to_a_missing_key_starts_from_nothing() -> None:
    assert run(None, [{"type": "append", "value": "hello"}], exists=False) == "hello"
    assert run(None, [{"type": "append", "value": {"k": 1}}], exists=False) == [{"k": 1}]
    assert run(None, [append("events", 1)], exists=False) == {"events": [1]}
    # once an op has run, the value is what that op made of it
    assert reason_of(None, [{"remove": "x"}, append("", "a")], exists=False) == (
        1,
        "append.type_mismatch",
    )


def test_append_copies_instead_of_mutating() -> None:
    current = {"l": [1], "n": {"l": [1]}}
    snapshot = json.dumps(current)
    run(current, [append("l", 2), append(["n", "l"], 2)])
    assert json.dumps(current) == snapshot


@pytest.mark.parametrize(
    ("current", "op", "reason"),
    [
        ({"t": "hello"}, append("t", {"not": "string"}), "append.type_mismatch"),
        ({"t": "hello"}, append("t", 1), "append.type_mismatch"),
        ({"e": {}}, append("e", "chunk"), "append.type_mismatch"),
        ({"n": 1}, append("n", 1), "append.type_mismatch"),
        ({"b": False}, append("b", 1), "append.type_mismatch"),
        ({"a": {"b": {"x": "y"}}}, append(["a", "b"], "z"), "append.type_mismatch"),
        ({"a": 1}, append("", 1), "append.type_mismatch"),
        ([1, 2, 3], append(["a", "b"], "x"), "append.target_not_object"),
        ("s", append("a", "x"), "append.target_not_object"),
        ({"a": 5}, append(["a", "b"], "x"), "append.target_not_object"),
        ({"a": {"b": []}}, append(["a", "b", "c"], "x"), "append.target_not_object"),
    ],
)
def test_append_errors(current: Any, op: dict[str, Any], reason: str) -> None:
    snapshot = json.dumps(current)
    assert reason_of(current, [op]) == (0, reason)
    assert json.dumps(current) == snapshot


def test_append_error_messages_say_why() -> None:
    with pytest.raises(UpdateOpError, match=r"op 0 \(append\): field 't' holds a string"):
        run({"t": "x"}, [{"append": {"field": "t", "value": 1}}])
    with pytest.raises(UpdateOpError, match=r"field 'e' holds \{\} \(an object\); append needs"):
        run({"e": {}}, [{"append": {"field": "e", "value": 1}}])


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (
            {"type": "set", "path": ["profile", "address", "city"], "value": "Oslo"},
            {"keep": 1, "profile": {"name": "A", "address": {"city": "Oslo"}}},
        ),
        (
            {"type": "merge", "path": ["profile", "address"], "value": {"zip": "0150"}},
            {"keep": 1, "profile": {"name": "A", "address": {"zip": "0150"}}},
        ),
        (
            {"type": "merge", "path": ["profile"], "value": {"age": 3}},
            {"keep": 1, "profile": {"name": "A", "age": 3}},
        ),
        (
            {"type": "increment", "path": ["profile", "stats", "visits"], "by": 2},
            {"keep": 1, "profile": {"name": "A", "stats": {"visits": 2}}},
        ),
        (
            {"type": "decrement", "path": ["profile", "stats", "visits"], "by": 2},
            {"keep": 1, "profile": {"name": "A", "stats": {"visits": -2}}},
        ),
        (
            {"type": "remove", "path": ["profile", "name"]},
            {"keep": 1, "profile": {}},
        ),
        # remove creates nothing: a missing object on the way means nothing to remove
        (
            {"type": "remove", "path": ["profile", "zzz", "name"]},
            {"keep": 1, "profile": {"name": "A"}},
        ),
        # [] is the whole value
        ({"type": "set", "path": [], "value": 7}, 7),
        (
            {"type": "merge", "path": [], "value": {"x": 1}},
            {"keep": 1, "profile": {"name": "A"}, "x": 1},
        ),
    ],
)
def test_nested_paths(op: dict[str, Any], expected: Any) -> None:
    current = {"keep": 1, "profile": {"name": "A"}}
    snapshot = json.dumps(current)
    assert run(current, [op]) == expected
    assert json.dumps(current) == snapshot


def test_nested_numbers_add_up_and_a_one_segment_array_is_the_field() -> None:
    ops = [
        {"type": "increment", "path": ["a", "n"], "by": 5},
        {"type": "decrement", "path": ["a", "n"], "by": 2},
        {"type": "increment", "path": ["n"]},
        {"type": "set", "path": ["a.b"], "value": True},
    ]
    assert run({"n": 1}, ops) == {"n": 2, "a": {"n": 3}, "a.b": True}


@pytest.mark.parametrize("kind", ["set", "merge", "increment", "decrement", "append", "remove"])
def test_no_op_walks_through_a_non_object(kind: str) -> None:
    extra = {
        "set": {"value": 1},
        "merge": {"value": {"x": 1}},
        "append": {"value": 1},
        "increment": {"by": 1},
        "decrement": {"by": 1},
        "remove": {},
    }[kind]
    for current in ({"a": 5}, {"a": [1]}, {"a": None}, {"a": "s"}):
        op = {"type": kind, "path": ["a", "b", "c"], **extra}
        with pytest.raises(UpdateOpError, match=r"path \['a', 'b', 'c'\] goes through field 'a'"):
            run(current, [op])
        assert reason_of(current, [op]) == (0, f"{kind}.target_not_object")
    # and the value itself must be an object for any path
    assert reason_of([1], [{"type": kind, "path": ["a"], **extra}]) == (
        0,
        f"{kind}.target_not_object",
    )


def test_merge_refuses_to_replace_a_non_object_target() -> None:
    # the engine replaces a non-object with {}; here it is an error, as for a single field
    assert reason_of(
        {"s": {"abc": "garbage"}}, [{"type": "merge", "path": ["s", "abc"], "value": {"x": 1}}]
    ) == (
        0,
        "merge.target_not_object",
    )
    assert reason_of({"a": 1}, [{"type": "merge", "path": "a", "value": {}}]) == (
        0,
        "merge.target_not_object",
    )
    assert reason_of("leaf", [{"merge": {"a": 1}}]) == (0, "merge.target_not_object")


@pytest.mark.parametrize(
    ("current", "exists", "op", "expected"),
    [
        (5, True, {"type": "increment", "path": "", "by": 2}, 7),
        (1.5, True, {"type": "increment", "path": []}, 2.5),
        (5, True, {"type": "decrement", "path": "", "by": 2}, 3),
        (None, False, {"type": "increment", "path": "", "by": 3}, 3),
        (None, False, {"type": "decrement", "path": "", "by": 3}, -3),
        ({"a": 1}, True, {"type": "remove", "path": ""}, None),
        ({"a": 1}, True, {"type": "remove", "path": []}, None),
        ({"a": 1}, True, {"type": "set", "path": "", "value": None}, None),
    ],
)
def test_engine_form_ops_on_the_whole_value(
    current: Any, exists: bool, op: dict[str, Any], expected: Any
) -> None:
    assert run(current, [op], exists=exists) == expected


def test_numeric_ops_on_the_whole_value_need_a_number() -> None:
    assert reason_of({}, [{"type": "increment", "path": ""}]) == (0, "increment.not_number")
    assert reason_of(None, [{"type": "decrement", "path": []}]) == (0, "decrement.not_number")
    with pytest.raises(
        UpdateOpError, match=r"the current value is \{\} \(an object\), not a number"
    ):
        run({}, [{"type": "increment", "path": ""}])


#: One case per reason: (current, ops, op_index, reason).
REASON_CASES: list[tuple[Any, Any, int | None, str]] = [
    ({}, {"set": 1}, None, "ops.not_an_array"),
    ({}, ["set"], 0, "op.malformed"),
    ({}, [{}], 0, "op.malformed"),
    ({}, [{"set": 1, "merge": {}}], 0, "op.malformed"),
    ({}, [{"type": "set", "value": 1, "extra": 1}], 0, "op.malformed"),
    ({}, [{"type": "append", "path": "a"}], 0, "op.malformed"),
    ({}, [{"append": ["a", 1]}], 0, "op.malformed"),
    ({}, [{"append": {"field": "a", "by": 1, "value": 1}}], 0, "op.malformed"),
    ({}, [{"increment": "a"}], 0, "op.malformed"),
    ({}, [{"set": 1}, {"frobnicate": 1}], 1, "op.unknown_type"),
    ({}, [{"type": "explode"}], 0, "op.unknown_type"),
    ({}, [{"type": ["set"]}], 0, "op.unknown_type"),
    ({}, [{"increment": {"field": "n", "by": "1"}}], 0, "increment.by.not_number"),
    ({}, [{"type": "decrement", "path": "n", "by": True}], 0, "decrement.by.not_number"),
    ({}, [{"increment": {"by": 1}}], 0, "increment.path.invalid"),
    ({}, [{"remove": 3}], 0, "remove.path.invalid"),
    ({}, [{"append": {"value": 1}}], 0, "append.path.invalid"),
    ({}, [{"type": "set", "path": None, "value": 1}], 0, "set.path.invalid"),
    ({}, [{"type": "merge", "path": ["a", 1], "value": {}}], 0, "merge.path.invalid"),
    ({}, [{"type": "decrement", "path": {"a": 1}}], 0, "decrement.path.invalid"),
    ({}, [{"remove": ""}], 0, "remove.path.empty_segment"),
    ({}, [{"increment": {"field": ""}}], 0, "increment.path.empty_segment"),
    ({}, [{"merge": [1]}], 0, "merge.value.not_an_object"),
    (
        {},
        [{"type": "merge", "value": {str(i): i for i in range(1025)}}],
        0,
        "merge.value.too_many_keys",
    ),
    ({}, [{"type": "merge", "value": {"constructor": 1}}], 0, "merge.value.proto_polluted"),
    (
        {},
        [{"type": "merge", "value": {"a": json.loads("[" * 16 + "]" * 16)}}],
        0,
        "merge.value.too_deep",
    ),
    ([1], [{"merge": {"a": 1}}], 0, "merge.target_not_object"),
    (5, [{"type": "set", "path": "a", "value": 1}], 0, "set.target_not_object"),
    ("s", [{"increment": {"field": "a"}}], 0, "increment.target_not_object"),
    (
        {"a": 1},
        [
            {"increment": {"field": "a"}},
            {"increment": {"field": "b"}},
            {"type": "increment", "path": ["a", "x"]},
        ],
        2,
        "increment.target_not_object",
    ),
    ({"n": None}, [{"increment": {"field": "n"}}], 0, "increment.not_number"),
    ({"f": 1e308}, [{"increment": {"field": "f", "by": 1e308}}], 0, "increment.not_number"),
    (True, [{"decrement": {"field": "n"}}], 0, "decrement.target_not_object"),
    ({"n": "1"}, [{"decrement": {"field": "n"}}], 0, "decrement.not_number"),
    ({"f": -1e308}, [{"decrement": {"field": "f", "by": 1e308}}], 0, "decrement.not_number"),
    ({"t": "a"}, [append("t", 1)], 0, "append.type_mismatch"),
    ([], [append("a", 1)], 0, "append.target_not_object"),
    (None, [{"remove": "a"}], 0, "remove.target_not_object"),
] + [
    case
    for kind, extra in [
        ("set", {"value": 1}),
        ("merge", {"value": {}}),
        ("increment", {}),
        ("decrement", {}),
        ("append", {"value": 1}),
        ("remove", {}),
    ]
    for case in [
        (
            {},
            [{"type": kind, "path": [f"k{i}" for i in range(33)], **extra}],
            0,
            f"{kind}.path.too_deep",
        ),
        (
            {},
            [{"type": kind, "path": ["a", "é" * 129], **extra}],
            0,
            f"{kind}.path.segment_too_long",
        ),
        ({}, [{"type": kind, "path": ["a", ""], **extra}], 0, f"{kind}.path.empty_segment"),
        ({}, [{"type": kind, "path": "__proto__", **extra}], 0, f"{kind}.path.proto_polluted"),
        (
            {},
            [{"type": kind, "path": ["a", "constructor", "b"], **extra}],
            0,
            f"{kind}.path.proto_polluted",
        ),
        (
            {},
            [{"type": kind, "path": ["safe", "prototype"], **extra}],
            0,
            f"{kind}.path.proto_polluted",
        ),
    ]
]


@pytest.mark.parametrize(("current", "ops", "op_index", "reason"), REASON_CASES)
def test_every_error_carries_its_index_and_reason(
    current: Any, ops: Any, op_index: int | None, reason: str
) -> None:
    snapshot = json.dumps(current)
    with pytest.raises(UpdateOpError) as info:
        apply_ops(current, parse_ops(ops))
    e = info.value
    assert e.details == {"op_index": op_index, "reason": reason}
    assert e.code == "UPDATE_OP_ERROR"
    if op_index is not None:
        assert e.message.startswith(f"op {op_index}")
        assert e.message.endswith("; nothing was written")
    assert json.dumps(current) == snapshot


def _nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


# The ops apply, but their result cannot be stored (state_tasks.core.codec.apply_ops_json):
# the op that made it so is named, as for any other failure.
STORE_REASON_CASES = [
    (
        {"a": 1},
        [
            {"set": {"field": "b", "value": 1}},
            {"type": "set", "path": ["x"], "value": _nested(205)},
        ],
        1,
        "value.too_deep",
    ),
    ({"n": 1}, [{"type": "increment", "path": ["n"], "by": 10**4400}], 0, "value.integer_too_long"),
    (
        {"s": "ok"},
        [{"type": "set", "path": ["s"], "value": "\ud800"}, {"increment": {"field": "n"}}],
        0,
        "value.invalid_unicode",
    ),
    ({}, [{"type": "set", "path": ["n"], "value": float("nan")}], 0, "value.not_json"),
]


@pytest.mark.parametrize(("current", "ops", "op_index", "reason"), STORE_REASON_CASES)
def test_a_result_that_cannot_be_stored_carries_its_index_and_reason(
    current: Any, ops: Any, op_index: int, reason: str
) -> None:
    with pytest.raises(UpdateOpError) as info:
        apply_ops_json(json.dumps(current), parse_ops(ops), 1024 * 1024)
    e = info.value
    assert e.details == {"op_index": op_index, "reason": reason}
    assert e.message.startswith(f"op {op_index} (")
    assert e.message.endswith("; nothing was written")


def test_the_reason_table_covers_every_reason_and_the_engine_names() -> None:
    assert {case[3] for case in REASON_CASES + STORE_REASON_CASES} == REASONS
    assert ENGINE_REASONS <= REASONS and not ENGINE_REASONS & OWN_REASONS
    # the engine's own constants, as update_ops.rs spells them
    assert {
        "merge.path.too_deep",
        "merge.path.segment_too_long",
        "merge.path.empty_segment",
        "merge.path.proto_polluted",
        "merge.value.too_deep",
        "merge.value.too_many_keys",
        "merge.value.proto_polluted",
        "merge.value.not_an_object",
        "set.target_not_object",
        "append.target_not_object",
        "append.type_mismatch",
        "increment.target_not_object",
        "increment.not_number",
        "decrement.target_not_object",
        "decrement.not_number",
        "remove.target_not_object",
    } <= ENGINE_REASONS


def test_path_bounds_are_the_engines() -> None:
    deepest = {"type": "set", "path": [f"k{i}" for i in range(32)], "value": 1}
    longest = {"type": "set", "path": ["é" * 128], "value": 1}  # 256 bytes
    value = run({}, [deepest, longest])
    assert value["é" * 128] == 1
    # 16 levels of nesting is the most a merge value may have
    assert run({}, [{"type": "merge", "value": {"a": json.loads("[" * 15 + "]" * 15)}}])
    assert run({}, [{"type": "merge", "value": {str(i): i for i in range(1024)}}])
    # the sinks are refused as engine-form field names, but a set value may hold them
    assert reason_of({}, [{"type": "increment", "path": "__proto__"}]) == (
        0,
        "increment.path.proto_polluted",
    )
    assert run({}, [{"set": {"__proto__": 1}}]) == {"__proto__": 1}


def test_the_seed_forms_keep_accepting_what_they_always_did() -> None:
    # The engine's bounds came with its engine form; calls in the seed form are unchanged.
    assert run({}, [{"increment": {"field": "constructor"}}]) == {"constructor": 1}
    assert run({}, [{"merge": {"prototype": 1, "__proto__": 2}}]) == {
        "prototype": 1,
        "__proto__": 2,
    }
    assert run({}, [{"merge": {str(i): i for i in range(2000)}}])["1999"] == 1999
    deep = json.loads("[" * 40 + "]" * 40)
    assert run({}, [{"merge": {"a": deep}}]) == {"a": deep}
    assert run({}, [{"remove": "x" * 300}]) == {}


def test_the_message_names_the_op_and_why() -> None:
    with pytest.raises(UpdateOpError) as info:
        run({"name": "Alice"}, [{"increment": {"field": "name"}}])
    assert str(info.value) == (
        "[UPDATE_OP_ERROR] op 0 (increment): field 'name' holds 'Alice' (a string), "
        "not a number; nothing was written"
    )
    with pytest.raises(UpdateOpError, match=r"op 1 \(increment\): path \['p', 'n'\] holds 'x'"):
        run(
            {"p": {"n": "x"}},
            [{"set": {"p": {"n": "x"}}}, {"type": "increment", "path": ["p", "n"]}],
        )


def test_error_details_round_trip_as_the_json_result_backend_rebuilds_them() -> None:
    with pytest.raises(UpdateOpError) as info:
        run({"n": "x"}, [{"set": {"n": "x"}}, {"increment": {"field": "n"}}])
    e = info.value
    assert e.args == (
        e.message,
        "UPDATE_OP_ERROR",
        {"op_index": 1, "reason": "increment.not_number"},
    )
    # what Celery's JSON backend stores (exc_message = args) and how it rebuilds (cls(*args))
    stored = json.loads(json.dumps(e.args))
    for again in (type(e)(*e.args), type(e)(*stored), pickle.loads(pickle.dumps(e))):
        assert type(again) is UpdateOpError
        assert (again.message, again.code, again.details) == (e.message, e.code, e.details)
        assert str(again) == str(e)
        assert again.args == e.args


def test_errors_without_details_keep_their_shape() -> None:
    e = ValidationError("bad key")
    assert e.args == ("bad key", "VALIDATION_ERROR", None)
    assert e.details is None and str(e) == "[VALIDATION_ERROR] bad key"
    assert type(e)(*json.loads(json.dumps(e.args))).args == e.args
    legacy = UpdateOpError("old message", "UPDATE_OP_ERROR")  # as a peer without details sends it
    assert legacy.details is None and legacy.code == "UPDATE_OP_ERROR"


def test_error_details_survive_celerys_json_backend() -> None:
    from celery import Celery
    from celery.backends.base import Backend

    backend = Backend(Celery(set_as_current=False), serializer="json")
    with pytest.raises(UpdateOpError) as info:
        run({"t": "a"}, [append("t", 1)])
    stored = json.loads(json.dumps(backend.prepare_exception(info.value, "json")))
    rebuilt = backend.exception_to_python(stored)
    assert type(rebuilt) is UpdateOpError
    assert rebuilt.details == {"op_index": 0, "reason": "append.type_mismatch"}
    assert str(rebuilt) == str(info.value)


# --- to_engine_form round-trips through parse_op ------------------------------------------

segments = st.text(min_size=1, max_size=6).filter(lambda s: s not in PROTO_POLLUTION_KEYS)
paths = st.one_of(st.just(""), segments, st.lists(segments, max_size=4))
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
engine_ops = st.one_of(
    st.builds(lambda p, v: {"type": "set", "path": p, "value": v}, paths, json_values),
    st.builds(
        lambda p, v: {"type": "merge", "path": p, "value": v},
        paths,
        st.dictionaries(segments, json_values, max_size=3),
    ),
    st.builds(
        lambda k, p, n: {"type": k, "path": p, "by": n},
        st.sampled_from(["increment", "decrement"]),
        paths,
        numbers,
    ),
    st.builds(lambda p, v: {"type": "append", "path": p, "value": v}, paths, json_values),
    st.builds(lambda p: {"type": "remove", "path": p}, paths),
)
seed_ops = st.one_of(
    st.builds(lambda v: {"set": v}, json_values),
    st.builds(lambda v: {"merge": v}, st.dictionaries(segments, json_values, max_size=3)),
    st.builds(
        lambda k, f, n: {k: {"field": f, "by": n}},
        st.sampled_from(["increment", "decrement"]),
        segments,
        numbers,
    ),
    st.builds(lambda f, v: {"append": {"field": f, "value": v}}, segments, json_values),
    st.builds(lambda f: {"remove": f}, segments),
)


@given(raw=engine_ops | seed_ops, current=json_values)
def test_to_engine_form_round_trips_through_parse_op(raw: dict[str, Any], current: Any) -> None:
    op = parse_op(0, raw)
    forwarded = json.loads(json.dumps(op.to_engine_form()))  # as the Bridge sends it
    assert forwarded["type"] == op.kind
    again = parse_op(0, forwarded)
    assert again == op
    assert again.to_engine_form() == op.to_engine_form()
    outcomes = []
    for parsed in (op, again):
        try:
            outcomes.append(apply_ops(current, [parsed]))
        except UpdateOpError as e:
            outcomes.append(e.details)
    assert outcomes[0] == outcomes[1]


def test_to_engine_form_spells_paths_as_the_engine_does() -> None:
    assert parse_op(0, {"set": 1}).to_engine_form() == {"type": "set", "path": "", "value": 1}
    assert parse_op(0, {"type": "append", "value": 1}).to_engine_form() == {
        "type": "append",
        "path": "",
        "value": 1,
    }
    assert parse_op(0, {"type": "remove", "path": ["a"]}).to_engine_form() == {
        "type": "remove",
        "path": "a",
    }
    assert parse_op(0, {"type": "increment", "path": ["a", "b"]}).to_engine_form() == {
        "type": "increment",
        "path": ["a", "b"],
        "by": 1,
    }
    assert parse_op(0, {"append": {"field": "l", "value": [1]}}) == Op("append", ("l",), [1])


@given(current=json_values, raw_ops=st.lists(engine_ops | seed_ops | json_values, max_size=4))
def test_any_failure_carries_a_known_reason_and_an_index_in_range(
    current: Any, raw_ops: list[Any]
) -> None:
    snapshot = json.dumps(current)
    try:
        run(current, raw_ops)
    except UpdateOpError as e:
        assert e.details is not None and e.details["reason"] in REASONS
        assert 0 <= e.details["op_index"] < len(raw_ops)
        assert e.message.startswith(f"op {e.details['op_index']}")
    assert json.dumps(current) == snapshot


def test_all_or_nothing_holds_for_nested_ops_and_appends() -> None:
    current = {"p": {"l": [1], "n": 1}}
    snapshot = json.dumps(current)
    with pytest.raises(UpdateOpError) as info:
        run(
            current,
            [
                append(["p", "l"], 2),
                {"type": "set", "path": ["p", "q", "r"], "value": 1},
                append(["p", "n"], 1),
            ],
        )
    assert info.value.details == {"op_index": 2, "reason": "append.type_mismatch"}
    assert json.dumps(current) == snapshot


# --- typed op models ------------------------------------------------------------------------


def test_typed_append_and_nested_paths() -> None:
    from state_tasks import AppendOp, DecrementOp, IncrementOp, MergeOp, RemoveOp, SetOp, ops_json

    typed = ops_json(
        AppendOp(field="events", value={"k": 1}),
        AppendOp(path=["log", "lines"], value="a"),
        IncrementOp(path=["a", "b"]),
        DecrementOp(path="n", by=2),
        SetOp(path=["profile", "city"], value="Oslo"),
        MergeOp(path=["profile"], value={"age": 3}),
        RemoveOp(path=["a", "c"]),
        SetOp(value=1, path=""),
    )
    assert typed[:3] == [
        {"append": {"field": "events", "value": {"k": 1}}},
        {"type": "append", "path": ["log", "lines"], "value": "a"},
        {"type": "increment", "path": ["a", "b"], "by": 1},
    ]
    assert typed[3:] == [
        {"type": "decrement", "path": "n", "by": 2},
        {"type": "set", "path": ["profile", "city"], "value": "Oslo"},
        {"type": "merge", "path": ["profile"], "value": {"age": 3}},
        {"type": "remove", "path": ["a", "c"]},
        {"type": "set", "path": "", "value": 1},
    ]
    assert run(None, typed[:-1], exists=False) == {
        "events": [{"k": 1}],
        "log": {"lines": ["a"]},
        "a": {"b": 1},
        "n": -2,
        "profile": {"city": "Oslo", "age": 3},
    }


@pytest.mark.parametrize("kwargs", [{}, {"field": "a", "path": ["a"]}, {"field": ""}])
def test_typed_field_ops_take_a_field_or_a_path(kwargs: dict[str, Any]) -> None:
    import pydantic

    from state_tasks import AppendOp, IncrementOp, RemoveOp

    for model, extra in ((IncrementOp, {}), (RemoveOp, {}), (AppendOp, {"value": 1})):
        with pytest.raises(pydantic.ValidationError):
            model(**kwargs, **extra)


def test_an_op_goes_to_another_deployment_in_the_spelling_it_came_in() -> None:
    # A Bridge forwards ops: the remote must hold them to the same rules as this side
    seed = [
        {"set": {"a": 1}},
        {"merge": {"constructor": 1}},
        {"increment": {"field": "x" * 300, "by": 2}},
        {"decrement": {"field": "n", "by": 0.5}},
        {"remove": "gone"},
        {"append": {"field": "log", "value": [1]}},
    ]
    engine = [{"type": "merge", "path": ["a", "b"], "value": {"c": 1}}]
    for raw in seed + engine:
        (op,) = parse_ops([raw])
        (back,) = parse_ops([json.loads(json.dumps(op.to_wire_form()))])
        assert back == op and back.engine_bounds == op.engine_bounds
    assert [parse_ops([raw])[0].to_wire_form() for raw in seed] == seed


def test_a_huge_integer_meeting_a_float_is_an_op_error_not_a_crash() -> None:
    huge = 10**400
    assert reason_of({"n": huge}, [{"increment": {"field": "n", "by": 0.5}}]) == (
        0,
        "increment.not_number",
    )
    assert reason_of({"n": 0.5}, [{"decrement": {"field": "n", "by": huge}}]) == (
        0,
        "decrement.not_number",
    )


def test_an_error_about_a_value_too_long_to_show_is_still_an_update_op_error() -> None:
    # an increment made an integer Python will not write out; the next op fails on it
    ops = parse_ops(
        [{"increment": {"field": "n", "by": 10**4400}}, {"type": "increment", "path": ""}]
    )
    with pytest.raises(UpdateOpError) as info:
        apply_ops({"n": 1}, ops)
    assert info.value.details == {"op_index": 1, "reason": "increment.not_number"}
    assert "too long to show" in info.value.message
