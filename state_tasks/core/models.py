"""Pydantic models at the edges: task payloads, the state event, trigger configs.

Inside the core, plain typed Python is used; these models validate what comes
in over the wire and turn every problem into a :class:`~state_tasks.core.errors.ValidationError`
that names the field and the offending value.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from state_tasks.core.batch import (
    DEFAULT_MAX_GET_MANY_KEYS,
    DEFAULT_MAX_PAGE_LIMIT,
)
from state_tasks.core.changes import DEFAULT_CHANGES_LIMIT, MAX_CHANGES_LIMIT
from state_tasks.core.errors import ValidationError
from state_tasks.core.filters import FILTER_TAGS, TriggerFilter

MAX_NAME_BYTES = 1024
#: The longest ``ttl_ms``: ten years (of 365.25 days).
MAX_TTL_MS = 10 * 36525 * 24 * 3600 * 10
#: The largest ``if_version`` (versions stay exact as Lua numbers, which are doubles).
MAX_VERSION = 2**53 - 1

EventType = Literal["state:created", "state:updated", "state:deleted"]


def check_name(value: str) -> str:
    """A scope or key: a non-empty string of at most 1024 bytes in UTF-8."""
    if not value:
        raise ValueError("must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(
            f"is not valid Unicode (lone surrogate at position {e.start}); "
            "send text that encodes as UTF-8"
        ) from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"is {size} bytes in UTF-8; the limit is {MAX_NAME_BYTES}")
    return value


Name = Annotated[str, Field(strict=True), AfterValidator(check_name)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: ``if_version``: the version the key must be at (``0``: it must not exist). Strict: a
#: float or a boolean is refused.
IfVersion = Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION)]
#: ``ttl_ms``: the key expires this many milliseconds after the write (1 ms to ten years).
TtlMs = Annotated[int, Field(strict=True, ge=1, le=MAX_TTL_MS)]
StrictBool = Annotated[bool, Field(strict=True)]


class ScopePayload(_Payload):
    scope: Name


class KeyPayload(_Payload):
    scope: Name
    key: Name


class GetPayload(KeyPayload):
    """``state::get``: ``with_version: true`` returns ``{"value", "version", "expires_in_ms"}``."""

    with_version: StrictBool | None = None


class DeletePayload(KeyPayload):
    """``state::delete``: only if the key is at ``if_version``, when given."""

    if_version: IfVersion | None = None


class SetPayload(KeyPayload):
    """``state::set``: ``value`` (or its alias ``data``) is required; JSON ``null`` is a value.

    ``if_version``: only if the key is at that version (``0``: only if absent). ``ttl_ms``:
    the key expires that long after this write; without it the key is permanent.
    """

    value: Any
    if_version: IfVersion | None = None
    ttl_ms: TtlMs | None = None

    @model_validator(mode="before")
    @classmethod
    def _data_alias(cls, raw: Any) -> Any:
        return _value_or_data(raw)


def _value_or_data(raw: Any) -> Any:
    """``data`` is an alias of ``value``; exactly one of them is required."""
    if isinstance(raw, dict):
        has_value, has_data = "value" in raw, "data" in raw
        if has_value and has_data:
            raise ValueError("give either 'value' or its alias 'data', not both")
        if not has_value and not has_data:
            raise ValueError(
                "'value' is missing; pass the JSON value to store (an explicit null is a value)"
            )
        if has_data:
            raw = {k: v for k, v in raw.items() if k != "data"} | {"value": raw["data"]}
    return raw


class UpdatePayload(KeyPayload):
    """``state::update``: ``ttl_ms`` sets a new expiry; without it the key keeps its own."""

    ops: Any
    if_version: IfVersion | None = None
    ttl_ms: TtlMs | None = None


#: A page's ``limit`` (see :mod:`state_tasks.core.batch` for the bounds).
PageLimit = Annotated[int, Field(strict=True, ge=1, le=DEFAULT_MAX_PAGE_LIMIT)]


def check_prefix(value: str) -> str:
    """A name prefix: any string a name may start with (``""``: every name)."""
    return check_name(value) if value else value


Prefix = Annotated[str, Field(strict=True), AfterValidator(check_prefix)]
Cursor = Annotated[str, Field(strict=True, min_length=1, max_length=8192)]


class ListPayload(ScopePayload):
    """``state::list``: without paging options the whole scope, as it always was."""

    limit: PageLimit | None = None
    cursor: Cursor | None = None
    prefix: Prefix | None = None
    with_keys: Annotated[bool, Field(strict=True)] | None = None

    @property
    def paged(self) -> bool:
        return self.model_fields_set & {"limit", "cursor", "prefix", "with_keys"} != set()


class ListGroupsPayload(_Payload):
    """``state::list_groups``: without paging options every scope, as it always was."""

    limit: PageLimit | None = None
    cursor: Cursor | None = None
    prefix: Prefix | None = None
    with_counts: Annotated[bool, Field(strict=True)] | None = None

    @property
    def paged(self) -> bool:
        return self.model_fields_set & {"limit", "cursor", "prefix", "with_counts"} != set()


class ChangesPayload(_Payload):
    """``state::changes``: entries of the change log after ``after`` (a cursor), of one
    ``scope`` or of the scopes starting with ``prefix`` (neither: all)."""

    scope: Name | None = None
    prefix: Prefix | None = None
    after: Annotated[str, Field(strict=True, min_length=1, max_length=65536)] | None = None
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_CHANGES_LIMIT)] = DEFAULT_CHANGES_LIMIT


class ChangesAnswer(BaseModel):
    """What ``state::changes`` returns: ``changes`` (each a :class:`StateEvent` with its
    ``cursor``) and the ``cursor`` to read on from."""

    model_config = ConfigDict(frozen=True)

    changes: list[ChangeEntry]
    cursor: str


class GetManyPayload(ScopePayload):
    """``state::get_many``: the values of ``keys``, in their order."""

    keys: Annotated[list[Name], Field(max_length=DEFAULT_MAX_GET_MANY_KEYS)]


class BatchPayload(ScopePayload):
    """``state::batch``: ``operations`` are checked one by one (their errors name the index)."""

    operations: list[Any]


class BatchSetOperation(_Payload):
    """``{"op": "set", "key", "value"}`` (``data`` is an alias of ``value``, as in
    ``state::set``)."""

    op: Literal["set"] = "set"
    key: Name
    value: Any
    if_version: IfVersion | None = None
    ttl_ms: TtlMs | None = None

    @model_validator(mode="before")
    @classmethod
    def _data_alias(cls, raw: Any) -> Any:
        return _value_or_data(raw)


class BatchUpdateOperation(_Payload):
    """``{"op": "update", "key", "ops"}``."""

    op: Literal["update"] = "update"
    key: Name
    ops: Any
    if_version: IfVersion | None = None
    ttl_ms: TtlMs | None = None


class BatchDeleteOperation(_Payload):
    """``{"op": "delete", "key"}``."""

    op: Literal["delete"] = "delete"
    key: Name
    if_version: IfVersion | None = None


BatchOperation = BatchSetOperation | BatchUpdateOperation | BatchDeleteOperation

#: The model of each ``op`` of a batch.
BATCH_OPERATIONS: dict[str, type[BatchOperation]] = {
    "set": BatchSetOperation,
    "update": BatchUpdateOperation,
    "delete": BatchDeleteOperation,
}


def batch_json(*operations: BatchOperation | dict[str, Any]) -> list[dict[str, Any]]:
    """Typed batch operations (or plain dicts) as the JSON list ``state::batch`` takes::

    batch_json(BatchSetOperation(op="set", key="a", value=1),
               BatchUpdateOperation(op="update", key="n", ops=ops_json(IncrementOp(field="n"))))
    """
    return [
        {
            name: value
            for name, value in op.model_dump(mode="json").items()
            if value is not None or name not in ("if_version", "ttl_ms")
        }
        if isinstance(op, BaseModel)
        else op
        for op in operations
    ]


class VersionedValue(BaseModel):
    """What ``state::get`` with ``with_version: true`` returns: a missing key is
    ``value=None, version=0``; ``expires_in_ms`` is ``None`` for a permanent key."""

    model_config = ConfigDict(frozen=True)

    value: Any
    version: int
    expires_in_ms: int | None


class ListPage(BaseModel):
    """A page of ``state::list`` or ``state::list_groups``: ``items`` and the next
    ``cursor`` (``None`` on the last page)."""

    model_config = ConfigDict(frozen=True)

    items: list[Any]
    cursor: str | None


#: Where a typed op acts: a field name (``""``: the whole value) or an array of
#: literal segments (``["profile", "city"]``; ``[]``: the whole value).
OpPath = str | list[str]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The op in its seed form (its engine form when given a ``path``), ready for
        ``state::update``'s ``ops``."""
        raise NotImplementedError


