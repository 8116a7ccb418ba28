"""Update ops: the one definition of what ``state::update`` does to a value.

Pure code with no I/O, shared by every adapter so that all of them agree. The
semantics follow the engine's ``update_ops.rs``; docs/update-ops.md
lists where they deliberately differ (all or nothing; no silent replacement of a
non-object). Ops come in two spellings, both accepted everywhere:

=================================  ==============================================
seed form                          engine form
=================================  ==============================================
``{"set": v}``                     ``{"type": "set", "path": "", "value": v}``
``{"merge": {...}}``               ``{"type": "merge", "value": {...}}``
``{"increment": {"field": f,       ``{"type": "increment", "path": f, "by": n}``
"by": n}}``
``{"decrement": {...}}``           ``{"type": "decrement", "path": f, "by": n}``
``{"append": {"field": f,          ``{"type": "append", "path": f, "value": v}``
"value": v}}``
``{"remove": f}``                  ``{"type": "remove", "path": f}``
=================================  ==============================================

A field is one top-level name of an object value, taken literally (``"a.b"`` is
the field named ``a.b``). An engine-form ``path`` is a field name (``""``: the
whole value) or an array of literal segments (``["profile", "city"]``; ``[]``: the
whole value); set, merge, increment, decrement and append create the missing
objects on the way, and no op walks through a value that is not an object.
``by`` defaults to 1.

Every failure is an :class:`UpdateOpError` whose ``details`` are
``{"op_index": i, "reason": r}``, ``r`` being one of the engine's reason names
(``increment.not_number``, ``append.type_mismatch``, ...: :data:`ENGINE_REASONS`) or
one of :data:`OWN_REASONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from state_tasks.core.errors import UpdateOpError

OP_NAMES = ("set", "merge", "increment", "decrement", "append", "remove")
_ENGINE_KEYS = {
    "set": {"type", "path", "value"},
    "merge": {"type", "path", "value"},
    "increment": {"type", "path", "by"},
    "decrement": {"type", "path", "by"},
    "append": {"type", "path", "value"},
    "remove": {"type", "path"},
}
_REQUIRED_ENGINE_KEYS = {
    "set": {"value"},
    "merge": {"value"},
    "increment": {"path"},
    "decrement": {"path"},
    "append": {"value"},
    "remove": {"path"},
}

# The engine's bounds (update_ops.rs), on the path of every op and the value of a merge.
MAX_PATH_DEPTH = 32
MAX_SEGMENT_BYTES = 256
MAX_VALUE_DEPTH = 16
MAX_VALUE_KEYS = 1024
#: Path segments and merge-value top-level keys the engine refuses (JS prototype pollution).
PROTO_POLLUTION_KEYS = ("__proto__", "constructor", "prototype")

_PATH_REASONS = ("too_deep", "segment_too_long", "empty_segment", "proto_polluted")
#: The reasons of the engine's ``update_ops.rs``, by the same names.
ENGINE_REASONS = frozenset(
    [f"{name}.path.{reason}" for name in OP_NAMES for reason in _PATH_REASONS]
    + [
        "merge.value.not_an_object",
        "merge.value.too_many_keys",
        "merge.value.proto_polluted",
        "merge.value.too_deep",
        "set.target_not_object",
        "increment.target_not_object",
        "increment.not_number",
        "decrement.target_not_object",
        "decrement.not_number",
        "append.target_not_object",
        "append.type_mismatch",
        "remove.target_not_object",
    ]
)
#: Reasons of our own: a merge into a non-object (the engine skips it silently or replaces
#: the non-object), and ops that do not parse (the engine rejects those before its ops run).
OWN_REASONS = frozenset(
    ["merge.target_not_object", "ops.not_an_array", "op.malformed", "op.unknown_type"]
    + [f"{name}.path.invalid" for name in OP_NAMES]
    + ["increment.by.not_number", "decrement.by.not_number"]
    # The ops applied, but their result cannot be stored: see state_tasks.core.codec.
    + ["value.too_deep", "value.integer_too_long", "value.invalid_unicode", "value.not_json"]
)
#: Every ``details["reason"]`` an :class:`UpdateOpError` raised here can carry.
REASONS = ENGINE_REASONS | OWN_REASONS

Path = tuple[str, ...]


@dataclass(frozen=True)
class Op:
    """One parsed update op. ``path`` is ``()`` for the whole value, else its segments."""

    kind: str
    path: Path = ()
    value: Any = None
    by: int | float = 1
    #: Engine-form ops are held to the engine's bounds (path depth and segments, merge
    #: values); seed-form ops keep accepting what they always accepted.
    engine_bounds: bool = field(default=False, compare=False)

    def to_wire_form(self) -> dict[str, Any]:
        """The op in the spelling it came in, to forward it to another deployment.

        A seed-form op goes as the seed form, so the remote holds it to the same (seed)
        rules; an engine-form op as :meth:`to_engine_form`.
        """
        if self.engine_bounds:
            return self.to_engine_form()
        field_name = "".join(self.path)
        if self.kind in ("set", "merge"):
            return {self.kind: self.value}
        if self.kind == "remove":
            return {"remove": field_name}
        if self.kind == "append":
            return {"append": {"field": field_name, "value": self.value}}
        return {self.kind: {"field": field_name, "by": self.by}}

    def to_engine_form(self) -> dict[str, Any]:
        """The op as the engine spells it, e.g. to forward it to another deployment.

        ``parse_op`` turns it back into an equal :class:`Op`. One segment is sent as a
        string, the form every engine accepts; two or more as an array.
        """
        path: str | list[str] = list(self.path) if len(self.path) > 1 else "".join(self.path)
        if self.kind in ("set", "merge", "append"):
            return {"type": self.kind, "path": path, "value": self.value}
        if self.kind == "remove":
            return {"type": "remove", "path": path}
        return {"type": self.kind, "path": path, "by": self.by}


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
    try:
        shown = repr(value)
    except ValueError:  # an integer (or one inside) too long for Python to write out
        shown = "<too long to show>"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kinds.get(type(value), type(value).__name__)})"


def _where(path: Path) -> str:
    if not path:
        return "the value"
    return f"field {path[0]!r}" if len(path) == 1 else f"path {list(path)!r}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _op_name(op: Any) -> str | None:
    name = op.kind if isinstance(op, Op) else None
    if name is None and isinstance(op, dict):
        name = op.get("type") if "type" in op else next(iter(op)) if len(op) == 1 else None
    return name if isinstance(name, str) and name in OP_NAMES else None


def _fail(index: int, op: Any, reason: str, why: str) -> UpdateOpError:
    name = _op_name(op)
    label = f"op {index} ({name})" if name else f"op {index}"
    return UpdateOpError(
        f"{label}: {why}; nothing was written",
        details={"op_index": index, "reason": reason},
    )


def _seed_field(index: int, raw: Any, name: str, value: Any, what: str) -> Path:
    """A seed form's field: one non-empty field name."""
    if not isinstance(value, str) or not value:
        reason = f"{name}.path.empty_segment" if value == "" else f"{name}.path.invalid"
        raise _fail(
            index, raw, reason, f"{what} must be a non-empty string, got {_describe(value)}"
        )
    return (value,)


