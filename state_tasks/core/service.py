"""The state service: validation, the adapter, and change events. No Celery here.

The state functions are methods of :class:`StateService`; the Celery tasks
and the in-process facade both call :meth:`StateService.call`. After a change
is stored (never before, never for a failed change) the service hands a
:data:`StateEvent`-shaped dict to its ``on_change`` callback, which the Celery
layer wires to trigger dispatch.

Applied operations are recorded whole by the adapter, atomically with the change (see
:mod:`state_tasks.adapters.base`). Once a change's trigger work is sent, the service settles its
record, shrinking it to a marker of a fixed size. It does so when the thread that ran
the operation starts its next call: in a Celery worker (threads, prefork or solo pool)
that thread has by then stored the task's result, so a task redelivered after a crash
finds its record whole whenever its caller has not had a result yet. Records of an idle
thread wait for its next call, or for any thread's call once
:data:`SETTLE_ANY_THREAD_AFTER_S` has passed.

Expiry: :meth:`StateService.sweep_expired` (every worker runs it in a loop, see
:mod:`state_tasks.expiry`) has the adapter remove the keys whose ``ttl_ms`` ran out and
fires one ``state:deleted`` event with ``"reason": "expired"`` for each. Its ``event_id``
is derived from the scope, the key and the version that expired
(:func:`expiry_event_id`), so whoever fires it (the sweeper, or a write that found the key
expired first) gives it the same id. Once an expiry's event is sent the service tells the
adapter (:meth:`state_tasks.adapters.base.StateAdapter.expiries_sent`); an adapter that
keeps pending expiries (the KvStore, the RedisAdapter) hands those not known to be sent after
:data:`DEFAULT_EXPIRY_RESEND_AFTER_MS` to the next sweep, which sends them again with the
same id: a process that died, or could not reach the broker, between removing a key and
sending its event does not lose the event.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from state_tasks.adapters.base import Change, Expired, OperationSettled, StateAdapter
from state_tasks.core import codec
from state_tasks.core.batch import (
    DEFAULT_PAGE_LIMIT,
    BatchOp,
    check_batch_size,
    decode_cursor,
    encode_cursor,
)
from state_tasks.core.changes import (
    AT_END,
    ChangesCompacted,
    Compacted,
    change_event_id,
    expiry_event_id,
)
from state_tasks.core.coordination import COORDINATION_FUNCTIONS, Coordinator, SendTask
from state_tasks.core.errors import AdapterError, AdapterUnavailable, StateError, ValidationError
from state_tasks.core.models import (
    BATCH_OPERATIONS,
    BatchDeleteOperation,
    BatchPayload,
    BatchSetOperation,
    BatchUpdateOperation,
    ChangesPayload,
    DeletePayload,
    GetManyPayload,
    GetPayload,
    ListGroupsPayload,
    ListPayload,
    SetPayload,
    UpdatePayload,
    parse,
)
from state_tasks.core.ops import parse_ops

logger = logging.getLogger(__name__)

#: The state functions, by their task name.
STATE_FUNCTIONS = (
    "state::set",
    "state::get",
    "state::delete",
    "state::update",
    "state::list",
    "state::list_groups",
    "state::batch",
    "state::get_many",
    "state::changes",
    *COORDINATION_FUNCTIONS,
)

#: A change's record is settled by the next call of the thread that made it, or by the next
#: call of any thread once this many seconds have passed since its trigger work was sent.
SETTLE_ANY_THREAD_AFTER_S = 60.0
#: Most keys one sweep of expired keys removes (the sweeper calls again at once when full).
DEFAULT_SWEEP_LIMIT = 1000
#: An expiry whose event is not known to be sent this long after its key was removed is
#: sent again by the next sweep (same event id), where the adapter keeps pending expiries.
#: Long enough that a send still under way (kombu retries a publish for a few seconds) is
#: not doubled.
DEFAULT_EXPIRY_RESEND_AFTER_MS = 30_000
#: How often within the resend delay a sweeper looks for pending expiries (a look costs a
#: script per bucket on a Redis Cluster: looking at every sweep, 5-20 times a second, would
#: cost an idle worker thousands of commands a second and find nothing sooner than needed).
PENDING_LOOKS_PER_RESEND = 10

ChangeListener = Callable[[dict[str, Any]], None]


def make_event(
    event_type: str,
    scope: str,
    key: str,
    old_value: Any,
    new_value: Any,
    event_id: str | None = None,
    version: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Build the event payload of SPEC §4 as a JSON-safe dict: with the key's ``version``
    (for ``state:deleted``, the version deleted) and, for ``state:deleted``, its ``reason``
    (``"deleted"`` or ``"expired"``)."""
    event = {
        "type": "state",
        "event_type": event_type,
        "scope": scope,
        "key": key,
        "old_value": old_value,
        "new_value": new_value,
        "event_id": event_id or uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        "version": version,
    }
    if event_type == "state:deleted":
        event["reason"] = reason or "deleted"
    return event


