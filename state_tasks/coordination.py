"""Coordination for Celery code: :func:`lock`, :func:`once` and :func:`fan_in`.

Built on ``state::lock``, ``state::extend``, ``state::unlock`` and ``state::arrive``
(:mod:`state_tasks.core.coordination`). In a worker (a task taking a lock, a guarded task)
they run in-process on the worker's own storage; anywhere else through the workers, as the
facade does.

- :func:`lock` is a context manager: it takes the lock (waiting up to ``wait_s``), gives
  its fencing token, extends it in the background while the block runs, says when it could
  not (:attr:`Lock.lost`), and releases it on exit.
- :func:`once` guards a Celery task: one run per key at a time (a second call skips or
  waits), and within ``remember_ms`` after a success, the first result instead of a run.
  The guard is released when the body returns or raises, when the task is revoked, and when
  it hits its hard time limit (the worker's main process releases it); a process killed
  outright leaves it to its ``ttl_ms``.
- :func:`fan_in` runs a group of signatures whose members each arrive at a barrier when
  they finish, and the callback once all have: a chord whose join is a state key.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from celery import Celery, Task, current_task, group, signals
from celery.canvas import Signature, _chain, chord
from celery.exceptions import TimeLimitExceeded

from state_tasks.celery_app import app as default_app
from state_tasks.core.coordination import FAN_IN_HEADER
from state_tasks.core.errors import StateError, ValidationError
from state_tasks.facade import III
from state_tasks.runtime import current_runtime

logger = logging.getLogger(__name__)

#: Fan-in member arrivals are derived from the member's task id in this namespace.
FAN_IN_NAMESPACE = uuid.UUID("4c1d0e57-6f0b-4b8e-a3f1-9e2a7d5c8b34")
#: Waiting for a lock polls this often at first, then backs off to ``MAX_POLL_S``.
FIRST_POLL_S = 0.02
MAX_POLL_S = 0.5

P = ParamSpec("P")
R = TypeVar("R")


class NotAcquired(StateError):
    """:func:`lock` (or a waiting :func:`once`) could not take the lock within ``wait_s``;
    ``details`` name the holder (``owner``) and its time left (``expires_in_ms``)."""

    default_code = "NOT_ACQUIRED"


def _call(function_id: str, payload: dict[str, Any], app: Celery | None) -> Any:
    """A state function: in-process in a worker, else through the workers."""
    runtime = current_runtime()
    if runtime is not None:
        return runtime.service.call(function_id, payload)
    return III(app or default_app).trigger({"function_id": function_id, "payload": payload})


def default_owner() -> str:
    """Who takes a lock: the running task's id, else this host and process."""
    task = current_task
    task_id = getattr(getattr(task, "request", None), "id", None) if task else None
    return task_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# -- locks ----------------------------------------------------------------------------------


class _Keeper(threading.Thread):
    """Extends a held lock every third of its ``ttl_ms`` until stopped; sets ``lost`` when
    an extension fails (the lock expired, or another holder has it)."""

    def __init__(self, extend: Callable[[], bool], ttl_ms: int, what: str) -> None:
        super().__init__(name=f"state-tasks-keeper {what}", daemon=True)
        self.extend = extend
        self.every_s = max(ttl_ms / 3000, 0.01)
        self.ttl_s = ttl_ms / 1000
        self.what = what
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        extended_at = time.monotonic()
        while not self.stopped.wait(self.every_s):
            try:
                if self.extend():
                    extended_at = time.monotonic()
                    continue
                logger.warning("%s: the lock was lost (expired, or taken by another)", self.what)
            except Exception as e:
                if time.monotonic() - extended_at < self.ttl_s:
                    logger.warning("%s: could not extend the lock: %s", self.what, e)
                    continue  # the storage may be back before the lock expires
                logger.warning(
                    "%s: the lock was lost: not extended for its whole ttl (%s)", self.what, e
                )
            self.lost.set()
            return

    def stop(self) -> None:
        self.stopped.set()


