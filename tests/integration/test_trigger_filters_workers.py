"""Declarative trigger filters (``config.when``) through a real worker: handlers run only
for the changes their filter passes, a condition task only for those, and every way of
registering one (``iii.register_trigger`` from a client and in a worker module, the
``state_trigger`` decorator, ``state-tasks triggers add --when``).

The handlers (tests/handlers/filter_handlers.py) keep what they saw in state. As in
test_triggers.py, a change that must fire nothing is followed by a *sentinel*, a change
that must fire: the worker runs one task at a time in queue order, so once the sentinel's
handler has run, anything wrongly sent for the changes before it has run too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Deployment, RedisServer, wait_until

CLI = [os.path.join(os.path.dirname(sys.executable), "state-tasks")]
EMAIL_CHANGED = {"all": [{"event_types": ["state:updated"]}, {"changed": ["email"]}]}


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One worker (one thread, queue order) on the default KvStore with the handlers."""
    made = Deployment(redis_server, tmp_path_factory.mktemp("filters"), None)
    worker = made.worker(includes=("filter_handlers",))
    assert "concurrency: 1 (thread)" in worker.log(), worker.tail()
    yield made
    made.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def seen(deployment: Deployment, scope: str, name: str = "handler") -> list[str]:
    """What the handler ``name`` noted for changes of ``scope`` (sorted, each as many times
    as it was noted)."""
    value = deployment.call("state::get", scope=f"filter-log-{scope}", key=name) or {}
    return sorted(entry for entry, times in value.items() for _ in range(times))


def wait_for(deployment: Deployment, scope: str, entry: str, name: str = "handler") -> list[str]:
    """Wait until ``name`` noted ``entry`` (a sentinel); return all it noted."""
    wait_until(lambda: entry in seen(deployment, scope, name), 20, f"{entry} in {name}")
    return seen(deployment, scope, name)


def condition_calls(deployment: Deployment, scope: str) -> int:
    value = deployment.call("state::get", scope=f"filter-log-{scope}", key="condition")
    return 0 if value is None else int(value["calls"])


def register(deployment: Deployment, when: Any, **config: Any) -> Any:
    return deployment.client.iii.register_trigger(
        {
            "type": "state",
            "function_id": config.pop("function_id", "filters::handler"),
            "config": {**config, "when": when},
        }
    )


def test_a_filtered_handler_runs_only_for_the_changes_that_pass(deployment: Deployment) -> None:
    scope = unique("orders")
    became_paid = {
        "all": [
            {"path": "status", "eq": "paid"},
            {"not": {"path": "status", "of": "old", "eq": "paid"}},
        ]
    }
    handle = register(deployment, became_paid, scope=scope)
    big = register(deployment, {"path": "amount", "gt": 100}, scope=scope, key="big")
    try:
        listed = [t for t in deployment.client.iii.list_triggers() if t["id"] == handle.id]
        assert listed == [
            {
                "id": handle.id,
                "type": "state",
                "function_id": "filters::handler",
                "config": {"scope": scope, "when": became_paid},
            }
        ]
        call = deployment.call
        call("state::set", scope=scope, key="o1", value={"status": "open", "amount": 10})
        call("state::update", scope=scope, key="o1", ops=[{"merge": {"status": "paid"}}])  # yes
        call("state::update", scope=scope, key="o1", ops=[{"merge": {"amount": 20}}])  # still paid
        call("state::set", scope=scope, key="o2", value={"status": "paid"})  # created paid: yes
        call("state::set", scope=scope, key="o3", value={"status": "open"})
        call("state::delete", scope=scope, key="o3")
        call("state::set", scope=scope, key="big", value={"amount": 100})
        call("state::set", scope=scope, key="big", value={"amount": "500"})  # a string
        call("state::set", scope=scope, key="big", value={"amount": 100.5})  # yes (sentinel)
        noted = wait_for(deployment, scope, "state:updated:big")
    finally:
        handle.unregister()
        big.unregister()
    assert sorted(noted) == sorted(["state:updated:o1", "state:created:o2", "state:updated:big"]), (
        noted
    )


def test_a_condition_task_runs_only_for_changes_the_filter_passes(deployment: Deployment) -> None:
    scope = unique("users")
    handle = register(
        deployment,
        EMAIL_CHANGED,
        scope=scope,
        condition_function_id="filters::countingCondition",
    )
    try:
        call = deployment.call
        call("state::set", scope=scope, key="u", value={"email": "a@x", "n": 0})  # created: no
        for n in range(1, 6):  # the same email: no condition task at all
            call("state::set", scope=scope, key="u", value={"email": "a@x", "n": n})
        call("state::set", scope=scope, key="u", value={"email": "b@x", "veto": True})  # cond: no
        call("state::set", scope=scope, key="u", value={"email": "c@x"})  # cond: yes (sentinel)
        noted = wait_for(deployment, scope, "state:updated:u")
    finally:
        handle.unregister()
    assert noted == ["state:updated:u"]
    # Seven changes; the filter passed two; only those two ran the condition
    assert condition_calls(deployment, scope) == 2


def test_filters_on_deletes_and_expiries(deployment: Deployment) -> None:
    scope = unique("sessions")
    gone_pro = {
        "all": [{"event_types": ["state:deleted"]}, {"path": "plan", "of": "old", "eq": "pro"}]
    }
    handle = register(deployment, gone_pro, scope=scope)
    try:
        call = deployment.call
        call("state::set", scope=scope, key="free", value={"plan": "free"}, ttl_ms=200)
        call("state::set", scope=scope, key="pro", value={"plan": "pro"}, ttl_ms=600)
        call("state::set", scope=scope, key="kept", value={"plan": "pro"})
        call("state::set", scope=scope, key="deleted", value={"plan": "pro"})
        call("state::update", scope=scope, key="kept", ops=[{"merge": {"plan": "free"}}])
        call("state::delete", scope=scope, key="deleted")  # yes: reason deleted
        # The free session expires first; the pro one after it is the sentinel
        noted = wait_for(deployment, scope, "state:deleted:pro:expired")
    finally:
        handle.unregister()
    assert noted == ["state:deleted:deleted:deleted", "state:deleted:pro:expired"]
    assert deployment.call("state::list", scope=scope) == [{"plan": "free"}]


