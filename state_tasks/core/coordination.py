"""Coordination on state: locks with fencing tokens, guards of tasks that run once, and
fan-in barriers. No Celery here: the :class:`Coordinator` is built on the state functions
of a :class:`~state_tasks.core.service.StateService`, so every lock and barrier is an
ordinary key (readable with ``state::get``, in the change log, seen by triggers) and keeps
the service's promises: operation ids, versions, ``ttl_ms``, compare-and-set.

**A lock** is a key holding ``{"lock": {"owner": o, "ttl_ms": t}}`` with ``ttl_ms``.
Acquiring is a ``state::set`` with ``if_version: 0`` (only if absent; an expired lock is
absent), so exactly one caller gets it. Its *token* is the version that set gave the key:
versions of a key only grow and are never reused, across deletes, expiries and restarts,
so a later holder always has a larger token (a fencing token). Extending writes the record
again (same value, with ``"token"`` named, since the version moves on) under ``if_version``;
unlocking deletes it under ``if_version``. Only the holder's token does either.

**A once-guard** is a lock whose record, when the guarded work finished, may be replaced by
``{"once": {"done": true, "owner": o, "result": r}}`` for a window: a call within it is
answered with the first result.

**A barrier** is a key holding ``{"barrier": {"expected", "then", "arrived", "fired",
"id"}}`` plus one key per member that arrived, ``<key>/arrived/<member>``. An arrival is one
``state::batch`` on the scope: the member's key with ``if_version: 0`` (a member arrives
once) and the count's increment, all or nothing. The one arrival whose batch brings the
count to ``expected`` sends ``then``; a redelivered arrival replays its batch (operation id)
and sends it only if the record does not say it was sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from state_tasks.core.errors import AdapterUnavailable, ValidationError, VersionConflict
from state_tasks.core.models import MAX_VERSION, KeyPayload, Name, TtlMs, _Payload, parse


class StateFunctions(Protocol):
    """What the coordinator needs of the state service (:class:`StateService` is one)."""

    def call(
        self, function_id: str, payload: Mapping[str, Any] | None = None, op_id: str | None = None
    ) -> Any: ...


#: The coordination functions, by their task name.
COORDINATION_FUNCTIONS = ("state::lock", "state::unlock", "state::extend", "state::arrive")

#: The most members a barrier may expect.
MAX_BARRIER_MEMBERS = 1_000_000
#: The longest error text a failed member's arrival records.
MAX_ERROR_CHARS = 2000
#: Between a member's key and the barrier's key: ``<key>/arrived/<member>``.
ARRIVED = "/arrived/"
#: Task ids of barrier callbacks are derived from the barrier's id in this namespace.
THEN_NAMESPACE = uuid.UUID("0b6f5f38-4a51-4a0e-9d53-7c0d8f1e6a21")
#: The message header that makes a task a member of a fan-in (``state_tasks.fan_in``).
FAN_IN_HEADER = "state_tasks_fan_in"
#: How long an arrival that claimed the sending of a barrier's ``then`` has to send it
#: before another arrival may (if the claimer died; its own redelivery may at once).
SEND_CLAIM_S = 30.0
#: Compare-and-set rounds before a contended call gives up with a VersionConflict.
MAX_ROUNDS = 16

Token = Annotated[int, Field(strict=True, ge=1, le=MAX_VERSION)]
Expected = Annotated[int, Field(strict=True, ge=1, le=MAX_BARRIER_MEMBERS)]


class LockPayload(KeyPayload):
    """``state::lock``: ``owner`` names the holder (a task id, a host:pid); ``ttl_ms``: the
    lock is free that long after it was taken or last extended."""

    owner: Name
    ttl_ms: TtlMs


class UnlockPayload(KeyPayload):
    """``state::unlock``: the token ``state::lock`` gave."""

    token: Token


class ExtendPayload(KeyPayload):
    """``state::extend``: the token, and the new time to live from now."""

    token: Token
    ttl_ms: TtlMs


class ThenSpec(_Payload):
    """The task a barrier sends once: its name and JSON keyword arguments."""

    task: Name
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ArrivePayload(KeyPayload):
    """``state::arrive``: ``member`` arrives at the barrier ``(scope, key)`` of ``expected``
    members that sends ``then`` once all have arrived. ``error``: the member failed (the
    fan-in helper records its error). ``ttl_ms``: the barrier's keys expire that long after
    its last arrival (default: they stay until deleted)."""

    member: Name
    expected: Expected
    then: ThenSpec
    error: Annotated[str, Field(strict=True, max_length=MAX_ERROR_CHARS)] | None = None
    ttl_ms: TtlMs | None = None


class LockAnswer(BaseModel):
    """What ``state::lock`` returns: ``token`` when ``acquired``; else ``owner`` and
    ``expires_in_ms`` are the holder's."""

    model_config = ConfigDict(frozen=True)

    acquired: bool
    token: int | None = None
    owner: str
    expires_in_ms: int | None