@dataclass
class Lock:
    """A held lock: its fencing ``token``; :attr:`lost` is set once an extension failed
    (the block may go on without holding it: check it before acting on the resource, or
    hand the token to the resource so that it refuses a stale one)."""

    scope: str
    key: str
    owner: str
    token: int
    ttl_ms: int
    app: Celery | None = field(default=None, repr=False)
    _keeper: _Keeper | None = field(default=None, repr=False)

    @property
    def lost(self) -> bool:
        return self._keeper is not None and self._keeper.lost.is_set()

    def extend(self, ttl_ms: int | None = None) -> bool:
        """Keep the lock ``ttl_ms`` (default: its own) from now; ``False`` if not held."""
        answer = _call(
            "state::extend",
            {
                "scope": self.scope,
                "key": self.key,
                "token": self.token,
                "ttl_ms": ttl_ms or self.ttl_ms,
            },
            self.app,
        )
        return bool(answer["extended"])

    def release(self) -> bool:
        """Release it now; ``False`` if it was not held any more."""
        if self._keeper is not None:
            self._keeper.stop()
        payload = {"scope": self.scope, "key": self.key, "token": self.token}
        return bool(_call("state::unlock", payload, self.app)["released"])


def acquire(
    scope: str,
    key: str,
    *,
    ttl_ms: int = 30_000,
    wait_s: float = 0.0,
    owner: str | None = None,
    app: Celery | None = None,
) -> Lock:
    """Take the lock ``(scope, key)``, waiting up to ``wait_s`` seconds for its holder to
    release it (or to die: its lock is free ``ttl_ms`` after its last extension). Raises
    :class:`NotAcquired` if it cannot."""
    owner = owner or default_owner()
    payload = {"scope": scope, "key": key, "owner": owner, "ttl_ms": ttl_ms}
    deadline = time.monotonic() + wait_s
    pause = FIRST_POLL_S
    while True:
        answer = _call("state::lock", payload, app)
        if answer["acquired"]:
            return Lock(scope, key, owner, answer["token"], ttl_ms, app)
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAcquired(
                f"the lock at scope {scope!r} key {key!r} is held by {answer['owner']!r} "
                f"for {answer['expires_in_ms']} ms more"
                + (f" (waited {wait_s} s)" if wait_s else ""),
                details={"owner": answer["owner"], "expires_in_ms": answer["expires_in_ms"]},
            )
        time.sleep(min(pause, left, (answer["expires_in_ms"] or 0) / 1000 or pause))
        pause = min(pause * 2, MAX_POLL_S)


@contextmanager
def lock(
    scope: str,
    key: str,
    *,
    ttl_ms: int = 30_000,
    wait_s: float = 0.0,
    owner: str | None = None,
    keep: bool = True,
    app: Celery | None = None,
) -> Iterator[Lock]:
    """Hold the lock ``(scope, key)`` for a block::

        with state_tasks.lock("reports", "daily", ttl_ms=30_000, wait_s=5) as held:
            write_report(fencing_token=held.token)

    ``keep``: extend it every ``ttl_ms / 3`` while the block runs (:attr:`Lock.lost` says
    when that failed). Released on exit, also when the block raises."""
    held = acquire(scope, key, ttl_ms=ttl_ms, wait_s=wait_s, owner=owner, app=app)
    if keep:
        held._keeper = _Keeper(held.extend, ttl_ms, f"lock {scope!r}/{key!r}")
        held._keeper.start()
    try:
        yield held
    finally:
        try:
            held.release()
        except Exception as e:  # the block's own error matters more; the TTL frees it
            logger.warning(
                "could not release the lock at scope %r key %r (free in %s ms): %s",
                scope,
                key,
                ttl_ms,
                e,
            )


# -- tasks that run once --------------------------------------------------------------------