def expiry_event(expired: Expired) -> dict[str, Any]:
    """The ``state:deleted`` event (``reason: "expired"``) of a key whose ttl ran out."""
    return make_event(
        "state:deleted",
        expired.scope,
        expired.key,
        codec.decode(expired.value_json),
        None,
        expiry_event_id(expired.scope, expired.key, expired.version),
        expired.version,
        "expired",
    )


class StateService:
    """The state functions over one adapter.

    :param adapter: where values live; opened by the caller.
    :param on_change: called with the event dict after each stored change. A listener that
        has ``send_changes(events, trigger_version)`` gets the events of one operation
        together with the triggers' version the adapter read with the change (``None``:
        not read); one that has ``send_all(events)`` gets them together
        (:class:`state_tasks.triggers.dispatch.Dispatcher` has both).
    :param expiry_resend_after_ms: see :data:`DEFAULT_EXPIRY_RESEND_AFTER_MS`.
    :param send_task: ``send_task(name, kwargs, task_id)`` sends a barrier's ``then`` task
        (:mod:`state_tasks.core.coordination`); ``None``: ``state::arrive`` is refused.
    """

    def __init__(
        self,
        adapter: StateAdapter,
        on_change: ChangeListener | None = None,
        *,
        expiry_resend_after_ms: int = DEFAULT_EXPIRY_RESEND_AFTER_MS,
        send_task: SendTask | None = None,
    ) -> None:
        self.adapter = adapter
        self.on_change = on_change
        self.expiry_resend_after_ms = expiry_resend_after_ms
        self._next_pending_look = 0.0  # time.monotonic() of the next look for pending expiries
        self._handlers: dict[str, Callable[[Mapping[str, Any], str | None], Any]] = {
            "state::set": self._set,
            "state::get": self._get,
            "state::delete": self._delete,
            "state::update": self._update,
            "state::list": self._list,
            "state::list_groups": self._list_groups,
            "state::batch": self._batch,
            "state::get_many": self._get_many,
            "state::changes": self._changes,
        }
        self.coordinator = Coordinator(self, send_task)
        self._handlers.update(self.coordinator.handlers())
        # (thread id, monotonic time, op id) of operations whose trigger work was sent.
        self._sent: list[tuple[int, float, str]] = []
        self._sent_lock = threading.Lock()

    def call(
        self, function_id: str, payload: Mapping[str, Any] | None = None, op_id: str | None = None
    ) -> Any:
        """Run one state function with its payload; return its JSON-safe result.

        ``op_id`` names the operation (the Celery task id, which a redelivered task keeps):
        a mutation already applied under it is not applied again. While its trigger work is
        not known to be sent, the repeat returns the recorded result and fires its triggers
        again with the same ``event_id`` (``op_id``), so that a change whose dispatch was cut
        short by a crash still gets it. Once it is settled, the repeat sends nothing and
        returns what it knows without the stored values: ``set`` gives
        ``{"old_value": None, "new_value": <value>, "version": n, "replayed": True}``,
        ``update`` gives ``{"old_value": None, "new_value": None, "version": n, "replayed":
        True}`` (``version``: the version the operation gave, which the settled record keeps;
        absent when a record settled before records kept it), ``delete`` ``None``.

        Raises :class:`StateError` (and nothing else) for bad input or a storage failure.
        """
        handler = self._handlers.get(function_id)
        if handler is None:
            raise ValidationError(
                f"unknown state function {function_id!r} "
                f"(expected one of {', '.join(STATE_FUNCTIONS)})"
            )
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise ValidationError(f"{function_id}: the payload must be an object, got {payload!r}")
        if self._sent:
            self.settle_sent(threading.get_ident())
        try:
            return handler(payload, op_id)
        except StateError:
            raise
        except Exception as e:  # an adapter broke its contract: still report it as ours
            logger.exception("%s failed inside the adapter", function_id)
            raise AdapterError(f"{function_id}: the storage failed: {type(e).__name__}: {e}") from e

    # -- the state functions -------------------------------------------------------

    def _set(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(SetPayload, payload, "state::set")
        text = codec.encode(request.value, self.adapter.max_value_bytes)
        try:
            change = self.adapter.set_versioned(
                request.scope,
                request.key,
                text,
                op_id,
                if_version=request.if_version,
                ttl_ms=request.ttl_ms,
            )
        except OperationSettled as settled:
            return _settled_answer(request.value, settled.versions)
        old = codec.decode(change.old)
        event_type = "state:created" if change.old is None else "state:updated"
        self._changed(event_type, request.scope, request.key, old, request.value, op_id, change)
        return {"old_value": old, "new_value": request.value, "version": change.version}

    def _get(self, payload: Mapping[str, Any], op_id: str | None) -> Any:
        request = parse(GetPayload, payload, "state::get")
        if not request.with_version:
            return codec.decode(self.adapter.get(request.scope, request.key))
        entry = self.adapter.get_entry(request.scope, request.key)
        if entry is None:
            return {"value": None, "version": 0, "expires_in_ms": None}
        return {
            "value": codec.decode(entry.value_json),
            "version": entry.version,
            "expires_in_ms": entry.expires_in_ms,
        }

    def _delete(self, payload: Mapping[str, Any], op_id: str | None) -> Any:
        request = parse(DeletePayload, payload, "state::delete")
        try:
            change = self.adapter.delete_versioned(
                request.scope, request.key, op_id, if_version=request.if_version
            )
        except OperationSettled:
            return None
        if change.old is None:
            if change.expired is not None:
                self._dispatch([expiry_event(change.expired)], None)
                self._expiries_sent([change.expired])
            return None
        old = codec.decode(change.old)
        self._changed("state:deleted", request.scope, request.key, old, None, op_id, change)
        return old

    def _update(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(UpdatePayload, payload, "state::update")
        ops = parse_ops(request.ops)
        try:
            change = self.adapter.update_versioned(
                request.scope,
                request.key,
                ops,
                op_id,
                if_version=request.if_version,
                ttl_ms=request.ttl_ms,
            )
        except OperationSettled as settled:
            return _settled_answer(None, settled.versions)
        old, new = codec.decode(change.old), codec.decode(change.new)
        event_type = "state:created" if change.old is None else "state:updated"
        self._changed(event_type, request.scope, request.key, old, new, op_id, change)
        return {"old_value": old, "new_value": new, "version": change.version}

    def _list(self, payload: Mapping[str, Any], op_id: str | None) -> Any:
        request = parse(ListPayload, payload, "state::list")
        if not request.paged:
            return [codec.decode(text) for text in self.adapter.list(request.scope)]
        prefix = request.prefix or ""
        after = None
        if request.cursor is not None:
            after = decode_cursor("list", request.scope, prefix, request.cursor)
        limit = request.limit or DEFAULT_PAGE_LIMIT
        rows, more = self.adapter.list_page(request.scope, prefix, after, limit)
        items: list[Any] = (
            [{"key": key, "value": codec.decode(text)} for key, text in rows]
            if request.with_keys
            else [codec.decode(text) for _, text in rows]
        )
        cursor = encode_cursor("list", request.scope, prefix, rows[-1][0]) if more else None
        return {"items": items, "cursor": cursor}

    def _list_groups(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(ListGroupsPayload, payload, "state::list_groups")
        if not request.paged:
            return {"groups": self.adapter.list_groups()}
        prefix = request.prefix or ""
        after = None
        if request.cursor is not None:
            after = decode_cursor("list_groups", "", prefix, request.cursor)
        limit = request.limit or DEFAULT_PAGE_LIMIT
        rows, more = self.adapter.list_groups_page(prefix, after, limit, bool(request.with_counts))
        items: list[Any] = (
            [{"scope": scope, "count": count} for scope, count in rows]
            if request.with_counts
            else [scope for scope, _ in rows]
        )
        cursor = encode_cursor("list_groups", "", prefix, rows[-1][0]) if more else None
        return {"items": items, "cursor": cursor}

    def _get_many(self, payload: Mapping[str, Any], op_id: str | None) -> list[Any]:
        request = parse(GetManyPayload, payload, "state::get_many")
        if not request.keys:
            return []
        return [codec.decode(text) for text in self.adapter.get_many(request.scope, request.keys)]

    def _changes(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(ChangesPayload, payload, "state::changes")
        scope, prefix = request.scope or "", request.prefix or ""
        after = request.after
        if after is not None and after != AT_END:
            after = decode_cursor("changes", scope, prefix, after, "after")
        try:
            page = self.adapter.changes(request.scope, request.prefix, after, request.limit)
        except ChangesCompacted as compacted:
            oldest = encode_cursor("changes", scope, prefix, compacted.oldest)
            raise Compacted(
                "state::changes: the change log no longer holds the changes right after "
                "'after' (they were trimmed: the log keeps change_log.max_entries entries "
                "for change_log.max_age_s seconds); read from details.oldest to go on "
                "with what is kept, knowing that changes in between were missed",
                details={"oldest": oldest},
            ) from None
        changes = [
            event | {"cursor": encode_cursor("changes", scope, prefix, position)}
            for event, position in page.entries
        ]
        return {
            "changes": changes,
            "cursor": encode_cursor("changes", scope, prefix, page.position),
        }

    def _batch(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(BatchPayload, payload, "state::batch")
        check_batch_size(request.operations)
        operations = [self._batch_op(i, raw) for i, raw in enumerate(request.operations)]
        try:
            change = self.adapter.batch_versioned(request.scope, operations, op_id)
        except OperationSettled as settled:
            versions = _batch_versions(operations, settled.versions)
            results = [
                _replayed(op, version) for op, version in zip(operations, versions, strict=True)
            ]
            return {"results": results, "replayed": True}
        answers: list[Any] = []
        events = [expiry_event(gone) for gone in change.expired]
        for index, (op, (old_text, new_text, version)) in enumerate(
            zip(operations, change.results, strict=True)
        ):
            old = codec.decode(old_text)
            event_id = None if op_id is None else f"{op_id}:{index}"
            if op.kind == "delete":
                if event_id is None and old_text is not None:
                    event_id = self._derived_id("state:deleted", request.scope, op.key, version)
                answers.append(old)
                if old_text is not None:
                    events.append(
                        make_event(
                            "state:deleted", request.scope, op.key, old, None, event_id, version
                        )
                    )
                continue
            new = codec.decode(new_text)
            answers.append({"old_value": old, "new_value": new, "version": version})
            event_type = "state:created" if old_text is None else "state:updated"
            if event_id is None:
                event_id = self._derived_id(event_type, request.scope, op.key, version)
            events.append(
                make_event(event_type, request.scope, op.key, old, new, event_id, version)
            )
        self._dispatch(events, op_id, change.trigger_version)
        self._expiries_sent(change.expired)
        return {"results": answers}

    def _batch_op(self, index: int, raw: Any) -> BatchOp:
        """One operation of a batch, validated; errors name its index."""
        if not isinstance(raw, Mapping):
            raise _in_operation(
                index,
                ValidationError(
                    'must be an object such as {"op": "set", "key": "k", "value": 1}, '
                    f"got {raw!r}"[:200]
                ),
            )
        kind = raw.get("op")
        model = BATCH_OPERATIONS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise _in_operation(
                index,
                ValidationError(
                    f"unknown op {kind!r}; each operation's 'op' is 'set', 'update' or 'delete'"
                ),
            )
        try:
            parsed = parse(model, raw, f"operation {index} ({kind})")
            if isinstance(parsed, BatchSetOperation):
                text = codec.encode(parsed.value, self.adapter.max_value_bytes)
                return BatchOp(
                    "set",
                    parsed.key,
                    value_json=text,
                    if_version=parsed.if_version,
                    ttl_ms=parsed.ttl_ms,
                )
            if isinstance(parsed, BatchUpdateOperation):
                return BatchOp(
                    "update",
                    parsed.key,
                    ops=tuple(parse_ops(parsed.ops)),
                    if_version=parsed.if_version,
                    ttl_ms=parsed.ttl_ms,
                )
            assert isinstance(parsed, BatchDeleteOperation)
            return BatchOp("delete", parsed.key, if_version=parsed.if_version)
        except StateError as e:
            raise _in_operation(index, e) from None

    def sweep_expired(self, limit: int = DEFAULT_SWEEP_LIMIT) -> tuple[int, float | None]:
        """Remove keys whose ``ttl_ms`` ran out and fire their ``state:deleted`` events
        (``reason: "expired"``), all at once, after the pending expiries whose events are
        not known to be sent after ``expiry_resend_after_ms`` (same event ids), ``limit`` in
        all. Return how many events, and the milliseconds until the next expiry (``None``:
        none known). The adapter claims each key atomically, so several workers sweeping at
        once fire each expiry once. When the events cannot be sent (the broker is away) this
        raises :class:`AdapterUnavailable`; an adapter without pending expiries loses them.
        Pending expiries are looked for :data:`PENDING_LOOKS_PER_RESEND` times per resend
        delay, not at every sweep (while a look finds a full ``limit``, at every sweep)."""
        if self._sent:
            self.settle_sent(threading.get_ident())
        # The pending ones first: those this sweep removes are not pending long enough.
        expired: list[Expired] = []
        now = time.monotonic()
        if now >= self._next_pending_look:
            expired = self.adapter.pending_expiries(self.expiry_resend_after_ms, limit)
            if len(expired) < limit:
                every_s = self.expiry_resend_after_ms / 1000 / PENDING_LOOKS_PER_RESEND
                self._next_pending_look = now + every_s
        next_due_ms: float | None = 0.0  # full: sweep again at once
        if len(expired) < limit:
            due, next_due_ms = self.adapter.expire_due(limit - len(expired))
            expired += due
        if expired:
            self._dispatch([expiry_event(gone) for gone in expired], None)
            self._expiries_sent(expired)
        return len(expired), next_due_ms

    def settle_sent(self, thread_id: int | None = None) -> None:
        """Settle the records of changes whose trigger work was sent.

        ``thread_id``: only those made by that thread, and those older than
        :data:`SETTLE_ANY_THREAD_AFTER_S`; ``None``: all of them (e.g. before closing).
        A storage failure is logged and leaves those records whole until they expire.
        """
        oldest_kept = time.monotonic() - SETTLE_ANY_THREAD_AFTER_S
        due: list[str] = []
        kept: list[tuple[int, float, str]] = []
        with self._sent_lock:
            for entry in self._sent:
                if thread_id is None or entry[0] == thread_id or entry[1] <= oldest_kept:
                    due.append(entry[2])
                else:
                    kept.append(entry)
            if not due:
                return
            self._sent = kept
        try:
            self.adapter.settle(due)
        except Exception as e:
            logger.warning(
                "could not settle %d operation records (they stay whole until they expire): %s",
                len(due),
                e,
            )

    def _changed(
        self,
        event_type: str,
        scope: str,
        key: str,
        old: Any,
        new: Any,
        op_id: str | None,
        change: Change,
    ) -> None:
        """Send the change's trigger work (after the expiry it found, if any); then its
        record may be settled."""
        events = [] if change.expired is None else [expiry_event(change.expired)]
        event_id = op_id or self._derived_id(event_type, scope, key, change.version)
        events.append(make_event(event_type, scope, key, old, new, event_id, change.version))
        self._dispatch(events, op_id, change.trigger_version)
        if change.expired is not None:
            self._expiries_sent([change.expired])

    def _derived_id(self, event_type: str, scope: str, key: str, version: int) -> str | None:
        """The event id of a change made without an operation id: derived from its key and
        version where versions are kept (the change log derives the same), else random (as
        when the adapter does not know the version: a Bridge's delete answers none)."""
        if not self.adapter.supports_versions or version <= 0:
            return None
        return change_event_id(event_type, scope, key, version)

    def _expiries_sent(self, expired: list[Expired]) -> None:
        """Tell the adapter the events of ``expired`` were sent (a failure is logged: their
        pending records stay, and the events are sent again with the same ids)."""
        if not expired:
            return
        try:
            self.adapter.expiries_sent(expired)
        except Exception as e:
            logger.warning(
                "sent the events of %d expiries but could not drop their pending records "
                "(they are sent again, same event ids): %s",
                len(expired),
                e,
            )

    def _dispatch(
        self, events: list[dict[str, Any]], op_id: str | None, trigger_version: int | None = None
    ) -> None:
        """Send the trigger work of an operation's stored changes (matched against the
        triggers at ``trigger_version`` when the adapter read it with the change); then its
        record may be settled."""
        if self.on_change is not None and events:
            try:
                self._send(events, trigger_version)
            except Exception as e:
                # The change is stored, its trigger work is not (or not surely) sent. Fail the
                # call as a connection problem: the task is retried under the same id, which
                # does not apply the change again (its record stays whole) but does dispatch
                # its triggers (all of them again, for a batch: same event ids).
                first = events[0]
                event_type, scope, key = first["event_type"], first["scope"], first["key"]
                more = f" and {len(events) - 1} more changes" if len(events) > 1 else ""
                logger.warning(
                    "stored %s for scope=%r key=%r%s but could not send its trigger work: %s",
                    event_type,
                    scope,
                    key,
                    more,
                    e,
                )
                raise AdapterUnavailable(
                    f"{event_type} of scope {scope!r} key {key!r}{more} is stored, but its "
                    f"triggers could not be sent ({type(e).__name__}: {e}); retrying the call "
                    "sends them"
                ) from e
        if op_id is not None:
            with self._sent_lock:
                self._sent.append((threading.get_ident(), time.monotonic(), op_id))

    def _send(self, events: list[dict[str, Any]], trigger_version: int | None) -> None:
        """Hand ``events`` to the listener: all at once with the triggers' version when it
        takes them so (``send_changes``, as
        :meth:`state_tasks.triggers.dispatch.Dispatcher.send_changes`), all at once when it
        can (``send_all``), else one by one."""
        send_changes = getattr(self.on_change, "send_changes", None)
        if send_changes is not None:
            send_changes(events, trigger_version)
            return
        send_all = getattr(self.on_change, "send_all", None)
        if send_all is not None and len(events) > 1:
            send_all(events)
            return
        for event in events:
            self.on_change(event)  # type: ignore[misc]


def _settled_answer(new_value: Any, versions: tuple[int, ...] | None) -> dict[str, Any]:
    """What a settled repeat of a set or an update answers: with its version when the
    settled record kept it."""
    answer: dict[str, Any] = {"old_value": None, "new_value": new_value}
    if versions is not None and len(versions) == 1:
        answer["version"] = versions[0]
    return answer | {"replayed": True}


def _batch_versions(
    operations: list[BatchOp], versions: tuple[int, ...] | None
) -> list[int | None]:
    """The version of each operation of a settled batch: the record keeps one per set and
    update, in order (none for a delete); none at all from a record that did not keep them."""
    writes = sum(op.kind != "delete" for op in operations)
    if versions is None or len(versions) != writes:
        return [None] * len(operations)
    given = iter(versions)
    return [None if op.kind == "delete" else next(given) for op in operations]


def _replayed(op: BatchOp, version: int | None = None) -> Any:
    """What a settled repeat answers for one operation of a batch (as the single calls do)."""
    if op.kind == "set":
        answer: dict[str, Any] = {"old_value": None, "new_value": codec.decode(op.value_json)}
    elif op.kind == "update":
        answer = {"old_value": None, "new_value": None}
    else:
        return None
    if version is not None:
        answer["version"] = version
    return answer


def _in_operation(index: int, error: StateError) -> StateError:
    """``error`` of one operation of a batch, naming its index (``details.operation_index``)."""
    details = dict(error.details or {}) | {"operation_index": index}
    message = error.message
    if not message.startswith("operation "):
        message = f"operation {index}: {message}"
    return type(error)(f"state::batch: {message}; the batch wrote nothing", error.code, details)
