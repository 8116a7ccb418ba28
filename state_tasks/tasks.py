"""The state functions as Celery tasks.

Tasks are thin: they gather their keyword arguments, hand them to the service
(which validates with pydantic and raises :class:`StateError`), and return
JSON-safe data. Every parameter is optional in the Python signature so that a
missing or misspelt one comes back as a ``VALIDATION_ERROR`` that says so,
not as a ``TypeError``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Final

from celery import Task

from state_tasks.celery_app import app
from state_tasks.core.errors import AdapterUnavailable, StateError
from state_tasks.runtime import get_runtime


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final[Any] = _Missing()


#: Retries of a storage that cannot be reached: the n-th waits between half and all of
#: RETRY_BASE_S * 2**n (capped at RETRY_MAX_S), so five retries span 7.75 to 15.5 s.
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0
MAX_RETRIES = 5


def retry_delay_s(retries: int) -> float:
    """Exponential backoff with "equal jitter": never near zero, never in lockstep."""
    ceiling = min(RETRY_MAX_S, RETRY_BASE_S * 2.0**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class StateTask(Task):  # type: ignore[misc]
    """Base of the state tasks: storage connection errors are retried with backoff.

    Only :class:`AdapterUnavailable` is retried (a bad input stays bad); after
    ``MAX_RETRIES`` the caller gets its ``ADAPTER_ERROR``. A retry keeps the task id, so
    the operation id stays the same and nothing is applied twice.
    """

    autoretry_for = (AdapterUnavailable,)
    max_retries = MAX_RETRIES
    #: Expected failures (bad input, storage errors) are the caller's answer: the worker
    #: logs them on one line at INFO, not as an unexpected error with a traceback.
    throws = (StateError,)

    def retry(
        self, *args: Any, countdown: float | None = None, eta: Any = None, **kwargs: Any
    ) -> Any:
        if countdown is None and eta is None:
            countdown = retry_delay_s(self.request.retries)
            if self.app.conf.task_default_queue_type == "quorum":
                # Celery delays a task on quorum queues through RabbitMQ (native delayed
                # delivery) in whole seconds, and refuses (drops) a countdown under one.
                countdown = float(max(1, math.ceil(countdown)))
        return super().retry(*args, countdown=countdown, eta=eta, **kwargs)


RETRY_OPTIONS: dict[str, Any] = {"base": StateTask}


def _call(function_id: str, given: dict[str, Any], op_id: str | None = None) -> Any:
    payload = {name: value for name, value in given.items() if value is not MISSING}
    return get_runtime(app).service.call(function_id, payload, op_id)


def _op_id(task: Task) -> str | None:
    """The task's id: a redelivered or retried task keeps it, so it names the operation."""
    return task.request.id  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::set")