def _engine_path(index: int, raw: Any, name: str, path: Any) -> Path:
    """An engine form's path: a field name (``""``: the whole value) or an array of segments."""
    if isinstance(path, str):
        return _check_path(index, raw, name, (path,) if path else ())
    if isinstance(path, list) and all(isinstance(segment, str) for segment in path):
        return _check_path(index, raw, name, tuple(path))
    raise _fail(
        index,
        raw,
        f"{name}.path.invalid",
        f"'path' must be a field name or an array of field names, got {_describe(path)}",
    )


def _check_path(index: int, raw: Any, name: str, path: Path) -> Path:
    """The engine's path bounds, in its order: depth, then each segment."""
    if len(path) > MAX_PATH_DEPTH:
        raise _fail(
            index,
            raw,
            f"{name}.path.too_deep",
            f"the path has {len(path)} segments; the limit is {MAX_PATH_DEPTH}",
        )
    for segment in path:
        if not segment:
            raise _fail(
                index,
                raw,
                f"{name}.path.empty_segment",
                f"path {list(path)!r} has an empty segment",
            )
        size = len(segment.encode("utf-8", "surrogatepass"))
        if size > MAX_SEGMENT_BYTES:
            raise _fail(
                index,
                raw,
                f"{name}.path.segment_too_long",
                f"a path segment is {size} bytes in UTF-8; the limit is {MAX_SEGMENT_BYTES}",
            )
        if segment in PROTO_POLLUTION_KEYS:
            raise _fail(
                index,
                raw,
                f"{name}.path.proto_polluted",
                f"the field name {segment!r} is not allowed (JavaScript prototype pollution)",
            )
    return path


