"""The runnable examples, run as a user runs them, against real workers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from helpers import REPO


def run_example(deployment: Any, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        env=deployment.client_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=deployment.workdir,
    )


def test_counter_loses_no_increment_on_redis_workers(redis_deployment: Any) -> None:
    done = run_example(redis_deployment, "counter.py", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final value: {'n': 300}" in done.stdout


def test_conditional_email_sends_exactly_one(deployment_factory: Any) -> None:
    deployment = deployment_factory()
    deployment.worker(includes=("profile_handlers",))
    done = run_example(deployment, "conditional_email.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification emails sent for the new address: 1" in done.stdout
    assert "for the old address: 0" in done.stdout


def test_filtered_email_sends_exactly_one_without_a_condition_task(
    deployment_factory: Any,
) -> None:
    deployment = deployment_factory()
    deployment.worker(includes=("profile_handlers",))
    done = run_example(deployment, "filtered_email.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verification emails sent for the new address: 1" in done.stdout
    assert "for the old address: 0" in done.stdout
    assert "'when': {'all': [{'event_types': ['state:updated']}" in done.stdout


def test_user_profile_example_on_a_redis_broker(deployment_factory: Any) -> None:
    deployment = deployment_factory()
    deployment.worker(includes=("profile_handlers",))
    done = run_example(deployment, "user_profile.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "triggers fired as expected" in done.stdout