def state_set(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    value: Any = MISSING,
    data: Any = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Store ``value`` (alias ``data``) under ``(scope, key)``; return old and new value."""
    given = {"scope": scope, "key": key, "value": value, "data": data, **extra}
    return _call("state::set", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::get")
def state_get(scope: str = MISSING, key: str = MISSING, **extra: Any) -> Any:
    """Return the value under ``(scope, key)``, or ``None``."""
    return _call("state::get", {"scope": scope, "key": key, **extra})


@app.task(**RETRY_OPTIONS, bind=True, name="state::delete")
def state_delete(self: Task, scope: str = MISSING, key: str = MISSING, **extra: Any) -> Any:
    """Delete ``(scope, key)``; return the deleted value, or ``None``."""
    return _call("state::delete", {"scope": scope, "key": key, **extra}, _op_id(self))


@app.task(**RETRY_OPTIONS, bind=True, name="state::update")
def state_update(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    ops: list[dict[str, Any]] = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Apply update ``ops`` atomically; return ``{old_value, new_value}``."""
    given = {"scope": scope, "key": key, "ops": ops, **extra}
    return _call("state::update", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::list")
def state_list(scope: str = MISSING, **extra: Any) -> Any:
    """Return every value in ``scope`` as a JSON array; with ``limit``, ``cursor``,
    ``prefix`` or ``with_keys``, one page: ``{"items": [...], "cursor": next or None}``."""
    return _call("state::list", {"scope": scope, **extra})


@app.task(**RETRY_OPTIONS, name="state::list_groups")
def state_list_groups(**extra: Any) -> dict[str, Any]:
    """Return ``{"groups": [...]}``: the sorted scopes holding at least one key; with
    ``limit``, ``cursor``, ``prefix`` or ``with_counts``, one page (``{"items", "cursor"}``)."""
    return _call("state::list_groups", extra)  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::batch")
def state_batch(
    self: Task,
    scope: str = MISSING,
    operations: list[dict[str, Any]] = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Apply set/update/delete ``operations`` on one scope in order, all or nothing;
    return ``{"results": [...]}``, one result per operation."""
    given = {"scope": scope, "operations": operations, **extra}
    return _call("state::batch", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::get_many")
def state_get_many(scope: str = MISSING, keys: list[str] = MISSING, **extra: Any) -> list[Any]:
    """Return the values of ``keys`` in their order (``None`` where missing)."""
    return _call("state::get_many", {"scope": scope, "keys": keys, **extra})  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, name="state::changes")
def state_changes(**extra: Any) -> dict[str, Any]:
    """Return ``{"changes": [...], "cursor": c}``: up to ``limit`` entries of the change log
    after the cursor ``after`` (omitted: from the oldest kept), of ``scope`` or of the scopes
    starting with ``prefix``; ``c`` reads on from there."""
    return _call("state::changes", extra)  # type: ignore[no-any-return]


# -- coordination (state_tasks.core.coordination) ---------------------------------------


@app.task(**RETRY_OPTIONS, bind=True, name="state::lock")
def state_lock(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    owner: str = MISSING,
    ttl_ms: int = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Take the lock ``(scope, key)`` for ``owner`` for ``ttl_ms``: ``{"acquired": true,
    "token": n, "owner", "expires_in_ms"}``, or ``{"acquired": false, "owner": holder,
    "expires_in_ms": left}``. Tokens of a lock only grow (fencing tokens)."""
    given = {"scope": scope, "key": key, "owner": owner, "ttl_ms": ttl_ms, **extra}
    return _call("state::lock", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::unlock")
def state_unlock(
    self: Task, scope: str = MISSING, key: str = MISSING, token: int = MISSING, **extra: Any
) -> dict[str, Any]:
    """Release the lock if ``token`` holds it: ``{"released": bool}``."""
    given = {"scope": scope, "key": key, "token": token, **extra}
    return _call("state::unlock", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::extend")
def state_extend(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    token: int = MISSING,
    ttl_ms: int = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """Keep the lock ``ttl_ms`` longer from now if ``token`` holds it:
    ``{"extended": bool, "expires_in_ms": ms or null}``."""
    given = {"scope": scope, "key": key, "token": token, "ttl_ms": ttl_ms, **extra}
    return _call("state::extend", given, _op_id(self))  # type: ignore[no-any-return]


@app.task(**RETRY_OPTIONS, bind=True, name="state::arrive")
def state_arrive(
    self: Task,
    scope: str = MISSING,
    key: str = MISSING,
    member: str = MISSING,
    expected: int = MISSING,
    then: dict[str, Any] = MISSING,
    **extra: Any,
) -> dict[str, Any]:
    """``member`` arrives at the barrier ``(scope, key)``; the arrival of the last of
    ``expected`` distinct members sends ``then`` (``{"task", "kwargs"}``) once:
    ``{"arrived": n, "expected": m, "fired": bool}``."""
    given = {
        "scope": scope,
        "key": key,
        "member": member,
        "expected": expected,
        "then": then,
        **extra,
    }
    return _call("state::arrive", given, _op_id(self))  # type: ignore[no-any-return]
