"""The state-tasks command line, run as a user runs it, against a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from helpers import OUR_VARIABLES, own_db, plain

CLI = [os.path.join(os.path.dirname(sys.executable), "state-tasks")]


def run(deployment: Any, *args: str, broker: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI on the deployment (its broker, results and queue type), or on ``broker`` alone."""
    if broker is None:
        env = deployment.client_env()
    else:
        env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
        env |= {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_every_state_command_round_trips(kv_deployment: Any) -> None:
    scope = f"cli-{uuid.uuid4().hex[:6]}"
    done = run(kv_deployment, "set", scope, "u1", '{"name": "Alice", "n": 1}')
    assert done.returncode == 0, done.stderr
    assert plain(json.loads(done.stdout)) == {
        "old_value": None,
        "new_value": {"name": "Alice", "n": 1},
    }
    assert json.loads(run(kv_deployment, "get", scope, "u1").stdout) == {"name": "Alice", "n": 1}
    updated = run(kv_deployment, "update", scope, "u1", '[{"increment": {"field": "n", "by": 41}}]')
    assert json.loads(updated.stdout)["new_value"]["n"] == 42
    assert json.loads(run(kv_deployment, "list", scope).stdout) == [{"name": "Alice", "n": 42}]
    assert scope in json.loads(run(kv_deployment, "groups").stdout)["groups"]
    assert json.loads(run(kv_deployment, "delete", scope, "u1").stdout) == {
        "name": "Alice",
        "n": 42,
    }
    assert run(kv_deployment, "get", scope, "u1").stdout.strip() == "null"


def test_triggers_list_and_remove(kv_deployment: Any) -> None:
    handle = kv_deployment.client.iii.register_trigger(
        {"type": "state", "function_id": "cli::handler", "config": {"scope": "cli-trig"}}
    )
    listed = json.loads(run(kv_deployment, "triggers", "list").stdout)
    assert {
        "id": handle.id,
        "type": "state",
        "function_id": "cli::handler",
        "config": {"scope": "cli-trig"},
    } in listed
    removed = run(kv_deployment, "triggers", "remove", handle.id)
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"removed": handle.id}
    again = run(kv_deployment, "triggers", "remove", handle.id)
    assert again.returncode == 1 and again.stderr.startswith("state-tasks: no trigger with id")


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_bad_json_is_a_usage_error(kv_deployment: Any) -> None:
    done = run(kv_deployment, "set", "s", "k", "{name: Alice}")
    assert done.returncode == 2
    assert one_line(done).startswith("state-tasks: JSON is not valid JSON")


def test_a_state_error_is_one_line_with_its_code(kv_deployment: Any) -> None:
    scope = f"cli-{uuid.uuid4().hex[:6]}"
    run(kv_deployment, "set", scope, "k", '{"n": "text"}')
    done = run(kv_deployment, "update", scope, "k", '[{"increment": {"field": "n"}}]')
    assert done.returncode == 1
    assert one_line(done).startswith("state-tasks: UPDATE_OP_ERROR: op 0 (increment)")


def test_an_unreachable_broker_fails_fast_with_one_line(kv_deployment: Any) -> None:
    started = time.monotonic()
    done = run(kv_deployment, "--timeout", "5", "get", "s", "k", broker="redis://:pw@127.0.0.1:1/0")
    assert done.returncode == 3
    line = one_line(done)
    assert line.startswith("state-tasks: cannot reach the broker at redis://:***@127.0.0.1:1/0")
    assert time.monotonic() - started < 30


def test_no_worker_answering_is_a_timeout(kv_deployment: Any, redis_server: Any) -> None:
    done = run(kv_deployment, "--timeout", "1", "get", "s", "k", broker=redis_server.url(own_db()))
    assert done.returncode == 3
    assert "did not answer within 1000 ms" in one_line(done)
