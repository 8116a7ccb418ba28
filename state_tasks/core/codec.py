"""JSON text in and out of storage: encode once, check size, decode exactly.

Values are stored as compact JSON text. Python's ``json`` keeps integers exact
at any size (up to Python's 4,300-digit conversion limit) and floats as floats,
and keeps ``[]`` and ``{}`` apart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from state_tasks.core.errors import UpdateOpError, ValidationError, ValueTooLarge
from state_tasks.core.ops import Op, apply_ops, deeper_than

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

#: Compact JSON text of a value already known to be JSON (no size check): how values,
#: names and records are written everywhere in storage.
dumps = _encoder.encode


#: Values nested deeper than this (lists and objects) are refused. Results, pages, batches
#: and events carry a value a few levels deeper than it is, and the broker refuses messages
#: nested deeper than ``state_tasks.security.DEFAULT_MAX_JSON_DEPTH`` (256): a value that was
#: stored must always be readable back.
MAX_STORED_DEPTH = 200


def encode(value: Any, max_bytes: int, *, what: str = "value") -> str:
    """Encode a JSON value; raise ``ValidationError`` or ``ValueTooLarge``."""
    text, size = writable(value, what=what)
    # Cheap first: the depth cannot exceed the number of opening brackets.
    if text.count("[") + text.count("{") > MAX_STORED_DEPTH and deeper_than(
        value, MAX_STORED_DEPTH
    ):
        raise ValidationError(
            f"the {what} nests lists and objects more than {MAX_STORED_DEPTH} levels deep; "
            "flatten it (results and events carry a value a few levels deeper still)"
        )
    if size > max_bytes:
        raise ValueTooLarge(
            f"the {what} is {size} bytes as JSON; the limit is {max_bytes} bytes "
            "(raise the adapter's max_value_bytes, or store it in smaller pieces)"
        )
    return text


def writable(value: Any, *, what: str = "value") -> tuple[str, int]:
    """The JSON text of ``value`` and its size in bytes of UTF-8, with no limit of depth
    or size; ``ValidationError`` when JSON text cannot carry it."""
    try:
        text = _encoder.encode(value)
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise ValidationError(
                f"the {what} holds an integer longer than {sys.get_int_max_str_digits()} "
                "digits, which cannot be written as JSON text"
            ) from None
        raise ValidationError(f"the {what} is not a JSON value: {e}") from None
    except (TypeError, RecursionError) as e:
        raise ValidationError(f"the {what} is not a JSON value: {e}") from None
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValidationError(
            f"the {what} holds text that is not valid Unicode "
            f"(lone surrogate at position {e.start})"
        ) from None


def decode(text: str | None) -> Any:
    """Decode stored JSON text; ``None`` (no such key) stays ``None``."""
    return None if text is None else json.loads(text)


def apply_ops_json(old_json: str | None, ops: Sequence[Op], max_bytes: int) -> str:
    """Apply ops to stored JSON text and return the new JSON text.

    The one read-modify-write step every adapter's ``update`` runs under its own
    atomicity (a lock, a Redis transaction): ``UpdateOpError`` or
    ``ValueTooLarge`` means nothing may be written.

    A result that cannot be stored (nested over :data:`MAX_STORED_DEPTH` levels, an integer
    too long to write, a lone surrogate) is an ``UpdateOpError`` like any other, naming the
    first op whose result could not be stored and a ``value.*`` reason.
    """
    exists = old_json is not None
    new_value = apply_ops(decode(old_json), ops, exists=exists)
    try:
        return encode(new_value, max_bytes, what="updated value")
    except ValidationError as e:
        raise unstorable(_first_unstorable(old_json, ops, max_bytes), ops, e) from None


def unstorable(index: int, ops: Sequence[Op], error: ValidationError) -> UpdateOpError:
    """The ``UpdateOpError`` of op ``index`` of ``ops``, after which the value could not be
    stored (``error`` says why)."""
    return UpdateOpError(
        f"op {index} ({ops[index].kind}): {error.message}; nothing was written",
        details={"op_index": index, "reason": _unstorable_reason(error.message)},
    )


def _unstorable_reason(message: str) -> str:
    if "levels deep" in message:
        return "value.too_deep"
    if "not valid Unicode" in message:
        return "value.invalid_unicode"
    if "integer longer than" in message:
        return "value.integer_too_long"
    return "value.not_json"


def _first_unstorable(old_json: str | None, ops: Sequence[Op], max_bytes: int) -> int:
    """The index of the first op after which the value could not be stored (only on the
    failure path: it applies the ops again, one prefix at a time)."""
    exists = old_json is not None
    for index in range(len(ops) - 1):
        value = apply_ops(decode(old_json), ops[: index + 1], exists=exists)
        try:
            encode(value, max_bytes)
        except ValidationError:
            return index
        except ValueTooLarge:
            pass
    return len(ops) - 1
