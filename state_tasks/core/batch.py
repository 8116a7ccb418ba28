"""Batches and pages: what every adapter shares, no Celery and no storage here.

A batch (``state::batch``) is a list of set, update and delete operations on one scope,
applied in order, all or nothing. :func:`apply_batch` computes it in memory from the
values its keys hold before it: each adapter reads those values, calls it, and writes
the outcome in one atomic step of its own (a lock, one Lua script, one journal record),
so every adapter shares one definition of what a batch does.

A page (``state::list`` and ``state::list_groups`` with ``limit``/``cursor``/``prefix``)
walks names in sorted order (Unicode code points, which is the byte order of UTF-8). Its
cursor is the last name returned, bound to the call's scope and prefix and signed, so
that a cursor from another scope or prefix, or a forged or garbled one, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from state_tasks.core.codec import apply_ops_json
from state_tasks.core.errors import StateError, ValidationError, version_conflict
from state_tasks.core.ops import Op

#: Most operations in one ``state::batch``.
DEFAULT_MAX_BATCH_OPERATIONS = 1000
#: Most keys in one ``state::get_many``.
DEFAULT_MAX_GET_MANY_KEYS = 10_000
#: A page's ``limit``: at least 1, at most this many.
DEFAULT_MAX_PAGE_LIMIT = 10_000
#: A page's ``limit`` when a paging option is given without one.
DEFAULT_PAGE_LIMIT = 1000

BatchKind = Literal["set", "update", "delete"]

#: What one operation of a batch did: (old JSON text or None, new JSON text or None for a
#: delete). A delete of an absent key is ``(None, None)``.
BatchResult = tuple[str | None, str | None]
#: The same with the key's version after it (a delete: the version deleted; 0: none).
VersionedBatchResult = tuple[str | None, str | None, int]


@dataclass(frozen=True)
class BatchOp:
    """One operation of a batch, validated: ``value_json`` for a set, ``ops`` for an update;
    ``if_version`` and ``ttl_ms`` as in the single calls."""

    kind: BatchKind
    key: str
    value_json: str | None = None
    ops: tuple[Op, ...] = field(default=())
    if_version: int | None = None
    ttl_ms: int | None = None


def batch_conflict(index: int, scope: str, key: str, expected: int, current: int) -> StateError:
    """The ``VERSION_CONFLICT`` of operation ``index`` of a batch (nothing was written)."""
    error = version_conflict(scope, key, expected, current, f"operation {index} ({key!r})")
    details = dict(error.details or {}) | {"operation_index": index}
    return type(error)(
        f"state::batch: {error.message.replace('; nothing was written', '')}; the batch wrote "
        "nothing",
        error.code,
        details,
    )


def apply_batch_versioned(
    scope: str,
    before: Mapping[str, tuple[str, int] | None],
    operations: Sequence[BatchOp],
    max_value_bytes: int,
    next_version: Callable[[], int],
) -> list[VersionedBatchResult]:
    """:func:`apply_batch` with versions: ``before`` maps each key to ``(text, version)`` or
    ``None``. The operations are checked in order, each as the single call checks it: its
    ``if_version`` against the version its key holds when it runs (after the operations
    before it), then its ops; the first that fails raises, naming its index, before anything
    may be written. Each set or update takes ``next_version()`` (a batch that fails may have
    taken some: a version is never reused, not necessarily consecutive)."""
    texts = {key: None if entry is None else entry[0] for key, entry in before.items()}
    versions = {key: 0 if entry is None else entry[1] for key, entry in before.items()}
    results: list[VersionedBatchResult] = []
    for index, op in enumerate(operations):
        current = versions.get(op.key, 0)
        if op.if_version is not None and op.if_version != current:
            raise batch_conflict(index, scope, op.key, op.if_version, current)
        old = texts.get(op.key)
        new = texts[op.key] = _outcome(index, op, old, max_value_bytes)
        if new is None:
            versions[op.key] = 0
            results.append((old, None, current if old is not None else 0))
        else:
            version = versions[op.key] = next_version()
            results.append((old, new, version))
    return results


def batch_keys(operations: Sequence[BatchOp]) -> list[str]:
    """The distinct keys of a batch, in the order they first appear."""
    return list(dict.fromkeys(op.key for op in operations))


def apply_batch(
    before: Mapping[str, str | None], operations: Sequence[BatchOp], max_value_bytes: int
) -> list[BatchResult]:
    """Apply ``operations`` in order to the values their keys hold (``before``).

    Returns one ``(old, new)`` per operation; an operation sees what the ones before it
    left (an update after a set of the same key starts from that set's value). Raises
    :class:`UpdateOpError` or :class:`~state_tasks.core.errors.ValueTooLarge` naming the
    failing operation's index: then nothing may be written.
    """
    current = dict(before)
    results: list[BatchResult] = []
    for index, op in enumerate(operations):
        old = current.get(op.key)
        new = current[op.key] = _outcome(index, op, old, max_value_bytes)
        results.append((old, new))
    return results


def _outcome(index: int, op: BatchOp, old: str | None, max_value_bytes: int) -> str | None:
    """What operation ``index`` of a batch leaves in its key (``None``: a delete)."""
    if op.kind == "set":
        return op.value_json
    if op.kind == "delete":
        return None
    try:
        return apply_ops_json(old, op.ops, max_value_bytes)
    except StateError as e:
        raise batch_operation_error(index, op.key, e) from None


def batch_operation_error(index: int, key: str, error: StateError) -> StateError:
    """``error`` of the update that is operation ``index`` of a batch, naming it."""
    details = dict(error.details or {}) | {"operation_index": index}
    return type(error)(
        f"state::batch: operation {index} (update of key {key!r}): {error.message}; "
        "the batch wrote nothing",
        error.code,
        details,
    )


# -- cursors ------------------------------------------------------------------------------

#: Signs cursors. Fixed, so that every deployment (and a Bridge forwarding a page) reads
#: every other's cursors: a cursor is tamper-evident, not secret (it names a position in a
#: scope its holder names anyway).
_CURSOR_KEY = b"state_tasks.page-cursor.v1"
_CURSOR_MAC_BYTES = 16

PageKind = Literal["list", "list_groups", "changes"]


def _binding(kind: PageKind, scope: str, prefix: str) -> str:
    return hashlib.sha256(json.dumps([kind, scope, prefix]).encode()).hexdigest()[:32]


def _mac(body: bytes) -> bytes:
    return hmac.new(_CURSOR_KEY, body, hashlib.sha256).digest()[:_CURSOR_MAC_BYTES]


def encode_cursor(kind: PageKind, scope: str, prefix: str, after: str) -> str:
    """An opaque cursor for the page after the name ``after``."""
    body = json.dumps({"b": _binding(kind, scope, prefix), "a": after}).encode()
    return base64.urlsafe_b64encode(_mac(body) + body).decode().rstrip("=")


def decode_cursor(
    kind: PageKind, scope: str, prefix: str, cursor: str, field: str = "cursor"
) -> str:
    """The name a cursor continues after; :class:`ValidationError` unless it was made by
    :func:`encode_cursor` for this ``kind``, ``scope`` and ``prefix`` (``field``: the
    argument that carried it, for the messages)."""
    what = f"state::{kind}: '{field}'"
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(
            f"{what} is not a cursor this function gave (it is not base64url); pass the "
            "'cursor' of the previous page unchanged, or omit it for the first page"
        ) from None
    mac, body = raw[:_CURSOR_MAC_BYTES], raw[_CURSOR_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(body)):
        raise ValidationError(
            f"{what} was altered or forged (its signature does not match); pass the "
            "'cursor' of the previous page unchanged, or omit it for the first page"
        )
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("b"), str)
        and isinstance(document.get("a"), str)
        and _is_unicode(document["a"])  # a name never holds a lone surrogate
    ):  # the key is public (see _CURSOR_KEY): a signature proves no more than the shape
        raise ValidationError(
            f"{what} is malformed; pass the 'cursor' of the previous page unchanged, or omit "
            "it for the first page"
        )
    where = f"scope {scope!r}" if kind == "list" else "list_groups"
    if document["b"] != _binding(kind, scope, prefix) and kind == "changes":
        raise ValidationError(
            f"{what} was given by a read of other scopes (another 'scope' or 'prefix'); "
            "read on with the same scope and prefix as the read that gave it"
        )
    if document["b"] != _binding(kind, scope, prefix):
        raise ValidationError(
            f"{what} belongs to another {'scope' if kind == 'list' else 'call'} or another "
            f"prefix, not to {where} with prefix {prefix!r}; page with the same scope and "
            "prefix as the first page"
        )
    return str(document["a"])


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_batch_size(operations: Sequence[object]) -> None:
    """An empty or oversized batch is refused before anything is read."""
    if not operations:
        raise ValidationError(
            "state::batch: 'operations' is empty; give 1 to "
            f"{DEFAULT_MAX_BATCH_OPERATIONS} operations"
        )
    if len(operations) > DEFAULT_MAX_BATCH_OPERATIONS:
        raise ValidationError(
            f"state::batch: 'operations' holds {len(operations)} operations; the limit is "
            f"{DEFAULT_MAX_BATCH_OPERATIONS} (split it into several batches)"
        )


__all__ = [
    "DEFAULT_MAX_BATCH_OPERATIONS",
    "DEFAULT_MAX_GET_MANY_KEYS",
    "DEFAULT_MAX_PAGE_LIMIT",
    "DEFAULT_PAGE_LIMIT",
    "BatchOp",
    "BatchResult",
    "VersionedBatchResult",
    "apply_batch",
    "apply_batch_versioned",
    "batch_conflict",
    "batch_keys",
    "batch_operation_error",
    "decode_cursor",
    "encode_cursor",
]