def _amount(index: int, raw: Any, name: str, by: Any) -> int | float:
    if not _is_number(by):
        raise _fail(
            index, raw, f"{name}.by.not_number", f"'by' must be a number, got {_describe(by)}"
        )
    return by  # type: ignore[no-any-return]


def _check_keys(
    index: int, raw: Any, arg: dict[str, Any], allowed: set[str], required: set[str]
) -> None:
    unknown = set(arg) - allowed
    if unknown:
        raise _fail(
            index,
            raw,
            "op.malformed",
            f"unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})",
        )
    missing = required - set(arg)
    if missing:
        raise _fail(index, raw, "op.malformed", f"missing {sorted(missing)}")


def parse_op(index: int, raw: Any) -> Op:
    """Parse one op in either spelling; raise :class:`UpdateOpError` naming ``index``."""
    if not isinstance(raw, dict) or not raw:
        raise _fail(
            index,
            raw,
            "op.malformed",
            f'an op is an object such as {{"set": ...}}, got {_describe(raw)}',
        )
    if "type" in raw:
        return _parse_engine(index, raw)
    if len(raw) != 1:
        raise _fail(
            index,
            raw,
            "op.malformed",
            f"an op has exactly one key, got {sorted(raw)}; split it into one op per change",
        )
    ((name, arg),) = raw.items()
    if name not in OP_NAMES:
        raise _fail(
            index,
            raw,
            "op.unknown_type",
            f"unknown op {name!r} (expected one of {', '.join(OP_NAMES)})",
        )
    if name == "set":
        return Op("set", value=arg)
    if name == "merge":
        return Op("merge", value=arg)
    if name == "remove":
        return Op("remove", path=_seed_field(index, raw, name, arg, "the field to remove"))
    if name == "append":
        if not isinstance(arg, dict):
            raise _fail(
                index,
                raw,
                "op.malformed",
                f'expected {{"field": name, "value": v}}, got {_describe(arg)}',
            )
        _check_keys(index, raw, arg, {"field", "value"}, {"value"})
        path = _seed_field(index, raw, name, arg.get("field"), "'field'")
        return Op("append", path=path, value=arg["value"])
    if not isinstance(arg, dict):
        raise _fail(
            index,
            raw,
            "op.malformed",
            f'expected {{"field": name, "by": number}}, got {_describe(arg)}',
        )
    unknown = set(arg) - {"field", "by"}
    if unknown:
        raise _fail(
            index,
            raw,
            "op.malformed",
            f"unknown keys {sorted(unknown)} (expected 'field' and 'by')",
        )
    path = _seed_field(index, raw, name, arg.get("field"), "'field'")
    return Op(name, path=path, by=_amount(index, raw, name, arg.get("by", 1)))