@dataclass(frozen=True)
class OncePolicy:
    """How :func:`once` guards a task (see there)."""

    key: str | Callable[..., str] | None
    scope: str
    ttl_ms: int
    running: Literal["skip", "wait"]
    remember_ms: int
    wait_s: float | None

    def key_of(
        self, fn: Callable[..., Any], task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> str:
        """The guard's key for one call."""
        call_args = tuple(args)
        positional = call_args
        if _takes_self(fn):
            # A bound task (bind=True): its body gets the task first, and the worker's
            # request (a revoke, a time limit) the call's own arguments only.
            if call_args and isinstance(call_args[0], Task):
                call_args = call_args[1:]
            positional = (None, *call_args)
        if callable(self.key):
            return str(self.key(*call_args, **kwargs))
        bound = inspect.signature(fn).bind_partial(*positional, **kwargs)
        bound.apply_defaults()
        if isinstance(self.key, str):
            try:
                return self.key.format(**bound.arguments)
            except (KeyError, IndexError) as e:
                raise ValidationError(
                    f"once: the key {self.key!r} names {e}, which is not an argument of {task_name}"
                ) from None
        try:
            text = json.dumps([list(call_args), dict(kwargs)], sort_keys=True)
        except (TypeError, ValueError):
            raise ValidationError(
                f"once: the arguments of {task_name} are not JSON; give the guard a key "
                "(key='...{name}...' or a function of the arguments)"
            ) from None
        return f"{task_name}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _takes_self(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is the body of a bound task (its first parameter is ``self``)."""
    parameters = list(inspect.signature(fn).parameters)
    return bool(parameters) and parameters[0] == "self"


def skipped(reason: str, scope: str, key: str, holder: Any) -> dict[str, Any]:
    """What a guarded task returns when it did not run: ``reason`` is ``"running"``."""
    return {"skipped": True, "reason": reason, "scope": scope, "key": key, "holder": holder}


def once(
    key: str | Callable[..., str] | None = None,
    *,
    scope: str = "once",
    ttl_ms: int = 60_000,
    running: Literal["skip", "wait"] = "skip",
    remember_ms: int = 0,
    wait_s: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R | dict[str, Any]]]:
    """Guard a Celery task so that one run per key is under way at a time::

        @app.task
        @state_tasks.once(key="report:{account}", remember_ms=600_000)
        def report(account): ...

    ``key``: a template of the task's arguments, a function of them, or (``None``) the task's
    name and all its arguments. ``running``: a call while another runs ``"skip"``s (returns
    :func:`skipped` with ``reason "running"``) or ``"wait"``s up to ``wait_s`` (default
    ``ttl_ms``) and raises :class:`NotAcquired` after. ``remember_ms``: after a success, calls
    within this window do not run and return the first result (JSON); ``0``: the next call
    runs. The guard is a lock at ``(scope, key)`` held for ``ttl_ms`` and extended while the
    body runs; a redelivery of the same task (same task id) takes it over."""
    if running not in ("skip", "wait"):
        raise ValidationError(f"once: running must be 'skip' or 'wait', got {running!r}")
    policy = OncePolicy(key, scope, ttl_ms, running, remember_ms, wait_s)

    def decorate(fn: Callable[P, R]) -> Callable[P, R | dict[str, Any]]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | dict[str, Any]:
            task = current_task
            name = getattr(task, "name", None) or fn.__qualname__
            key = policy.key_of(fn, name, args, kwargs)
            answer: R | dict[str, Any] = _run_once(policy, key, fn, args, kwargs)
            return answer

        guarded.__state_tasks_once__ = (policy, fn)  # type: ignore[attr-defined]
        return guarded

    return decorate