def test_triggers_declared_in_a_worker_module_filter_too(deployment: Deployment) -> None:
    listed = {t["function_id"]: t for t in deployment.client.iii.list_triggers()}
    assert listed["filters::decorated"]["config"] == {
        "scope": "filter-decorated",
        "when": {"path": "status", "eq": "paid"},
    }
    assert listed["filters::decoratedTyped"]["config"] == {
        "scope": "filter-decorated-typed",
        "when": {"changed": [["address", "city"]]},
    }
    imported = [
        t
        for t in deployment.client.iii.list_triggers()
        if t["config"].get("scope") == "filter-imported"
    ]
    assert [t["config"]["when"] for t in imported] == [EMAIL_CHANGED]
    call = deployment.call
    key = unique("k")
    # The decorator with a JSON filter
    call("state::set", scope="filter-decorated", key=key, value={"status": "open"})
    call("state::set", scope="filter-decorated", key=key, value={"status": "paid"})
    # The decorator with a typed filter
    city = {"address": {"city": "Oslo"}}
    call("state::set", scope="filter-decorated-typed", key=key, value=city)  # created: yes
    call("state::set", scope="filter-decorated-typed", key=key, value={**city, "n": 1})
    call("state::set", scope="filter-decorated-typed", key=key, value={"address": {"city": "B"}})
    # register_trigger at the module's import
    call("state::set", scope="filter-imported", key=key, value={"email": "a"})
    call("state::set", scope="filter-imported", key=key, value={"email": "a", "n": 1})
    call("state::set", scope="filter-imported", key=key, value={"email": "b"})  # the sentinel
    wait_for(deployment, "filter-imported", f"state:updated:{key}")
    assert [e for e in seen(deployment, "filter-imported") if e.endswith(key)] == [
        f"state:updated:{key}"
    ]
    assert [e for e in seen(deployment, "filter-decorated", "decorated") if e.endswith(key)] == [
        f"state:updated:{key}"
    ]
    assert [
        e for e in seen(deployment, "filter-decorated-typed", "decorated-typed") if e.endswith(key)
    ] == [f"state:created:{key}", f"state:updated:{key}"]


def run_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=deployment.client_env(), capture_output=True, text=True, timeout=120
    )


def test_the_cli_adds_a_filtered_trigger_and_refuses_a_bad_filter(
    deployment: Deployment, tmp_path: Path
) -> None:
    scope = unique("cli")
    added = run_cli(
        deployment,
        "triggers",
        "add",
        "filters::handler",
        "--scope",
        scope,
        "--when",
        json.dumps({"path": ["profile", "plan"], "in": ["pro", "team"]}),
    )
    assert added.returncode == 0, added.stderr
    trigger = json.loads(added.stdout)
    assert trigger["config"] == {
        "scope": scope,
        "when": {"path": ["profile", "plan"], "in": ["pro", "team"]},
    }
    assert trigger["id"].startswith("trg_") and trigger["function_id"] == "filters::handler"
    listed = json.loads(run_cli(deployment, "triggers", "list").stdout)
    assert trigger in listed
    try:
        call = deployment.call
        call("state::set", scope=scope, key="a", value={"profile": {"plan": "free"}})
        call("state::set", scope=scope, key="a", value={"profile": "pro"})  # not an object
        call("state::set", scope=scope, key="b", value={"profile": {"plan": "team"}})
        assert wait_for(deployment, scope, "state:created:b") == ["state:created:b"]
    finally:
        assert run_cli(deployment, "triggers", "remove", trigger["id"]).returncode == 0
    # A bad filter: exit 1, one line naming the part, nothing registered
    bad = run_cli(
        deployment,
        "triggers",
        "add",
        "filters::handler",
        "--scope",
        scope,
        "--when",
        '{"all": [{"changed": ["a"]}, {"path": "x", "eq": 1, "gt": 2}]}',
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stdout == "" and "Traceback" not in bad.stderr
    line = bad.stderr.strip()
    assert "\n" not in line and line.startswith("state-tasks: VALIDATION_ERROR: "), line
    assert "'config.when.all.1'" in line and "exactly one of" in line, line
    unknown = run_cli(deployment, "triggers", "add", "f", "--when", '{"changed": "email"}')
    assert unknown.returncode == 1 and "'config.when.changed'" in unknown.stderr
    not_json = run_cli(deployment, "triggers", "add", "f", "--when", "{changed: [email]}")
    assert not_json.returncode == 2 and "--when" in not_json.stderr
    assert all(
        t["config"].get("scope") != scope
        for t in json.loads(run_cli(deployment, "triggers", "list").stdout)
    )


def test_a_client_refuses_a_bad_filter_before_sending_it(deployment: Deployment) -> None:
    from state_tasks.core.errors import ValidationError

    deep: Any = {"changed": ["a"]}
    for _ in range(10_000):
        deep = {"not": deep}
    for when in (deep, {"path": "x", "eq": float("nan")}, {"any": [{"changed": ["a"]}] * 300}):
        with pytest.raises(ValidationError) as raised:
            register(deployment, when, scope="never")
        assert raised.value.code == "VALIDATION_ERROR" and "'config.when" in raised.value.message