def _parse_engine(index: int, raw: dict[str, Any]) -> Op:
    name = raw["type"]
    if not isinstance(name, str) or name not in OP_NAMES:
        raise _fail(
            index,
            raw,
            "op.unknown_type",
            f"unknown op type {name!r} (expected one of {', '.join(OP_NAMES)})",
        )
    _check_keys(index, raw, raw, _ENGINE_KEYS[name], _REQUIRED_ENGINE_KEYS[name])
    path = _engine_path(index, raw, name, raw.get("path", ""))
    if name in ("set", "merge", "append"):
        return Op(name, path=path, value=raw["value"], engine_bounds=True)
    if name == "remove":
        return Op("remove", path=path, engine_bounds=True)
    by = _amount(index, raw, name, raw.get("by", 1))
    return Op(name, path=path, by=by, engine_bounds=True)


def parse_ops(raw_ops: Any) -> list[Op]:
    """Parse a whole op list; the list itself must be a JSON array."""
    if not isinstance(raw_ops, (list, tuple)):
        raise UpdateOpError(
            f"'ops' must be an array of update ops, got {_describe(raw_ops)}; "
            'for example [{"set": {"a": 1}}]',
            details={"op_index": None, "reason": "ops.not_an_array"},
        )
    return [parse_op(i, raw) for i, raw in enumerate(raw_ops)]


def _not_object(index: int, op: Op, current: Any) -> UpdateOpError:
    return _fail(
        index,
        op,
        f"{op.kind}.target_not_object",
        f"the current value is {_describe(current)}, and {op.kind} needs an object",
    )


_MISSING: Any = object()


def _edit(
    index: int,
    op: Op,
    current: Any,
    change: Callable[[dict[str, Any], str], None],
    *,
    create: bool = True,
) -> Any:
    """Copy ``current`` along ``op.path`` and let ``change`` edit the leaf's parent.

    ``change(parent, leaf)`` gets a fresh copy of the object holding the last segment.
    A missing object on the way is created (or, with ``create=False``, the value is
    returned unchanged); anything else that is not an object stops the op.
    """
    if not isinstance(current, dict):
        raise _not_object(index, op, current)
    root = node = dict(current)
    for depth, segment in enumerate(op.path[:-1], start=1):
        child = node.get(segment, _MISSING)
        if child is _MISSING:
            if not create:
                return current
            child = {}
        elif not isinstance(child, dict):
            raise _fail(
                index,
                op,
                f"{op.kind}.target_not_object",
                f"{_where(op.path)} goes through {_where(op.path[:depth])}, which holds "
                f"{_describe(child)}, not an object",
            )
        copy = dict(child)
        node[segment] = copy
        node = copy
    change(node, op.path[-1])
    return root