class ArriveAnswer(BaseModel):
    """What ``state::arrive`` returns: the members counted, the members expected, and
    whether this arrival sent the barrier's ``then``."""

    model_config = ConfigDict(frozen=True)

    arrived: int
    expected: int
    fired: bool


@dataclass(frozen=True)
class Held:
    """What a key holds, read with its version: ``kind`` is ``"lock"``, ``"once"``,
    ``"barrier"``, ``"other"`` (a value that is none of them) or ``"absent"``."""

    kind: str
    record: dict[str, Any]
    version: int
    expires_in_ms: int | None

    @property
    def token(self) -> int:
        """A lock's token: named in the record once extended, else the version it has."""
        token = self.record.get("token")
        return token if isinstance(token, int) else self.version


@dataclass(frozen=True)
class Acquired:
    """The outcome of :meth:`Coordinator.acquire`: ``token`` when acquired; else what holds
    the key (``held``)."""

    token: int | None
    held: Held
    expires_in_ms: int | None


def then_task_id(barrier_id: str) -> str:
    """The task id of a barrier's ``then``: the same whoever sends it (a redelivery too)."""
    return str(uuid.uuid5(THEN_NAMESPACE, barrier_id))


def arrived_key(key: str, member: str) -> str:
    """The key recording that ``member`` arrived at the barrier ``key``."""
    return f"{key}{ARRIVED}{member}"


SendTask = Callable[[str, dict[str, Any], str], None]


