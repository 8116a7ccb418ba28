"""The file-based KvStore behind a real worker: restarts, kill -9, and one owner per folder."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from helpers import adapter_yaml


def file_yaml(folder: Path) -> str:
    return adapter_yaml(
        "modules::state::adapters::KvStore",
        store_method="file_based",
        file_path=str(folder),
        save_interval_ms=60_000,
    )


def test_values_groups_and_triggers_come_back_after_sigterm(
    deployment_factory: Any, tmp_path: Path
) -> None:
    deployment = deployment_factory(file_yaml(tmp_path / "store"))
    worker = deployment.worker()
    for i in range(20):
        deployment.call("state::set", scope=f"scope{i % 3}", key=f"k{i}", value={"i": i})
    handle = deployment.client.iii.register_trigger(
        {"type": "state", "function_id": "some::handler", "config": {"scope": "scope0"}}
    )
    assert worker.stop(signal.SIGTERM) == 0

    deployment.worker()
    assert deployment.call("state::list_groups") == {"groups": ["scope0", "scope1", "scope2"]}
    assert deployment.call("state::list", scope="scope1") == [{"i": i} for i in range(1, 20, 3)]
    assert [t["id"] for t in deployment.client.iii.list_triggers()] == [handle.id]
    assert list((tmp_path / "store").glob("scope-*.json"))  # the clean shutdown saved


def test_every_acknowledged_write_survives_kill_9(deployment_factory: Any, tmp_path: Path) -> None:
    deployment = deployment_factory(file_yaml(tmp_path / "store"))
    worker = deployment.worker()
    for i in range(300):
        deployment.call(
            "state::update",
            scope="counters",
            key=f"c{i % 10}",
            ops=[{"increment": {"field": "n", "by": 1}}],
        )
    worker.stop(signal.SIGKILL)
    assert not list(
        (tmp_path / "store").glob("scope-*.json")
    )  # no save ran: the journal has it all

    deployment.worker()
    values = deployment.call("state::list", scope="counters")
    assert values == [{"n": 30}] * 10


def test_a_second_worker_on_the_same_folder_fails_clearly(
    deployment_factory: Any, tmp_path: Path
) -> None:
    first = deployment_factory(file_yaml(tmp_path / "store"), name="first")
    owner = first.worker()
    second = deployment_factory(file_yaml(tmp_path / "store"), name="second")
    code, log = second.worker(start=False).run_to_exit()
    assert code != 0
    assert f"is already open in another process (pid {owner.process.pid})" in log
    first.call("state::set", scope="s", key="k", value=1)  # the owner is unharmed
    assert first.call("state::get", scope="s", key="k") == 1
