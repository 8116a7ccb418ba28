"""The coordination helpers' pure parts: a once-guard's key, and what ``once`` and
``fan_in`` refuse before anything is sent or stored (tests/conformance/test_coordination.py
and tests/integration/test_coordination_workers.py test the rest, on real storage)."""

from __future__ import annotations

from typing import Any

import pytest

from state_tasks import app, fan_in, once
from state_tasks.coordination import OncePolicy, skipped
from state_tasks.core.coordination import ArriveAnswer, LockAnswer, arrived_key, then_task_id
from state_tasks.core.errors import ValidationError


def report(account: str, month: int = 1) -> None: ...


def bound_report(self: Any, account: str, month: int = 1) -> None: ...


def policy(key: Any) -> OncePolicy:
    return OncePolicy(key, "once", 1000, "skip", 0, None)


def test_a_guards_key_is_its_template_its_function_or_the_whole_call() -> None:
    assert policy("r:{account}:{month}").key_of(report, "t", ("acme",), {}) == "r:acme:1"
    assert policy("r:{account}").key_of(report, "t", (), {"account": "x", "month": 2}) == "r:x"
    assert (
        policy(lambda account, month=1: f"{account}/{month}").key_of(
            report, "t", ("a",), {"month": 3}
        )
        == "a/3"
    )
    whole = policy(None)
    first = whole.key_of(report, "tasks.report", ("acme",), {"month": 2})
    assert first.startswith("tasks.report:")
    assert first == whole.key_of(report, "tasks.report", ("acme",), {"month": 2})
    assert first != whole.key_of(report, "tasks.report", ("acme",), {"month": 3})
    with pytest.raises(ValidationError, match=r"'year'.*not an argument of t"):
        policy("r:{year}").key_of(report, "t", ("acme",), {})


def test_a_bound_tasks_key_is_the_same_in_its_body_and_in_the_workers_request() -> None:
    # In the body the task comes first; a revoke or a time limit (the worker's main
    # process) sees the message's arguments only: both give the same guard.
    from state_tasks.tasks import state_get as task

    for key in ("r:{account}:{month}", None, lambda account, month=1: f"{account}-{month}"):
        in_body = policy(key).key_of(bound_report, "t", (task, "acme"), {"month": 2})
        from_request = policy(key).key_of(bound_report, "t", ("acme",), {"month": 2})
        assert in_body == from_request
    with pytest.raises(ValidationError, match="not JSON"):
        policy(None).key_of(report, "t", (object(),), {})


def test_once_and_fan_in_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ValidationError, match="running must be 'skip' or 'wait'"):
        once(running="queue")  # type: ignore[arg-type]
    member = app.signature("x::member", kwargs={"n": 1})
    with pytest.raises(ValidationError, match="at least one member"):
        fan_in([], app.signature("x::then"))
    with pytest.raises(ValidationError, match="keyword arguments only"):
        fan_in([member], app.signature("x::then", args=(1,)))
    with pytest.raises(ValidationError, match="must be JSON"):
        fan_in([member], app.signature("x::then", kwargs={"when": object()}))
    with pytest.raises(ValidationError, match="one task's signature"):
        fan_in([member | app.signature("x::next")], app.signature("x::then"))


def test_the_answers_and_names() -> None:
    assert skipped("running", "once", "k", "t1") == {
        "skipped": True,
        "reason": "running",
        "scope": "once",
        "key": "k",
        "holder": "t1",
    }
    assert arrived_key("album", "7") == "album/arrived/7"
    assert then_task_id("b1") == then_task_id("b1") != then_task_id("b2")
    assert (
        LockAnswer.model_validate({"acquired": False, "owner": "w", "expires_in_ms": 5}).token
        is None
    )
    assert ArriveAnswer(arrived=1, expected=2, fired=False).fired is False
