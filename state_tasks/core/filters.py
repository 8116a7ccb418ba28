"""Declarative trigger filters: ``config.when`` of a ``state`` trigger.

A filter is JSON, checked when the trigger is registered and evaluated by the worker that
applied the change, before anything is enqueued: a change it does not pass costs no task,
no message and no result. No code from a caller is ever evaluated: the shapes below are
all there is.

=============================================  ==============================================
filter                                         passes when
=============================================  ==============================================
``{"changed": [path, ...]}``                   the value at any of the paths differs between
                                               ``old_value`` and ``new_value`` (present on
                                               one side only counts as a difference)
``{"event_types": ["state:updated", ...]}``    the change is one of these
``{"path": p, "of": "new", "eq": v}``          the value at ``p`` of ``new_value`` (``"of":
                                               "old"``: of ``old_value``; default ``new``)
                                               equals ``v``; also ``ne``, ``in`` (one of a
                                               list), ``gt``, ``gte``, ``lt``, ``lte``
                                               (numbers with numbers, strings with strings),
                                               ``exists`` (``true``/``false``)
``{"all": [f, ...]}``, ``{"any": [f, ...]}``   every / at least one of the filters passes
``{"not": f}``                                 ``f`` does not pass
=============================================  ==============================================

A *path* is written as in the update ops: a field name (``""``: the whole value) or an
array of literal segments (``["profile", "city"]``; ``[]``: the whole value). A path that
runs through a missing key or through a value that is not an object is *missing*: a
comparison on a missing path is false (``ne`` included: it needs a value to differ),
``{"exists": false}`` is true, and nothing is ever an error at change time. ``eq``, ``ne``
and ``in`` compare JSON values exactly (``1`` equals ``1.0``; ``true`` is not ``1``);
the ordering operators compare only numbers with numbers and strings with strings (code
point order), anything else is false. A delete's ``new_value`` and a create's ``old_value``
are ``null``.

Bounds, checked at registration (a filter over them is a ``VALIDATION_ERROR`` naming the
part): :data:`MAX_DEPTH` levels of ``all``/``any``/``not``, :data:`MAX_NODES` filters in
all, :data:`MAX_LIST` items in a list, paths as the update ops bound them, and each
literal value at most :data:`MAX_LITERAL_BYTES` of JSON.

:class:`TriggerFilter` is the typed model (``TriggerFilter.model_validate(raw)``, and the
classes :class:`Changed`, :class:`EventTypes`, :class:`Compare`, :class:`All`,
:class:`AnyOf`, :class:`Not` to build one in Python); :func:`compile_filter` turns a
checked filter into a predicate over the event.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    field_validator,
    model_validator,
)

from state_tasks.core.ops import MAX_PATH_DEPTH, MAX_SEGMENT_BYTES, deeper_than

#: Most levels of ``all``/``any``/``not`` in one filter.
MAX_DEPTH = 8
#: Most filters (every ``changed``, comparison, ``all``, ``any``, ``not``) in one filter.
MAX_NODES = 64
#: Most items in one list (``changed`` paths, ``event_types``, ``in`` values, ``all``/``any``).
MAX_LIST = 256
#: Largest literal (``eq``, ``ne``, an ``in`` item, ``gt``...) as JSON.
MAX_LITERAL_BYTES = 4096
#: The JSON of a whole filter nests at most this deep (checked first, without recursion).
MAX_JSON_DEPTH = 3 * MAX_DEPTH + 16
#: The JSON of a whole filter, at most.
MAX_FILTER_BYTES = 64 * 1024

EVENT_TYPES = ("state:created", "state:updated", "state:deleted")
COMPARISONS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "exists")

#: A path as the update ops write it.
RawPath = str | list[str]


def _check_path(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        segments = [raw] if raw else []
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        segments = list(raw)
    else:
        raise ValueError(f"a path is a field name or an array of field names, got {_show(raw)}")
    if len(segments) > MAX_PATH_DEPTH:
        raise ValueError(f"a path has at most {MAX_PATH_DEPTH} segments, got {len(segments)}")
    for segment in segments:
        if not segment and isinstance(raw, list):
            raise ValueError("a path segment is a non-empty field name")
        try:
            size = len(segment.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("a path segment must be valid Unicode (no lone surrogate)") from None
        if size > MAX_SEGMENT_BYTES:
            raise ValueError(f"a path segment is at most {MAX_SEGMENT_BYTES} bytes")
    return tuple(segments)


def _check_literal(value: Any) -> Any:
    try:
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        raise ValueError(f"a value to compare with must be JSON, got {_show(value)}") from None
    if size > MAX_LITERAL_BYTES:
        raise ValueError(f"a value to compare with is at most {MAX_LITERAL_BYTES} bytes of JSON")
    return value


def _show(value: Any) -> str:
    try:
        shown = repr(value)
    except RecursionError:
        return "a value nested too deeply"
    return shown if len(shown) <= 60 else shown[:57] + "..."


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Changed(_Filter):
    """``{"changed": [path, ...]}``: any of the paths differs between old and new."""

    changed: Annotated[list[RawPath], Field(min_length=1, max_length=MAX_LIST)]

    @field_validator("changed")
    @classmethod
    def _paths(cls, paths: list[RawPath]) -> list[RawPath]:
        for path in paths:
            _check_path(path)
        return paths


class EventTypes(_Filter):
    """``{"event_types": [...]}``: the change is one of these event types."""

    event_types: Annotated[
        list[Literal["state:created", "state:updated", "state:deleted"]],
        Field(min_length=1, max_length=len(EVENT_TYPES)),
    ]


class Compare(_Filter):
    """``{"path": p, "of": "new" | "old", <one comparison>: value}``."""

    path: RawPath
    of: Literal["new", "old"] = "new"
    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(default=None, alias="in", max_length=MAX_LIST)
    gt: int | float | str | None = None
    gte: int | float | str | None = None
    lt: int | float | str | None = None
    lte: int | float | str | None = None
    exists: Annotated[bool, Field(strict=True)] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("path")
    @classmethod
    def _path(cls, path: RawPath) -> RawPath:
        _check_path(path)
        return path

    @field_validator("exists", "in_", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:  # (only when given: an operator left out is not validated)
            raise ValueError("needs a value, not null")
        return value

    @field_validator("gt", "gte", "lt", "lte", mode="before")
    @classmethod
    def _orderable(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("needs a value, not null")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"compares numbers or strings, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("compares finite numbers")
        if isinstance(value, str):
            _check_literal(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _one_comparison(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            if "in_" in data and "in" not in data:  # Compare(path=..., in_=[...]) in Python
                data = {("in" if name == "in_" else name): value for name, value in data.items()}
            given = [name for name in COMPARISONS if name in data]
            if len(given) != 1:
                raise ValueError(
                    "a comparison has a 'path' and exactly one of "
                    f"{', '.join(COMPARISONS)} (got {', '.join(given) or 'none'})"
                )
            for name in ("eq", "ne"):
                if name in data:
                    _check_literal(data[name])
            if "in" in data and isinstance(data["in"], list):
                for item in data["in"]:
                    _check_literal(item)
        return data

    @property
    def operator(self) -> str:
        fields = self.model_fields_set
        for name in COMPARISONS:
            if (name if name != "in" else "in_") in fields:
                return name
        raise AssertionError("a comparison without an operator")  # refused when built


class All(_Filter):
    """``{"all": [f, ...]}``: every filter passes."""

    all: Annotated[list[TriggerFilter], Field(min_length=1, max_length=MAX_LIST)]


class AnyOf(_Filter):
    """``{"any": [f, ...]}``: at least one filter passes."""

    any: Annotated[list[TriggerFilter], Field(min_length=1, max_length=MAX_LIST)]


class Not(_Filter):
    """``{"not": f}``: the filter does not pass."""

    not_: Annotated[TriggerFilter, Field(alias="not")]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


#: The tags of the shapes (pydantic puts them in an error's location).
FILTER_TAGS = frozenset({"changed", "event_types", "compare", "all", "any", "not"})

_SHAPES = {
    "changed": "changed",
    "event_types": "event_types",
    "path": "compare",
    "all": "all",
    "any": "any",
    "not": "not",
}


def _shape(data: Any) -> str | None:
    if isinstance(data, BaseModel):
        return {
            Changed: "changed",
            EventTypes: "event_types",
            Compare: "compare",
            All: "all",
            AnyOf: "any",
            Not: "not",
        }.get(type(data))
    if not isinstance(data, Mapping):
        return None
    found = [shape for name, shape in _SHAPES.items() if name in data]
    return found[0] if len(found) == 1 else None


Node = Annotated[
    (
        Annotated[Changed, Tag("changed")]
        | Annotated[EventTypes, Tag("event_types")]
        | Annotated[Compare, Tag("compare")]
        | Annotated[All, Tag("all")]
        | Annotated[AnyOf, Tag("any")]
        | Annotated[Not, Tag("not")]
    ),
    Discriminator(
        _shape,
        custom_error_type="filter_shape",
        custom_error_message=(
            "a filter is an object with one of 'changed', 'event_types', 'path' (a "
            "comparison), 'all', 'any' or 'not'"
        ),
    ),
]


class TriggerFilter(RootModel[Node]):
    """A trigger's ``when``: one filter (see the module docs for the shapes)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        # Before pydantic walks it: a hostile filter is refused by its size and depth
        # first, without recursion.
        if isinstance(data, Mapping | list):
            try:
                size = len(json.dumps(data, allow_nan=False))
            except (TypeError, ValueError, RecursionError):
                raise ValueError("a filter must be JSON") from None
            if size > MAX_FILTER_BYTES:
                raise ValueError(f"a filter is at most {MAX_FILTER_BYTES} bytes of JSON")
            if deeper_than(data, MAX_JSON_DEPTH):
                raise ValueError(
                    f"a filter nests at most {MAX_JSON_DEPTH} levels of JSON (its 'all', "
                    f"'any' and 'not' at most {MAX_DEPTH}, and the values it compares with)"
                )
        return data

    @model_validator(mode="after")
    def _counted(self) -> TriggerFilter:
        nodes, depth = _measure(self.root)
        if depth > MAX_DEPTH:
            raise ValueError(f"a filter nests 'all', 'any' and 'not' at most {MAX_DEPTH} deep")
        if nodes > MAX_NODES:
            raise ValueError(f"a filter holds at most {MAX_NODES} filters, got {nodes}")
        return self

    def to_json(self) -> Any:
        """The filter as JSON (what ``config.when`` stores)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


for _model in (All, AnyOf, Not):
    _model.model_rebuild()


def _children(node: BaseModel) -> list[BaseModel]:
    if isinstance(node, All):
        return [child.root for child in node.all]
    if isinstance(node, AnyOf):
        return [child.root for child in node.any]
    if isinstance(node, Not):
        return [node.not_.root]
    return []


def _measure(node: BaseModel) -> tuple[int, int]:
    """(filters in all, levels of all/any/not)."""
    children = _children(node)
    if not children:
        return 1, 0
    counted = [_measure(child) for child in children]
    return 1 + sum(n for n, _ in counted), 1 + max(d for _, d in counted)


# -- evaluation ------------------------------------------------------------------------

Predicate = Callable[[Mapping[str, Any]], bool]
_MISSING = object()


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if not isinstance(value, dict) or segment not in value:
            return _MISSING
        value = value[segment]
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (``1 == 1.0``), ``true`` is not ``1``,
    objects by their keys, arrays in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _ordered(name: str, value: Any, bound: Any) -> bool:
    """``value <name> bound`` for two numbers or two strings; false for anything else."""
    numbers = isinstance(value, int | float) and isinstance(bound, int | float)
    strings = isinstance(value, str) and isinstance(bound, str)
    if isinstance(value, bool) or not (numbers or strings):
        return False
    return bool(_ORDER[name](value, bound))


def compile_filter(checked: TriggerFilter | Any) -> Predicate:
    """A predicate over the trigger event for a filter (raw JSON is checked first)."""
    if not isinstance(checked, TriggerFilter):
        checked = TriggerFilter.model_validate(checked)
    return _compile(checked.root)


def _compile(node: BaseModel) -> Predicate:
    if isinstance(node, Changed):
        paths = [_check_path(path) for path in node.changed]

        def changed(event: Mapping[str, Any]) -> bool:
            old, new = event.get("old_value"), event.get("new_value")
            for path in paths:
                before, after = _at(old, path), _at(new, path)
                if (before is _MISSING) != (after is _MISSING):
                    return True
                if before is not _MISSING and not json_equal(before, after):
                    return True
            return False

        return changed
    if isinstance(node, EventTypes):
        wanted = frozenset(node.event_types)
        return lambda event: event.get("event_type") in wanted
    if isinstance(node, Compare):
        return _compile_compare(node)
    if isinstance(node, All):
        parts = [_compile(child.root) for child in node.all]
        return lambda event: all(part(event) for part in parts)
    if isinstance(node, AnyOf):
        parts = [_compile(child.root) for child in node.any]
        return lambda event: any(part(event) for part in parts)
    assert isinstance(node, Not)
    inner = _compile(node.not_.root)
    return lambda event: not inner(event)


def _compile_compare(node: Compare) -> Predicate:
    path = _check_path(node.path)
    side = "new_value" if node.of == "new" else "old_value"
    name = node.operator

    def value_of(event: Mapping[str, Any]) -> Any:
        return _at(event.get(side), path)

    if name == "exists":
        wanted = bool(node.exists)
        return lambda event: (value_of(event) is not _MISSING) == wanted
    if name in ("eq", "ne"):
        literal = node.eq if name == "eq" else node.ne
        same = name == "eq"

        def equal(event: Mapping[str, Any]) -> bool:
            found = value_of(event)
            return found is not _MISSING and json_equal(found, literal) == same

        return equal
    if name == "in":
        options = list(node.in_ or [])

        def one_of(event: Mapping[str, Any]) -> bool:
            found = value_of(event)
            return found is not _MISSING and any(json_equal(found, o) for o in options)

        return one_of
    bound = getattr(node, name)

    def ordered(event: Mapping[str, Any]) -> bool:
        found = value_of(event)
        return found is not _MISSING and _ordered(name, found, bound)

    return ordered