def _run_once(policy: OncePolicy, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    runtime = current_runtime()
    if runtime is None:
        raise ValidationError(
            "once: a guarded task runs in a state_tasks worker (celery -A state_tasks worker)"
        )
    coordinator = runtime.service.coordinator
    owner = default_owner()
    deadline = time.monotonic() + (
        policy.wait_s if policy.wait_s is not None else policy.ttl_ms / 1000
    )
    pause = FIRST_POLL_S
    while True:
        got = coordinator.acquire(policy.scope, key, owner, policy.ttl_ms)
        if got.token is not None:
            break
        held = got.held
        if held.kind == "once":
            return held.record.get("result")
        if held.kind not in ("lock", "absent"):
            raise ValidationError(
                f"once: scope {policy.scope!r} key {key!r} holds a value that is not a "
                "guard; give the guard a key of its own"
            )
        if policy.running == "skip":
            return skipped("running", policy.scope, key, held.record.get("owner"))
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAcquired(
                f"once: {key!r} is still running under {held.record.get('owner')!r}",
                details={"owner": held.record.get("owner"), "expires_in_ms": held.expires_in_ms},
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, MAX_POLL_S)
    token = got.token

    def extend() -> bool:
        payload = {"scope": policy.scope, "key": key, "token": token, "ttl_ms": policy.ttl_ms}
        return bool(coordinator.extend(payload, None)["extended"])

    keeper = _Keeper(extend, policy.ttl_ms, f"once {policy.scope!r}/{key!r}")
    keeper.start()
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        keeper.stop()
        _quietly(coordinator.release, policy.scope, key, token)
        raise
    keeper.stop()
    kept = result if _is_json(result) else None
    try:
        coordinator.finish(policy.scope, key, token, owner, kept, policy.remember_ms)
    except StateError as e:  # too large to keep (VALUE_TOO_LARGE), or the storage
        logger.warning("once: could not keep the result of %r (%s); remembering none", key, e)
        _quietly(coordinator.finish, policy.scope, key, token, owner, None, policy.remember_ms)
    return result


def _quietly(step: Callable[..., Any], *args: Any) -> None:
    """Release or finish a guard; a storage failure leaves it to its ``ttl_ms``."""
    try:
        step(*args)
    except Exception as e:
        logger.warning("once: could not release the guard %r (free at its ttl): %s", args[:2], e)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _release_dead(task: Any, task_id: str | None, args: Any, kwargs: Any) -> None:
    """Release the guard of a task that was revoked or hit its hard time limit (the body's
    own ``finally`` never ran: its process was killed)."""
    guard = getattr(getattr(task, "run", None), "__state_tasks_once__", None)
    if guard is None or not task_id:
        return
    policy, fn = guard
    try:
        key = policy.key_of(fn, task.name, args or (), kwargs or {})
        runtime = current_runtime()
        if runtime is None:
            return
        runtime.service.coordinator.release(policy.scope, key, None, owner=task_id)
    except Exception as e:
        logger.warning("once: could not release the guard of %s[%s]: %s", task.name, task_id, e)


def _on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    if isinstance(exception, TimeLimitExceeded):  # sent by the worker's main process
        _release_dead(sender, task_id, args, kwargs)
        spec = _members_received.pop(task_id or "", None)
        if spec is not None and task_id:
            _send_arrival(task_id, spec, f"TimeLimitExceeded: {exception}")
        return
    _fan_in_arrive(sender, exception)


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    _release_dead(sender, request.id, request.args, request.kwargs)
    spec = getattr(request, FAN_IN_HEADER, None)
    if spec:
        _send_arrival(request.id, spec, "revoked")


# -- fan-in ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanIn:
    """A started fan-in: the barrier's ``scope`` and ``key``, and the members' task ids."""

    scope: str
    key: str
    task_ids: list[str]

    def status(self, app: Celery | None = None) -> dict[str, Any]:
        """The barrier's record: ``{"expected", "arrived", "fired", "then", "id"}`` (empty
        before the first arrival)."""
        value = _call("state::get", {"scope": self.scope, "key": self.key}, app)
        return dict(value["barrier"]) if isinstance(value, dict) and "barrier" in value else {}


def fan_in(
    members: Sequence[Any],
    then: Any,
    *,
    scope: str = "fan_in",
    key: str | None = None,
    ttl_ms: int | None = 7 * 24 * 3600 * 1000,
    app: Celery | None = None,
) -> FanIn:
    """Run ``members`` (Celery signatures) and, once every one has finished, ``then`` (a
    signature with keyword arguments only), exactly once::

        fan_in([resize.s(path=p) for p in paths], publish.s(album="summer"))

    Each member arrives at the barrier ``(scope, key)`` when it finishes: on success, or on
    failure (its error is recorded at ``<key>/arrived/<n>``) or revoke; a retried member
    arrives once, when it is done. Members must run on state_tasks workers (their arrival is
    made by the worker that ran them, in the same process). ``ttl_ms``: the barrier's keys
    are removed that long after its last arrival (``None``: kept)."""
    celery = app or default_app
    if not members:
        raise ValidationError("fan_in: give at least one member")
    then_name = getattr(then, "task", None)
    if not then_name or tuple(getattr(then, "args", None) or ()):
        raise ValidationError(
            "fan_in: 'then' must be a signature with keyword arguments only "
            f"(publish.s(album='x')), got {then!r}"
        )
    kwargs = dict(then.kwargs or {})
    if not _is_json(kwargs):
        raise ValidationError("fan_in: the keyword arguments of 'then' must be JSON")
    key = key or uuid.uuid4().hex
    spec_base: dict[str, Any] = {
        "scope": scope,
        "key": key,
        "expected": len(members),
        "then": {"task": then_name, "kwargs": kwargs},
    }
    if ttl_ms is not None:
        spec_base["ttl_ms"] = ttl_ms
    for member in members:
        if not isinstance(member, Signature) or isinstance(member, (_chain, group, chord)):
            raise ValidationError(
                "fan_in: each member must be one task's signature (task.s(...)); a chain, "
                f"group or chord would arrive before all of its tasks ran, got {member!r}"
            )
    signatures = []
    for index, member in enumerate(members):
        signature = member.clone()
        signature.set(headers={FAN_IN_HEADER: spec_base | {"member": str(index)}})
        signature.set(task_id=signature.options.get("task_id") or str(uuid.uuid4()))
        signatures.append(signature)
    group(signatures, app=celery).apply_async(add_to_parent=False)
    return FanIn(scope, key, [s.options["task_id"] for s in signatures])


def _fan_in_spec(task: Any) -> dict[str, Any] | None:
    request = getattr(task, "request", None)
    spec = getattr(request, FAN_IN_HEADER, None) if request is not None else None
    if spec is None and request is not None:
        spec = (getattr(request, "headers", None) or {}).get(FAN_IN_HEADER)
    return spec if isinstance(spec, dict) else None


def _on_postrun(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    if state == "SUCCESS":
        _fan_in_arrive(sender, None)


def _fan_in_arrive(task: Any, exception: BaseException | None) -> None:
    """A fan-in member finished (``exception``: it failed): it arrives, in this process
    when it can, else by a message the workers retry."""
    spec = _fan_in_spec(task)
    if spec is None:
        return
    task_id = task.request.id
    error = None if exception is None else f"{type(exception).__name__}: {exception}"
    runtime = current_runtime()
    arrival_id = str(uuid.uuid5(FAN_IN_NAMESPACE, task_id))
    if runtime is not None:
        try:
            payload = spec | ({} if error is None else {"error": error[:2000]})
            runtime.service.call("state::arrive", payload, arrival_id)
            return
        except Exception as e:
            logger.warning(
                "fan-in member %s could not arrive in-process (sent instead): %s", task_id, e
            )
    _send_arrival(task_id, spec, error)


#: In a worker's main process, the fan-in members it received, by task id (the newest
#: :data:`MAX_MEMBERS_REMEMBERED`): the main process makes a member killed at its hard time
#: limit arrive, and the signal that says so carries no headers.
_members_received: OrderedDict[str, dict[str, Any]] = OrderedDict()
MAX_MEMBERS_REMEMBERED = 10_000


def _on_received(request: Any = None, **_: Any) -> None:
    spec = (getattr(request, "request_dict", None) or {}).get(FAN_IN_HEADER)
    if isinstance(spec, dict) and getattr(request, "id", None):
        _members_received[request.id] = spec
        while len(_members_received) > MAX_MEMBERS_REMEMBERED:
            _members_received.popitem(last=False)


signals.task_received.connect(_on_received, weak=False)
signals.task_failure.connect(_on_failure, weak=False)
signals.task_revoked.connect(_on_revoked, weak=False)
signals.task_postrun.connect(_on_postrun, weak=False)


def _send_arrival(task_id: str, spec: dict[str, Any], error: str | None) -> None:
    payload = spec | ({} if error is None else {"error": error[:2000]})
    try:
        default_app.send_task(
            "state::arrive",
            kwargs=payload,
            task_id=str(uuid.uuid5(FAN_IN_NAMESPACE, task_id)),
            add_to_parent=False,
        )
    except Exception as e:
        logger.error(
            "fan-in member %s could not arrive at scope %r key %r: %s",
            task_id,
            spec.get("scope"),
            spec.get("key"),
            e,
        )


__all__ = [
    "FAN_IN_HEADER",
    "FanIn",
    "Lock",
    "NotAcquired",
    "OncePolicy",
    "acquire",
    "default_owner",
    "fan_in",
    "lock",
    "once",
    "skipped",
]