class SetOp(_Op):
    """``{"set": value}``: replace the whole value; with ``path``, set the value there."""

    value: Any
    path: OpPath | None = None

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return {"set": self.value}
        return {"type": "set", "path": self.path, "value": self.value}


class MergeOp(_Op):
    """``{"merge": {...}}``: shallow-merge an object into the current object (with
    ``path``, into the object there)."""

    value: dict[str, Any]
    path: OpPath | None = None

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return {"merge": self.value}
        return {"type": "merge", "path": self.path, "value": self.value}


class _FieldOp(_Op):
    """An op on one field (``field``, the seed form) or at a ``path`` (the engine form)."""

    field: Annotated[str, Field(min_length=1)] | None = None
    path: OpPath | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _FieldOp:
        if (self.field is None) == (self.path is None):
            raise ValueError(
                "give exactly one of 'field' (one top-level field) and 'path' (a field name, or "
                "an array of field names for a nested field)"
            )
        return self


class IncrementOp(_FieldOp):
    """``{"increment": {"field": f, "by": n}}``: add ``by`` to a numeric field."""

    kind: ClassVar[str] = "increment"
    by: int | float = 1

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return {self.kind: {"field": self.field, "by": self.by}}
        return {"type": self.kind, "path": self.path, "by": self.by}


