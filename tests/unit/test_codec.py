"""Values in and out of storage: what encode accepts, and why a deep value is refused."""

from __future__ import annotations

import json

import pytest

from state_tasks.core.codec import MAX_STORED_DEPTH, apply_ops_json, encode
from state_tasks.core.errors import UpdateOpError, ValidationError
from state_tasks.core.ops import parse_ops


def nested(levels: int) -> object:
    return json.loads("[" * levels + "]" * levels)


def test_a_value_as_deep_as_the_limit_is_stored_and_one_level_more_is_refused() -> None:
    assert encode(nested(MAX_STORED_DEPTH), 1 << 20) == "[" * 200 + "]" * 200
    with pytest.raises(ValidationError, match="more than 200 levels deep"):
        encode(nested(MAX_STORED_DEPTH + 1), 1 << 20)
    # brackets inside strings do not count as depth
    assert encode({"text": "[" * 1000}, 1 << 20)


def test_an_update_that_would_nest_too_deep_writes_nothing() -> None:
    ops = parse_ops([{"set": {"a": nested(MAX_STORED_DEPTH)}}])
    with pytest.raises(UpdateOpError, match="levels deep"):
        apply_ops_json("{}", ops, 1 << 20)
