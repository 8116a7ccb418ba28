"""How a worker starts: the embedded default, bad configs, and setups that would split a KvStore."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import OUR_VARIABLES, REPO, Client, Worker, own_db


def test_embedded_default_runs_the_user_profile_example_with_no_server(tmp_path: Path) -> None:
    # Given a worker and a client in the same folder, with no broker, backend or Redis configured
    env = {"PYTHONPATH": str(REPO / "examples"), "PYTHONUNBUFFERED": "1"}
    worker = Worker(tmp_path, {}, includes=("profile_handlers",), pythonpath=[REPO / "examples"])
    worker.start()
    try:
        # When the example runs there
        client_env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES} | env
        done = subprocess.run(
            [sys.executable, str(REPO / "examples" / "user_profile.py")],
            cwd=tmp_path,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.stop()
    # Then every call answered and the triggers fired, through files under ./data
    assert done.returncode == 0, done.stdout + done.stderr + worker.tail()
    assert "triggers fired as expected" in done.stdout
    assert '"theme": "dark"' in done.stdout
    assert "Connected to statefs://" in worker.log()
    assert (tmp_path / "data" / "broker" / "queue").is_dir()
    assert (tmp_path / "data" / "results").is_dir()
    assert "Verification email sent to alice@new.example.com" in worker.log()


def test_bad_state_yaml_stops_the_worker_with_one_clear_message(deployment_factory: Any) -> None:
    deployment = deployment_factory(
        "modules:\n  - class: modules::state::StateModule\n    config:\n      adapter:\n"
        "        class: kv\n        config: {store_method: on_paper}\n"
    )
    worker = deployment.worker(start=False)
    code, log = worker.run_to_exit()
    assert code != 0
    assert "state.yaml: modules[0].config.adapter.config.store_method:" in log
    assert "on_paper" in log


def test_kvstore_refuses_the_prefork_pool(deployment_factory: Any) -> None:
    deployment = deployment_factory()
    # (Celery's own CLI cannot tell "--pool prefork" from its default, so the pool is
    # chosen through the configuration, as a deployment would.)
    worker = deployment.worker("--concurrency", "2", start=False, CELERY_WORKER_POOL="prefork")
    code, log = worker.run_to_exit()
    assert code != 0
    assert "keeps its data inside one process" in log
    assert "--pool threads" in log


def test_kvstore_worker_defaults_to_the_threads_pool(kv_deployment: Any) -> None:
    assert "(thread)" in kv_deployment.workers[0].log()


def test_a_second_in_memory_worker_on_the_same_broker_is_refused(deployment_factory: Any) -> None:
    # Given a worker serving an in-memory KvStore on a broker
    deployment = deployment_factory()
    owner = deployment.worker()
    # When a second one starts on the same broker
    code, log = deployment.worker(start=False).run_to_exit()
    # Then it stops with a message naming the first, which keeps serving
    assert code != 0
    assert f"worker {owner.name}@" in log and "already serves a KvStore on this broker" in log
    deployment.call("state::set", scope="s", key="k", value=1)
    assert deployment.call("state::get", scope="s", key="k") == 1


def test_a_second_worker_on_the_same_embedded_broker_is_refused(tmp_path: Path) -> None:
    first = Worker(tmp_path, {}).start()
    assert first.process is not None
    pid = first.process.pid
    try:
        code, log = Worker(tmp_path, {}).run_to_exit()
    finally:
        first.stop()
    assert code != 0
    assert f"another worker (pid {pid}) already serves the embedded broker" in log


def test_only_redis_url_makes_redis_the_broker_and_backend(
    redis_server: Any, tmp_path: Path
) -> None:
    db = own_db()
    url = redis_server.url(db)
    worker = Worker(tmp_path, {"REDIS_URL": url}).start()
    try:
        client = Client(url, url)
        assert client.call("state::set", scope="r", key="k", value=1) == {
            "old_value": None,
            "new_value": 1,
            "version": 1,
        }
        assert client.call("state::get", scope="r", key="k") == 1
        client.close()
        assert f"Connected to redis://:**@127.0.0.1:{redis_server.port}/{db}" in worker.log()
        assert f"results:     redis://127.0.0.1:{redis_server.port}/{db}" in worker.log()
        assert not (tmp_path / "data").exists()  # nothing of the embedded default
    finally:
        worker.stop()