def deeper_than(value: Any, max_depth: int) -> bool:
    """Whether a decoded JSON value nests lists and objects more than ``max_depth`` deep
    (without recursion: the value may be deeper than the interpreter's stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_merge_value(index: int, op: Op) -> dict[str, Any]:
    value = op.value
    if not isinstance(value, dict):
        raise _fail(
            index, op, "merge.value.not_an_object", f"merge takes an object, got {_describe(value)}"
        )
    if not op.engine_bounds:
        return value
    if len(value) > MAX_VALUE_KEYS:
        raise _fail(
            index,
            op,
            "merge.value.too_many_keys",
            f"the object to merge has {len(value)} keys; the limit is {MAX_VALUE_KEYS}",
        )
    for key in value:
        if key in PROTO_POLLUTION_KEYS:
            raise _fail(
                index,
                op,
                "merge.value.proto_polluted",
                f"the object to merge has the key {key!r}, which is not allowed "
                "(JavaScript prototype pollution)",
            )
    if deeper_than(value, MAX_VALUE_DEPTH):
        raise _fail(
            index,
            op,
            "merge.value.too_deep",
            f"the object to merge nests more than {MAX_VALUE_DEPTH} levels deep",
        )
    return value


def _step(index: int, op: Op, present: Any) -> int | float:
    """``present`` plus or minus ``op.by``; ``present`` is the number found (not missing)."""
    if not _is_number(present):
        what = f"{_where(op.path)} holds" if op.path else "the current value is"
        raise _fail(
            index, op, f"{op.kind}.not_number", f"{what} {_describe(present)}, not a number"
        )
    try:
        result: int | float = present + op.by if op.kind == "increment" else present - op.by
    except OverflowError:  # an integer too big to meet a float
        result = math.inf
    if isinstance(result, float) and not math.isfinite(result):
        raise _fail(
            index,
            op,
            f"{op.kind}.not_number",
            f"{_where(op.path)} would become {result}, which JSON cannot hold",
        )
    return result


def _initial_append(value: Any) -> Any:
    """What append makes of null or a missing single field: a string, or a one-item array."""
    return value if isinstance(value, str) else [value]


def _append_to(index: int, op: Op, target: Any) -> Any:
    if isinstance(target, list):
        return [*target, op.value]
    if isinstance(target, str):
        if not isinstance(op.value, str):
            raise _fail(
                index,
                op,
                "append.type_mismatch",
                f"{_where(op.path)} holds a string, so append takes a string to add to it, "
                f"got {_describe(op.value)}",
            )
        return target + op.value
    if target is None:
        return _initial_append(op.value)
    raise _fail(
        index,
        op,
        "append.type_mismatch",
        f"{_where(op.path)} holds {_describe(target)}; append needs an array, a string, "
        "null or a missing field",
    )


def apply_op(index: int, op: Op, current: Any, *, missing: bool = False) -> Any:
    """Apply one parsed op to ``current`` and return the new value.

    ``current`` is never mutated: objects and arrays are copied before they change.
    ``missing`` says that ``current`` is the ``{}`` a missing key starts as: then an
    increment, decrement or append of the whole value starts from nothing (as in the
    engine) instead of from ``{}``.
    """
    kind, path = op.kind, op.path
    if kind == "set":
        if not path:
            return op.value

        def put(parent: dict[str, Any], leaf: str) -> None:
            parent[leaf] = op.value

        return _edit(index, op, current, put)
    if kind == "merge":
        patch = _check_merge_value(index, op)
        if not isinstance(current, dict):
            raise _not_object(index, op, current)
        if not path:
            return {**current, **patch}

        def merge(parent: dict[str, Any], leaf: str) -> None:
            inner = parent.get(leaf, {})
            if not isinstance(inner, dict):
                raise _fail(
                    index,
                    op,
                    "merge.target_not_object",
                    f"{_where(path)} holds {_describe(inner)}, not an object",
                )
            parent[leaf] = {**inner, **patch}

        return _edit(index, op, current, merge)
    if kind == "remove":
        if not path:
            return None

        def remove(parent: dict[str, Any], leaf: str) -> None:
            parent.pop(leaf, None)

        return _edit(index, op, current, remove, create=False)
    if kind == "append":
        if not path:
            return _append_to(index, op, None if missing else current)

        def append(parent: dict[str, Any], leaf: str) -> None:
            if leaf in parent:
                parent[leaf] = _append_to(index, op, parent[leaf])
            else:
                # The engine's rule: a missing single field starts like null; a missing
                # field at a nested path is always an array.
                parent[leaf] = _initial_append(op.value) if len(path) == 1 else [op.value]

        return _edit(index, op, current, append)
    # increment / decrement
    if not path:
        return _step(index, op, 0 if missing else current)

    def step(parent: dict[str, Any], leaf: str) -> None:
        parent[leaf] = _step(index, op, parent.get(leaf, 0))

    return _edit(index, op, current, step)


def apply_ops(current: Any, ops: Sequence[Op], *, exists: bool = True) -> Any:
    """Apply ``ops`` in order to ``current`` and return the new value.

    A key that does not exist (``exists=False``) starts as ``{}`` (and a first
    increment, decrement or append of the whole value starts from nothing); an
    existing JSON ``null`` stays ``null`` (so a field op on it fails).

    All or nothing: the first op that fails raises :class:`UpdateOpError` and
    ``current`` is left as it was.
    """
    value: Any = current if exists else {}
    for index, op in enumerate(ops):
        value = apply_op(index, op, value, missing=not exists and index == 0)
    return value