class DecrementOp(IncrementOp):
    """``{"decrement": {"field": f, "by": n}}``: subtract ``by`` from a numeric field."""

    kind: ClassVar[str] = "decrement"


class AppendOp(_FieldOp):
    """``{"append": {"field": f, "value": v}}``: push ``value`` onto an array, or add a
    string to a string."""

    value: Any

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return {"append": {"field": self.field, "value": self.value}}
        return {"type": "append", "path": self.path, "value": self.value}


class RemoveOp(_FieldOp):
    """``{"remove": f}``: remove a field (a missing field is a no-op)."""

    def to_json(self) -> dict[str, Any]:
        if self.path is None:
            return {"remove": self.field}
        return {"type": "remove", "path": self.path}


UpdateOp = SetOp | MergeOp | IncrementOp | DecrementOp | AppendOp | RemoveOp


def ops_json(*ops: UpdateOp | dict[str, Any]) -> list[dict[str, Any]]:
    """Typed ops (or plain dicts) as the JSON list ``state::update`` takes."""
    return [op.to_json() if isinstance(op, _Op) else op for op in ops]


class StateEvent(BaseModel):
    """The event handed to trigger conditions and handlers (SPEC §4).

    Handlers receive it as a plain dict; ``StateEvent.model_validate(event)``
    parses it. ``event_id`` is unique per change: use it to make a handler
    idempotent.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["state"] = "state"
    event_type: EventType
    scope: str
    key: str
    old_value: Any = None
    new_value: Any = None
    event_id: str
    timestamp: str
    #: The key's new version, or for ``state:deleted`` the version deleted (``None`` from an
    #: adapter without versions).
    version: int | None = None
    #: ``state:deleted`` only: ``"deleted"`` (a call) or ``"expired"`` (its ``ttl_ms`` ran out).
    reason: Literal["deleted", "expired"] | None = None


class ChangeEntry(StateEvent):
    """One entry of the change log (``state::changes``, :func:`state_tasks.watch`): the
    change's trigger event plus ``cursor``, which resumes right after it."""

    cursor: str


ChangesAnswer.model_rebuild()


class TriggerConfig(BaseModel):
    """``config`` of a ``state`` trigger; an omitted filter matches everything. ``when``:
    a declarative filter (:mod:`state_tasks.core.filters`), judged before anything is
    enqueued."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Annotated[str, Field(strict=True), AfterValidator(check_name)] | None = None
    key: Annotated[str, Field(strict=True), AfterValidator(check_name)] | None = None
    condition_function_id: Annotated[str, Field(strict=True, min_length=1)] | None = None
    when: TriggerFilter | None = None


class TriggerSpec(BaseModel):
    """A trigger registration: ``{"type": "state", "function_id": ..., "config": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["state"] = "state"
    function_id: Annotated[str, Field(strict=True, min_length=1)]
    config: TriggerConfig = TriggerConfig()


ModelT = TypeVar("ModelT", bound=BaseModel)


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def filter_location(loc: tuple[Any, ...]) -> list[str]:
    """An error's location as the user wrote it: a trigger filter's shapes are told apart
    by a tag that pydantic puts in the location at every filter (``when.all.all.0.compare.eq``):
    dropped (``when.all.0.eq``)."""
    parts = [str(part) for part in loc]
    if "when" not in parts:
        return parts
    start = parts.index("when") + 1
    kept = parts[:start]
    tag_next, index_next = True, False
    for part in parts[start:]:
        if tag_next and part in FILTER_TAGS:  # a filter: its tag first
            tag_next = False
            continue
        kept.append(part)
        if index_next:  # the index of an item of all/any: a filter follows
            tag_next, index_next = part.isdigit(), False
        elif part in ("all", "any"):
            index_next = True
        elif part == "not":
            tag_next = True
        else:
            tag_next = False
    return kept


def parse(model: type[ModelT], data: Any, what: str) -> ModelT:
    """Validate ``data`` as ``model``; raise one readable :class:`ValidationError`."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            where = ".".join(filter_location(err["loc"])) or "payload"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "is not a known field (check its spelling)"
            elif err["type"] == "missing":
                message = "is required"
            elif "input" in err and err["type"] not in ("value_error",):
                message = f"{message} (got {_show(err['input'])})"
            problems.append(f"'{where}' {message}" if where != "payload" else message)
        raise ValidationError(f"{what}: " + "; ".join(problems)) from None