class Coordinator:
    """The coordination functions over a state service.

    :param service: where the keys live (its adapter, events and operation records).
    :param send_task: ``send_task(name, kwargs, task_id)`` sends a barrier's ``then``;
        ``None``: barriers cannot fire here (``state::arrive`` refuses).
    """

    def __init__(self, service: StateFunctions, send_task: SendTask | None = None) -> None:
        self.service = service
        self.send_task = send_task

    def handlers(self) -> dict[str, Callable[[Mapping[str, Any], str | None], Any]]:
        return {
            "state::lock": self.lock,
            "state::unlock": self.unlock,
            "state::extend": self.extend,
            "state::arrive": self.arrive,
        }

    # -- reading ------------------------------------------------------------------------

    def read(self, scope: str, key: str) -> Held:
        """What ``(scope, key)`` holds, with its version and time to expiry."""
        entry = self.service.call("state::get", {"scope": scope, "key": key, "with_version": True})
        value, version = entry["value"], entry["version"]
        if version == 0:
            return Held("absent", {}, 0, None)
        kind = "other"
        record: dict[str, Any] = {}
        if isinstance(value, dict) and len(value) == 1:
            ((name, inner),) = value.items()
            if name in ("lock", "once", "barrier") and isinstance(inner, dict):
                kind, record = name, inner
        return Held(kind, record, version, entry["expires_in_ms"])

    # -- locks ----------------------------------------------------------------------------

    def acquire(
        self, scope: str, key: str, owner: str, ttl_ms: int, op_id: str | None = None
    ) -> Acquired:
        """Take the lock if it is free, or if ``owner`` holds it already (a redelivered or
        retried holder takes it over with a new token); else say what holds the key."""
        record = {"lock": {"owner": owner, "ttl_ms": ttl_ms}}
        if_version = 0
        for _ in range(MAX_ROUNDS):
            payload = {"scope": scope, "key": key, "value": record, "ttl_ms": ttl_ms}
            try:
                # One operation id for every round: a conflict records nothing, and a
                # redelivery replays the round that took the lock, whichever it was.
                answer = self.service.call(
                    "state::set", payload | {"if_version": if_version}, op_id
                )
            except VersionConflict:
                held = self.read(scope, key)
                if held.kind == "absent":
                    if_version = 0
                    continue
                if held.kind == "lock" and held.record.get("owner") == owner:
                    if_version = held.version
                    continue
                return Acquired(None, held, held.expires_in_ms)
            token = answer["version"]
            return Acquired(token, Held("lock", record["lock"], token, ttl_ms), ttl_ms)
        raise VersionConflict(
            f"state::lock: scope {scope!r} key {key!r} kept changing during {MAX_ROUNDS} "
            "attempts to take the lock; try again"
        )

    def lock(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(LockPayload, payload, "state::lock")
        outcome = self.acquire(request.scope, request.key, request.owner, request.ttl_ms, op_id)
        if outcome.token is not None and op_id is not None:
            # Under an operation id the answer may be a replay of an earlier attempt's (a
            # retry, a redelivery): say what holds the lock now, and for how long.
            outcome = self._still_held(request.scope, request.key, request.owner, outcome)
        if outcome.token is not None:
            return {
                "acquired": True,
                "token": outcome.token,
                "owner": request.owner,
                "expires_in_ms": outcome.expires_in_ms,
            }
        held = outcome.held
        if held.kind != "lock":
            raise ValidationError(
                f"state::lock: scope {request.scope!r} key {request.key!r} holds "
                f"{_describe(held)}, not a lock; use a key of its own for the lock"
            )
        return {
            "acquired": False,
            "owner": held.record.get("owner"),
            "expires_in_ms": held.expires_in_ms,
        }

    def _still_held(self, scope: str, key: str, owner: str, outcome: Acquired) -> Acquired:
        """``outcome`` if its lock is still held by ``owner`` under its token (with the time
        left now); else what holds the key now (not acquired)."""
        held = self.read(scope, key)
        if held.kind == "lock" and held.record.get("owner") == owner:
            if held.token == outcome.token:
                return Acquired(outcome.token, held, held.expires_in_ms)
        if held.kind == "absent":  # expired, or released, since: say so, without a holder
            return Acquired(None, Held("lock", {}, 0, None), None)
        return Acquired(None, held, held.expires_in_ms)

    def unlock(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(UnlockPayload, payload, "state::unlock")
        return {"released": self.release(request.scope, request.key, request.token, op_id)}

    def release(
        self,
        scope: str,
        key: str,
        token: int | None,
        op_id: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """Delete the lock if ``token`` (or, given instead, ``owner``) holds it; ``False``
        if it does not (any more). A redelivered unlock (same ``op_id``) whose delete was
        applied before answers ``True``."""
        for _ in range(MAX_ROUNDS):
            held = self.read(scope, key)
            if not _holds(held, token, owner):
                # The key is not at version ``token`` (else it would hold, or not be a lock):
                # a delete under ``if_version: token`` can only replay this call's own.
                if token is None or op_id is None or held.version == token:
                    return False
                return self._released_before(scope, key, token, op_id)
            try:
                self.service.call(
                    "state::delete",
                    {"scope": scope, "key": key, "if_version": held.version},
                    op_id,  # one id for every round: a conflict records nothing
                )
            except VersionConflict:
                continue
            return True
        return False

    def _released_before(self, scope: str, key: str, token: int, op_id: str | None) -> bool:
        """Whether a redelivered unlock's delete was applied before: its operation id
        replays it (the key is not at version ``token``, so nothing else can be deleted)."""
        try:
            self.service.call(
                "state::delete", {"scope": scope, "key": key, "if_version": token}, op_id
            )
        except VersionConflict:
            return False
        return True

    def extend(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(ExtendPayload, payload, "state::extend")
        for _ in range(MAX_ROUNDS):
            held = self.read(request.scope, request.key)
            if held.kind != "lock" or held.token != request.token:
                return {"extended": False, "expires_in_ms": None}
            record = {"lock": held.record | {"ttl_ms": request.ttl_ms, "token": request.token}}
            try:
                self.service.call(
                    "state::set",
                    {
                        "scope": request.scope,
                        "key": request.key,
                        "value": record,
                        "if_version": held.version,
                        "ttl_ms": request.ttl_ms,
                    },
                    op_id,  # one id for every round: a conflict records nothing
                )
            except VersionConflict:
                continue
            return {"extended": True, "expires_in_ms": request.ttl_ms}
        return {"extended": False, "expires_in_ms": None}

    # -- once-guards --------------------------------------------------------------------

    def finish(
        self, scope: str, key: str, token: int, owner: str, result: Any, remember_ms: int
    ) -> bool:
        """The guarded work of the holder ``token`` is done: replace its lock by the record
        of the first result for ``remember_ms`` (``0``: just release it). ``False`` if the
        lock was no longer held by ``token``."""
        if remember_ms <= 0:
            return self.release(scope, key, token)
        record = {"once": {"done": True, "owner": owner, "result": result}}
        for _ in range(MAX_ROUNDS):
            held = self.read(scope, key)
            if held.kind != "lock" or held.token != token:
                return False
            try:
                self.service.call(
                    "state::set",
                    {
                        "scope": scope,
                        "key": key,
                        "value": record,
                        "if_version": held.version,
                        "ttl_ms": remember_ms,
                    },
                )
            except VersionConflict:
                continue
            return True
        return False

    # -- barriers -----------------------------------------------------------------------

    def arrive(self, payload: Mapping[str, Any], op_id: str | None) -> dict[str, Any]:
        request = parse(ArrivePayload, payload, "state::arrive")
        if self.send_task is None:
            raise ValidationError(
                "state::arrive: this process cannot send a barrier's 'then' task "
                "(call it through a worker)"
            )
        scope, key = request.scope, request.key
        member_key = arrived_key(key, request.member)
        if len(member_key.encode("utf-8", "surrogatepass")) > 1024:
            raise ValidationError(
                f"state::arrive: key and member together are over 1024 bytes "
                f"(the member is recorded as {member_key[:60]!r}...); use shorter names"
            )
        then = request.then.model_dump()
        arrival: dict[str, Any] = {"member": request.member, "ok": request.error is None}
        if request.error is not None:
            arrival["error"] = request.error
        # One operation id for every round (a conflict records nothing): a redelivered
        # arrival replays the round that counted it, whichever it was.
        batch_id = op_id or uuid.uuid4().hex
        member_version = 0  # the member's key must be absent, or this stale version
        for _ in range(MAX_ROUNDS):
            held = self.read(scope, key)
            if held.kind == "absent":
                barrier_id = uuid.uuid4().hex
                barrier = {
                    "expected": request.expected,
                    "then": then,
                    "arrived": 1,
                    "fired": False,
                    "id": barrier_id,
                }
                write: dict[str, Any] = {
                    "op": "set",
                    "key": key,
                    "value": {"barrier": barrier},
                    "if_version": 0,
                }
                if request.ttl_ms is not None:
                    write["ttl_ms"] = request.ttl_ms
                member_ttl = request.ttl_ms
            else:
                _check_barrier(scope, key, held, request.expected, then)
                barrier_id = held.record["id"]
                # An update without ttl_ms keeps the barrier's expiry, fixed at its creation;
                # each member's key goes with it.
                write = {
                    "op": "update",
                    "key": key,
                    "ops": [{"type": "increment", "path": ["barrier", "arrived"], "by": 1}],
                }
                member_ttl = held.expires_in_ms
            member_write: dict[str, Any] = {
                "op": "set",
                "key": member_key,
                "value": arrival | {"barrier": barrier_id},
                "if_version": member_version,
            }
            if member_ttl:
                member_write["ttl_ms"] = member_ttl
            try:
                answer = self.service.call(
                    "state::batch",
                    {"scope": scope, "operations": [member_write, write]},
                    batch_id,
                )
            except VersionConflict as conflict:
                if (conflict.details or {}).get("operation_index") == 0:
                    stale = self._stale_arrival(scope, key, member_key)
                    if stale is None:  # this member arrived at this barrier before
                        return self._arrived_before(scope, key, request.expected, op_id)
                    member_version = stale
                continue  # the barrier was created, removed or renewed meanwhile
            record = (answer["results"][1] or {}).get("new_value")
            count = record["barrier"]["arrived"] if isinstance(record, dict) else None
            if count is None:  # a settled repeat: it counted; see whether the send is due
                return self._arrived_before(scope, key, request.expected, op_id)
            fired = count >= request.expected and self._fire(scope, key, op_id)
            return {"arrived": count, "expected": request.expected, "fired": fired}
        raise VersionConflict(
            f"state::arrive: the barrier at scope {scope!r} key {key!r} kept changing during "
            f"{MAX_ROUNDS} attempts; try again"
        )

    def _stale_arrival(self, scope: str, key: str, member_key: str) -> int | None:
        """``None`` if the member's key records an arrival at the barrier now at ``key``
        (a repeated arrival); else its version (``0``: gone), which this arrival replaces:
        it was left by an earlier barrier of the same key (deleted, or expired)."""
        member = self.service.call(
            "state::get", {"scope": scope, "key": member_key, "with_version": True}
        )
        if member["version"] == 0:
            return 0
        barrier = self.read(scope, key)
        current = barrier.record.get("id") if barrier.kind == "barrier" else None
        value = member["value"]
        if current is not None and isinstance(value, dict) and value.get("barrier") == current:
            return None
        return int(member["version"])

    def _arrived_before(
        self, scope: str, key: str, expected: int, op_id: str | None
    ) -> dict[str, Any]:
        """The answer to an arrival that counted before (a repeated member, or a repeat of
        the arrival itself); it sends ``then`` if that is due and was not sent (the first
        run of a completing arrival died, or could not reach the broker, before sending)."""
        held = self.read(scope, key)
        if held.kind != "barrier":
            return {"arrived": 0, "expected": expected, "fired": False}
        count = held.record.get("arrived", 0)
        fired = count >= expected and not held.record.get("fired") and self._fire(scope, key, op_id)
        return {"arrived": count, "expected": expected, "fired": fired}

    def _fire(self, scope: str, key: str, op_id: str | None) -> bool:
        """Send the barrier's ``then`` if it is complete and not sent, then mark it fired.

        Whoever sends it claims it first (a compare-and-set of the record naming the
        claimer, for :data:`SEND_CLAIM_S`), so that of the arrivals that see it complete at
        once (the last, a repeated member, a redelivery) one sends it. The claimer's own
        repeat (same ``op_id``) may send again; another arrival only once the claim ran out.
        """
        assert self.send_task is not None
        claimer = op_id or uuid.uuid4().hex
        for _ in range(MAX_ROUNDS):
            held = self.read(scope, key)
            record = held.record
            if held.kind != "barrier" or record.get("fired"):
                return False
            if record.get("arrived", 0) < record.get("expected", 0):
                return False
            claim = record.get("sending") or {}
            now = time.time()
            if claim.get("by") not in (None, claimer) and claim.get("until", 0) > now:
                return False  # another arrival is sending it
            try:
                self.service.call(
                    "state::update",
                    {
                        "scope": scope,
                        "key": key,
                        "ops": [
                            {
                                "type": "set",
                                "path": ["barrier", "sending"],
                                "value": {"by": claimer, "until": now + SEND_CLAIM_S},
                            }
                        ],
                        "if_version": held.version,
                    },
                )
            except VersionConflict:
                continue
            then = record["then"]
            try:
                self.send_task(
                    then["task"], dict(then.get("kwargs") or {}), then_task_id(record["id"])
                )
            except Exception as e:  # the broker: the arrival is retried, and sends it then
                raise AdapterUnavailable(
                    f"state::arrive: the barrier at scope {scope!r} key {key!r} is complete "
                    f"but its 'then' task {then['task']!r} could not be sent "
                    f"({type(e).__name__}: {e}); retrying the arrival sends it"
                ) from e
            self.service.call(
                "state::update",
                {
                    "scope": scope,
                    "key": key,
                    "ops": [{"type": "set", "path": ["barrier", "fired"], "value": True}],
                },
            )
            return True
        return False


def _describe(held: Held) -> str:
    if held.kind == "other":
        return "a value"
    return f"a {held.kind} record"


def _holds(held: Held, token: int | None, owner: str | None) -> bool:
    """Whether ``held`` is the lock of ``token`` or of ``owner`` (a once-guard's finished
    record is not a lock: releasing by owner leaves it)."""
    if held.kind != "lock":
        return False
    if token is not None:
        return held.token == token
    return held.record.get("owner") == owner


def _check_barrier(scope: str, key: str, held: Held, expected: int, then: dict[str, Any]) -> None:
    """A later arrival must name the barrier the first one defined."""
    if held.kind != "barrier":
        raise ValidationError(
            f"state::arrive: scope {scope!r} key {key!r} holds {_describe(held)}, "
            "not a barrier; use a key of its own for the barrier"
        )
    if held.record.get("expected") != expected:
        raise ValidationError(
            f"state::arrive: the barrier at scope {scope!r} key {key!r} expects "
            f"{held.record.get('expected')} members (fixed by its first arrival), not {expected}",
            details={"expected": held.record.get("expected")},
        )
    if held.record.get("then") != then:
        raise ValidationError(
            f"state::arrive: the barrier at scope {scope!r} key {key!r} sends "
            f"{held.record.get('then')!r} (fixed by its first arrival), not {then!r}",
            details={"then": held.record.get("then")},
        )


__all__ = [
    "COORDINATION_FUNCTIONS",
    "FAN_IN_HEADER",
    "Acquired",
    "ArriveAnswer",
    "ArrivePayload",
    "Coordinator",
    "ExtendPayload",
    "Held",
    "LockAnswer",
    "LockPayload",
    "ThenSpec",
    "UnlockPayload",
    "arrived_key",
    "then_task_id",
]
