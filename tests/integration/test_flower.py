"""Flower, started against a private Redis broker, sees the state tasks with readable arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

from state_tasks.contrib.servers import free_port, wait_until


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_flower_shows_state_set_with_its_arguments_and_result(
    kv_deployment: Any, tmp_path: Any
) -> None:
    port = free_port()
    env = kv_deployment.client_env() | {"FLOWER_UNAUTHENTICATED_API": "true"}
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "state_tasks",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def up() -> bool:
            try:
                fetch(f"http://127.0.0.1:{port}/api/workers?refresh=1")
                return True
            except OSError:
                return False

        wait_until(up, 30, "Flower's HTTP API")
        scope = f"flower-{uuid.uuid4().hex[:6]}"
        kv_deployment.call("state::set", scope=scope, key="k", value={"shown": True})

        def found() -> list[dict[str, Any]]:
            tasks = fetch(f"http://127.0.0.1:{port}/api/tasks?taskname=state::set")
            return [
                t
                for t in tasks.values()
                if scope in str(t.get("kwargs")) and t.get("state") == "SUCCESS"
            ]

        wait_until(found, 30, "state::set in Flower")
        (task,) = found()
        assert task["name"] == "state::set"
        assert "'value': {'shown': True}" in task["kwargs"]
        assert "'new_value': {'shown': True}" in task["result"]
    finally:
        flower.terminate()
        flower.wait(10)
