"""Update ops: the one definition of what ``state::update`` does to a value.

Pure code with no I/O, shared by every adapter so that all of them agree.
Ops come in two spellings, both accepted everywhere:

=================================  ==============================================
seed form                          engine form
=================================  ==============================================
``{"set": v}``                     ``{"type": "set", "path": "", "value": v}``
``{"merge": {...}}``               ``{"type": "merge", "value": {...}}``
``{"increment": {"field": f,       ``{"type": "increment", "path": f, "by": n}``
"by": n}}``
``{"decrement": {...}}``           ``{"type": "decrement", "path": f, "by": n}``
``{"remove": f}``                  ``{"type": "remove", "path": f}``
=================================  ==============================================

A field is one top-level name of an object value, taken literally (``"a.b"`` is
the field named ``a.b``). ``by`` defaults to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from state_tasks.core.errors import UpdateOpError

OP_NAMES = ("set", "merge", "increment", "decrement", "remove")
_ENGINE_KEYS = {
    "set": {"type", "path", "value"},
    "merge": {"type", "path", "value"},
    "increment": {"type", "path", "by"},
    "decrement": {"type", "path", "by"},
    "remove": {"type", "path"},
}
_REQUIRED_ENGINE_KEYS = {
    "set": {"value"},
    "merge": {"value"},
    "increment": {"path"},
    "decrement": {"path"},
    "remove": {"path"},
}


@dataclass(frozen=True)
class Op:
    """One parsed update op. ``field`` is ``""`` for the whole value."""

    kind: str
    field: str = ""
    value: Any = None
    by: int | float = 1

    def to_engine_form(self) -> dict[str, Any]:
        """The op as the engine spells it, e.g. to forward it to another deployment."""
        if self.kind in ("set", "merge"):
            return {"type": self.kind, "path": self.field, "value": self.value}
        if self.kind == "remove":
            return {"type": "remove", "path": self.field}
        return {"type": self.kind, "path": self.field, "by": self.by}


def _describe(value: Any) -> str:
    kinds = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kinds.get(type(value), type(value).__name__)})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(index: int, op: Any, why: str) -> UpdateOpError:
    name = op.kind if isinstance(op, Op) else None
    if name is None and isinstance(op, dict):
        name = op.get("type") if "type" in op else next(iter(op)) if len(op) == 1 else None
    label = f"op {index} ({name})" if isinstance(name, str) and name in OP_NAMES else f"op {index}"
    return UpdateOpError(f"{label}: {why}; nothing was written")


def _field_name(index: int, raw: Any, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(index, raw, f"{what} must be a non-empty string, got {_describe(value)}")
    return value


def _amount(index: int, raw: Any, by: Any) -> int | float:
    if not _is_number(by):
        raise _fail(index, raw, f"'by' must be a number, got {_describe(by)}")
    return by  # type: ignore[no-any-return]


def parse_op(index: int, raw: Any) -> Op:
    """Parse one op in either spelling; raise :class:`UpdateOpError` naming ``index``."""
    if not isinstance(raw, dict) or not raw:
        raise _fail(index, raw, f'an op is an object such as {{"set": ...}}, got {_describe(raw)}')
    if "type" in raw:
        return _parse_engine(index, raw)
    if len(raw) != 1:
        raise _fail(
            index,
            raw,
            f"an op has exactly one key, got {sorted(raw)}; split it into one op per change",
        )
    ((name, arg),) = raw.items()
    if name not in OP_NAMES:
        raise _fail(index, raw, f"unknown op {name!r} (expected one of {', '.join(OP_NAMES)})")
    if name == "set":
        return Op("set", value=arg)
    if name == "merge":
        return Op("merge", value=arg)
    if name == "remove":
        return Op("remove", field=_field_name(index, raw, arg, "the field to remove"))
    if not isinstance(arg, dict):
        raise _fail(index, raw, f'expected {{"field": name, "by": number}}, got {_describe(arg)}')
    unknown = set(arg) - {"field", "by"}
    if unknown:
        raise _fail(index, raw, f"unknown keys {sorted(unknown)} (expected 'field' and 'by')")
    field = _field_name(index, raw, arg.get("field"), "'field'")
    return Op(name, field=field, by=_amount(index, raw, arg.get("by", 1)))


def _parse_engine(index: int, raw: dict[str, Any]) -> Op:
    name = raw["type"]
    if name not in OP_NAMES:
        raise _fail(index, raw, f"unknown op type {name!r} (expected one of {', '.join(OP_NAMES)})")
    unknown = set(raw) - _ENGINE_KEYS[name]
    if unknown:
        raise _fail(
            index, raw, f"unknown keys {sorted(unknown)} (allowed: {sorted(_ENGINE_KEYS[name])})"
        )
    missing = _REQUIRED_ENGINE_KEYS[name] - set(raw)
    if missing:
        raise _fail(index, raw, f"missing {sorted(missing)}")
    path = raw.get("path", "")
    if not isinstance(path, str):
        raise _fail(index, raw, f"'path' must be a string, got {_describe(path)}")
    if name in ("set", "merge"):
        return Op(name, field=path, value=raw["value"])
    field = _field_name(index, raw, path, "'path'")
    if name == "remove":
        return Op("remove", field=field)
    return Op(name, field=field, by=_amount(index, raw, raw.get("by", 1)))


def parse_ops(raw_ops: Any) -> list[Op]:
    """Parse a whole op list; the list itself must be a JSON array."""
    if not isinstance(raw_ops, (list, tuple)):
        raise UpdateOpError(
            f"'ops' must be an array of update ops, got {_describe(raw_ops)}; "
            'for example [{"set": {"a": 1}}]'
        )
    return [parse_op(i, raw) for i, raw in enumerate(raw_ops)]


def _require_object(index: int, op: Op, current: Any) -> dict[str, Any]:
    if not isinstance(current, dict):
        raise _fail(
            index, op, f"the current value is {_describe(current)}, and {op.kind} needs an object"
        )
    return current


def apply_op(index: int, op: Op, current: Any) -> Any:
    """Apply one parsed op to ``current`` and return the new value.

    ``current`` is never mutated: objects are copied before they change.
    """
    if op.kind == "set":
        if not op.field:
            return op.value
        updated = dict(_require_object(index, op, current))
        updated[op.field] = op.value
        return updated
    if op.kind == "merge":
        if not isinstance(op.value, dict):
            raise _fail(index, op, f"merge takes an object, got {_describe(op.value)}")
        obj = dict(_require_object(index, op, current))
        if not op.field:
            obj.update(op.value)
            return obj
        inner = obj.get(op.field, {})
        if not isinstance(inner, dict):
            raise _fail(index, op, f"field {op.field!r} holds {_describe(inner)}, not an object")
        obj[op.field] = {**inner, **op.value}
        return obj
    obj = dict(_require_object(index, op, current))
    if op.kind == "remove":
        obj.pop(op.field, None)
        return obj
    present = obj.get(op.field, 0)
    if not _is_number(present):
        raise _fail(index, op, f"field {op.field!r} holds {_describe(present)}, not a number")
    result = present + op.by if op.kind == "increment" else present - op.by
    if isinstance(result, float) and not math.isfinite(result):
        raise _fail(index, op, f"field {op.field!r} would become {result}, which JSON cannot hold")
    obj[op.field] = result
    return obj


def apply_ops(current: Any, ops: Sequence[Op], *, exists: bool = True) -> Any:
    """Apply ``ops`` in order to ``current`` and return the new value.

    A key that does not exist (``exists=False``) starts as ``{}``; an existing
    JSON ``null`` stays ``null`` (so a field op on it fails).

    All or nothing: the first op that fails raises :class:`UpdateOpError` and
    ``current`` is left as it was.
    """
    value: Any = current if exists else {}
    for index, op in enumerate(ops):
        value = apply_op(index, op, value)
    return value
