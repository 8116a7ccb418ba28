"""Every module imports alone, and the Celery-free layers load no Celery.

Each import runs in a fresh interpreter (an import that only works after some other
module was imported, or a cycle, shows up nowhere else), in an empty folder and without
our environment variables, so no ``./state.yaml``, ``./data`` or broker setting plays a
part. Modules are discovered from the files, so a new module is covered on its own.
The interpreters run side by side; the whole file takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The packages this project installs.
PACKAGES = ("state_tasks",)
#: Packages whose every module must import without Celery.
CELERY_FREE_PACKAGES = ("state_tasks.core", "state_tasks.adapters")
#: Single modules that must import without Celery too.
CELERY_FREE_MODULES = (
    "state_tasks",
    "state_tasks.triggers.registry",
    "state_tasks.triggers.declarations",
    "state_tasks.triggers.dispatch",
)
#: Modules that exist only once Celery is loaded: none may be in a Celery-free import.
CELERY_BOUND = ("celery", "state_tasks.celery_app")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def _walk(directory: Path, prefix: str) -> Iterator[str]:
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{prefix}.{info.name}"
        yield name
        if info.ispkg:
            yield from _walk(directory / info.name, name)


def discover() -> list[str]:
    modules: list[str] = []
    for package in PACKAGES:
        modules.append(package)
        modules.extend(_walk(_package_dir(package), package))
    return sorted(modules)


def is_celery_free(module: str) -> bool:
    return module in CELERY_FREE_MODULES or any(
        module == package or module.startswith(package + ".") for package in CELERY_FREE_PACKAGES
    )


MODULES = discover()
CELERY_FREE = [module for module in MODULES if is_celery_free(module)]
#: Where the packages were found: the fresh interpreters import the very same files.
SOURCE_ROOT = _package_dir("state_tasks").parent

#: Imports the module named by argv[1] alone, then reports which Celery-bound modules loaded.
PROBE = f"""
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in {CELERY_BOUND!r} if m in sys.modules)))
"""

#: What a service writes (README, "First calls"): the lazy names, the task objects.
PUBLIC_NAMES = """
import sys
import state_tasks
assert "celery" not in sys.modules, "importing state_tasks loaded Celery"
from state_tasks import app, iii, StateError, state_trigger
from celery import Celery
import state_tasks.celery_app
assert isinstance(app, Celery), app
assert app is state_tasks.celery_app.app
assert state_tasks.app is app
assert iii is state_tasks.iii and callable(iii.trigger)
assert issubclass(StateError, Exception) and callable(state_trigger)
assert set(app.conf.include) >= {"state_tasks.tasks", "state_tasks.triggers.tasks"}, app.conf.include
print("ok")
"""

TASK_OBJECTS = """
import state_tasks.tasks
task = state_tasks.tasks.state_update
assert task.name == "state::update", task.name
assert callable(task.delay)
print("ok")
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    #: What the import left in its (empty) working folder.
    wrote: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def clean_env() -> dict[str, str]:
    """The environment without our settings; the source root alone on the path."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CELERY_", "STATE_TASKS_"))
        and name not in ("REDIS_URL", "STATE_CONFIG", "PYTHONPATH")
    }
    env["PYTHONPATH"] = str(SOURCE_ROOT)
    return env


def run_fresh(code: str, *args: str, cwd: str, env: dict[str, str]) -> Run:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every probe, each in a fresh interpreter and an empty folder of its own, all at once."""
    jobs: dict[str, tuple[str, ...]] = {module: (PROBE, module) for module in MODULES}
    jobs["<public names>"] = (PUBLIC_NAMES,)
    jobs["<task objects>"] = (TASK_OBJECTS,)
    env = clean_env()
    root = tmp_path_factory.mktemp("imports")
    folders = {key: root / f"job{n}" for n, key in enumerate(jobs)}
    for folder in folders.values():
        folder.mkdir()
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        futures = {
            key: pool.submit(run_fresh, *job, cwd=str(folders[key]), env=env)
            for key, job in jobs.items()
        }
        results = {key: future.result() for key, future in futures.items()}
    for module in MODULES:
        results[module].wrote = sorted(os.listdir(folders[module]))
    return results


def test_discovery_finds_every_layer() -> None:
    for expected in (
        "state_tasks.core.service",
        "state_tasks.core.errors",
        "state_tasks.contrib.servers",
        "state_tasks.tasks",
        "state_tasks.adapters.kv_store",
        "state_tasks.triggers.registry",
        "state_tasks.triggers.tasks",
    ):
        assert expected in MODULES
    assert "state_tasks.core.ops" in CELERY_FREE and "state_tasks.adapters.redis" in CELERY_FREE
    assert (
        "state_tasks.tasks" not in CELERY_FREE and "state_tasks.triggers.tasks" not in CELERY_FREE
    )


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_alone(runs: dict[str, Run], module: str) -> None:
    run = runs[module]
    assert run.returncode == 0, f"import {module} in a fresh interpreter failed: {run.explain()}"
    # Folders of the embedded broker are made when the configuration is read, not on import.
    assert run.wrote == [], f"import {module} wrote {run.wrote} into the working folder"


@pytest.mark.parametrize("module", CELERY_FREE)
def test_celery_free_module_loads_no_celery(runs: dict[str, Run], module: str) -> None:
    run = runs[module]
    assert run.returncode == 0, run.explain()
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import {module} loaded {loaded}: it must stay free of Celery"


def test_public_names_import_in_a_fresh_interpreter(runs: dict[str, Run]) -> None:
    run = runs["<public names>"]
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.explain()


def test_task_objects_import_in_a_fresh_interpreter(runs: dict[str, Run]) -> None:
    run = runs["<task objects>"]
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.explain()
