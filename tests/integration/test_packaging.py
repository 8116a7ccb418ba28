"""The package's settings travel with it: a project's celeryconfig.py cannot replace them,
``CELERY_CONFIG_MODULE`` is the one way to override them, and the pytest plugin users get
starts working workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis
from helpers import (
    HANDLERS,
    OUR_VARIABLES,
    Client,
    Deployment,
    RedisServer,
    Worker,
    own_db,
    wait_until,
)

#: Our own Redis dbs on the session's server.
PLUGIN_BROKER_DB = own_db()
PLUGIN_RECORD_DB = own_db()

FOREIGN_CELERYCONFIG = """
# Another project's celeryconfig.py, in the folder the worker starts from.
import pathlib
pathlib.Path(__file__).with_name("foreign-celeryconfig-was-imported").touch()

task_acks_late = False
worker_pool = "prefork"
task_serializer = "pickle"
"""


def worker_conf(client: Client, timeout_s: float = 30) -> dict[str, Any]:
    """The settings the worker on the client's broker (its only one) reports, by remote control."""
    replies: dict[str, Any] = {}

    def answered() -> bool:
        nonlocal replies
        inspect = client.app.control.inspect(timeout=2, limit=1)
        replies = inspect.conf(with_defaults=True) or {}
        return bool(replies)

    wait_until(answered, timeout_s, "the worker to answer inspect conf", interval_s=0.2)
    conf: dict[str, Any] = next(iter(replies.values()))
    return conf


def round_trip(deployment: Deployment, scope: str) -> None:
    assert deployment.call("state::set", scope=scope, key="k", value={"n": 1}) == {
        "old_value": None,
        "new_value": {"n": 1},
        "version": 1,
    }
    assert deployment.call("state::get", scope=scope, key="k") == {"n": 1}


def test_a_foreign_celeryconfig_in_the_worker_folder_changes_nothing(
    deployment_factory: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("CELERY_CONFIG_MODULE", raising=False)
    # Given a folder holding another project's celeryconfig.py (importable from there)
    deployment = deployment_factory(name="foreign")
    (deployment.workdir / "celeryconfig.py").write_text(FOREIGN_CELERYCONFIG)
    # When a worker on the default KvStore starts there
    worker = deployment.worker()
    # Then it runs with the package's settings: the threads pool the KvStore needs (a
    # prefork pool would have refused to start), late acks, JSON only
    assert "(thread)" in worker.log(), worker.tail()
    conf = worker_conf(deployment.client)
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_pool"] == "threads"
    assert conf["task_serializer"] == "json"
    assert not (deployment.workdir / "foreign-celeryconfig-was-imported").exists()
    round_trip(deployment, f"foreign-{uuid.uuid4().hex[:8]}")


def test_celery_config_module_overrides_the_package_settings(
    deployment_factory: Any, tmp_path: Path
) -> None:
    # Given a module of overrides in a folder on the worker's Python path
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    (overrides / "my_state_overrides.py").write_text("import os\n\nresult_expires = 1234\n")
    deployment = deployment_factory(name="overridden")
    worker = Worker(
        deployment.workdir,
        {**deployment.env, "CELERY_CONFIG_MODULE": "my_state_overrides"},
        pythonpath=[overrides],
    )
    deployment.workers.append(worker)  # stopped with the deployment
    # When the worker starts with CELERY_CONFIG_MODULE naming it
    worker.start()
    # Then the override applies, on top of the package's settings that it leaves alone
    conf = worker_conf(deployment.client)
    assert conf["result_expires"] == 1234
    assert conf["task_acks_late"] is True
    assert conf["worker_pool"] == "threads"
    round_trip(deployment, f"overridden-{uuid.uuid4().hex[:8]}")


def test_a_celery_config_module_that_cannot_be_imported_stops_the_worker(
    deployment_factory: Any,
) -> None:
    deployment = deployment_factory(name="missing-overrides")
    worker = deployment.worker(start=False, CELERY_CONFIG_MODULE="no_such_overrides_module")
    code, log = worker.run_to_exit()
    assert code != 0, log
    assert "CELERY_CONFIG_MODULE='no_such_overrides_module'" in log, log
    assert "cannot import the module of Celery overrides" in log, log
    assert " ready." not in log


def test_the_readme_command_finds_overrides_in_the_current_folder(tmp_path: Path) -> None:
    # docs/configuration.md: CELERY_CONFIG_MODULE=celeryconfig celery -A state_tasks worker   # ./celeryconfig.py
    (tmp_path / "my_folder_overrides.py").write_text("result_expires = 4321\n")
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES and k != "PYTHONPATH"}
    env["CELERY_CONFIG_MODULE"] = "my_folder_overrides"
    celery = Path(sys.executable).with_name("celery")  # the console script, as users run it
    done = subprocess.run(
        [str(celery), "-A", "state_tasks", "report"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result_expires: 4321" in done.stdout


def test_the_pytest_plugin_starts_a_worker_whose_triggers_fire(
    state_worker: Any, redis_server: RedisServer
) -> None:
    # Given a worker from the plugin's state_worker fixture, loading a handler module
    record_url = redis_server.url(PLUGIN_RECORD_DB)
    record = redis.Redis.from_url(record_url, decode_responses=True)
    record.delete("record:decorated")
    broker = redis_server.url(PLUGIN_BROKER_DB)
    worker = state_worker(
        includes=("trigger_handlers",),
        pythonpath=[HANDLERS],
        db=PLUGIN_BROKER_DB,
        RECORD_REDIS_URL=record_url,
    )
    client = Client(broker, broker)
    try:
        # When a service sets a key the handler's trigger watches
        value = {"from": "plugin", "id": uuid.uuid4().hex}
        assert client.call("state::set", scope="decorated", key="k", value=value) == {
            "old_value": None,
            "new_value": value,
            "version": 1,
        }
        # Then the handler ran on that worker with the change's event
        wait_until(
            lambda: record.llen("record:decorated") >= 1,
            20,
            f"the decorated handler to run:\n{worker.tail()}",
        )
        event = json.loads(record.lindex("record:decorated", 0) or "{}")
        assert event["event_type"] == "state:created"
        assert (event["scope"], event["key"], event["new_value"]) == ("decorated", "k", value)
    finally:
        client.close()


#: A service's own modules with the generic names a project picks (state_tasks installs
#: none of them: everything it has is under state_tasks.*).
PROJECT_MODULES = {
    "triggers.py": "raise ImportError('the project triggers.py was imported')\n",
    "adapters/__init__.py": "raise ImportError('the project adapters package was imported')\n",
    "tasks.py": "raise ImportError('the project tasks.py was imported')\n",
    "settings.py": "raise ImportError('the project settings.py was imported')\n",
}


def test_a_project_with_its_own_triggers_adapters_tasks_and_settings_modules_works(
    deployment_factory: Any,
) -> None:
    # Given a service folder holding its own triggers.py, adapters/, tasks.py and settings.py
    # (each fails loudly if imported), first on sys.path as Celery puts the working folder
    deployment = deployment_factory(name="own-modules")
    for name, text in PROJECT_MODULES.items():
        path = deployment.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # When a worker starts there and a client in the same folder calls the state functions
    worker = deployment.worker()
    round_trip(deployment, f"own-modules-{uuid.uuid4().hex[:8]}")
    script = (
        "import state_tasks.tasks, state_tasks.triggers.registry, state_tasks.worker\n"
        "from state_tasks.adapters.kv_store import KvStore\n"
        "print('state_tasks imported')\n"
        "import triggers\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=deployment.workdir,
        env={k: v for k, v in os.environ.items() if k not in OUR_VARIABLES and k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the worker ran them with none of the project's modules imported, and in that
    # folder state_tasks imports whole while `triggers` is the project's own module
    assert "was imported" not in worker.log(), worker.tail()
    assert done.stdout == "state_tasks imported\n", done.stdout + done.stderr
    assert "ImportError: the project triggers.py was imported" in done.stderr, done.stderr
