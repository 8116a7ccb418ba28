"""The embedded default delivers at least once, like Redis and RabbitMQ.

A message a consumer has taken stays in the broker's processing folder until it is
acknowledged; a rejected or unacknowledged one goes back in its place in the queue; the
messages of a process that is gone are put back when a consumer starts and by the
worker's cleaner. Real worker processes, and real processes taking messages; no Redis.
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
from helpers import HANDLERS, Worker, adapter_yaml, plain, wait_until
from kombu.connection import Connection

from state_tasks import III, create_app
from state_tasks.embedded_broker import (
    embedded_settings,
    remove_leftovers,
    requeue_orphaned_messages,
    transport_options,
)

pytestmark = pytest.mark.own_broker

#: Takes the oldest message of the queue argv[3] of the broker under argv[1], prints its
#: "i", then dies without acknowledging it (argv[2] "die") or waits until stdin closes.
TAKER = """
import os, sys
from kombu import Connection
from state_tasks.embedded_broker import transport_options
connection = Connection("statefs://localhost/", transport_options=transport_options(sys.argv[1]))
message = connection.SimpleQueue(sys.argv[3]).get(timeout=10)
print(message.payload["i"], flush=True)
if sys.argv[2] == "die":
    os._exit(0)
sys.stdin.read()
"""


class Folders:
    def __init__(self, data: Path) -> None:
        # A queue name of its own: kombu remembers the bindings it declared in a process,
        # whatever the folder, and would not write them into another test's folder.
        self.name = f"jobs{uuid.uuid4().hex[:8]}"
        self.data = data
        self.options = transport_options(str(data))
        self.queue = Path(self.options["data_folder_in"])
        self.processing = Path(self.options["processing_folder"])
        for folder in (self.queue, Path(self.options["control_folder"]), self.processing):
            folder.mkdir(parents=True, exist_ok=True)

    def connection(self) -> Any:
        return Connection("statefs://localhost/", transport_options=self.options)  # type: ignore[no-untyped-call]

    def queued(self) -> list[str]:
        return sorted(p.name for p in self.queue.iterdir() if p.name.endswith(f".{self.name}.msg"))

    def taken(self) -> list[str]:
        """The original names of the taken messages."""
        return sorted(p.name.partition("-")[2] for p in self.processing.glob("*.msg"))


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[Folders]:
    folders = Folders(tmp_path / "data")
    with folders.connection() as connection:
        queue = connection.SimpleQueue(folders.name)
        for i in range(4):
            queue.put({"i": i})
        queue.close()
    yield folders


def take(folders: Folders, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", TAKER, str(folders.data), how, folders.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_message_is_kept_until_acknowledged_and_a_rejected_one_keeps_its_place(
    folders: Folders,
) -> None:
    names = folders.queued()
    assert len(names) == 4
    with folders.connection() as connection:
        queue = connection.SimpleQueue(folders.name)
        first = queue.get(timeout=5)
        assert first.payload == {"i": 0}
        assert folders.taken() == names[:1] and folders.queued() == names[1:]
        first.reject(requeue=True)  # back in its place: first in the queue
        assert folders.queued() == names and folders.taken() == []

        again = queue.get(timeout=5)
        assert again.payload == {"i": 0}
        again.ack()
        assert folders.queued() == names[1:] and folders.taken() == []

        dropped = queue.get(timeout=5)
        assert dropped.payload == {"i": 1}
        dropped.reject(requeue=False)
        assert folders.taken() == []

        unacked = queue.get(timeout=5)
        assert unacked.payload == {"i": 2}
        # Taken by this process, which lives: no sweep puts it back, nor removes it.
        assert requeue_orphaned_messages(folders.options) == 0
        assert remove_leftovers(folders.options, 0) == 0
        assert folders.taken() == [names[2]]
        queue.close()
    # Closing the channel puts the unacknowledged message back, in its place.
    assert folders.queued() == names[2:] and folders.taken() == []


def test_the_messages_of_a_process_that_is_gone_go_back_and_a_live_ones_stay(
    folders: Folders,
) -> None:
    names = folders.queued()
    live = take(folders, "live")
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "0"
        dead = take(folders, "die")
        out, _ = dead.communicate(timeout=60)
        assert out.strip() == "1" and dead.returncode == 0
        # Each taken file records its taker: <pid>.<random>-<original name>
        takers = {p.name.partition(".")[0] for p in folders.processing.glob("*.msg")}
        assert takers == {str(dead.pid), str(live.pid)}
        assert folders.taken() == names[:2]

        assert requeue_orphaned_messages(folders.options) == 1
        assert folders.queued() == names[1:]  # back first, in its place
        assert folders.taken() == [names[0]]  # the live process's message is left alone
        assert remove_leftovers(folders.options, 0) == 0
        assert folders.taken() == [names[0]]
    finally:
        live.kill()  # gone too, without a chance to put its message back
        live.wait(30)
    assert requeue_orphaned_messages(folders.options) == 1
    assert folders.queued() == names
    assert list(folders.processing.iterdir()) == []  # the owners' lock files went with them


def test_a_reused_pid_does_not_keep_a_gone_processs_messages(folders: Folders) -> None:
    # A file taken by a process that is gone, whose pid now names a live process (ours):
    # the lock file, which nobody holds, says it is gone.
    names = folders.queued()
    owner = f"{os.getpid()}.0123456789ab"
    (folders.queue / names[1]).rename(folders.processing / f"{owner}-{names[1]}")
    (folders.processing / f"{owner}.lock").write_text(f"{os.getpid()}\n")
    assert requeue_orphaned_messages(folders.options) == 1
    assert folders.queued() == names
    assert list(folders.processing.iterdir()) == []


def kv_file_yaml(folder: Path) -> str:
    return adapter_yaml(  # type: ignore[no-any-return]
        "modules::state::adapters::KvStore",
        store_method="file_based",
        file_path=str(folder),
        save_interval_ms=60_000,
    )


def recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_crash_between_storing_and_dispatching_still_runs_the_handler(tmp_path: Path) -> None:
    # Given a worker on the embedded default and the file-based KvStore that dies right
    # after storing the first change of scope "fragile"
    data, records, marker = tmp_path / "data", tmp_path / "records.jsonl", tmp_path / "crashed"
    config = tmp_path / "state.yaml"
    config.write_text(kv_file_yaml(tmp_path / "store"))
    env = {
        "STATE_TASKS_DATA_DIR": str(data),
        "STATE_CONFIG": str(config),
        "RECORD_FILE": str(records),
        "CRASH_AFTER_STORE_SCOPE": "fragile",
        "CRASH_MARKER": str(marker),
    }

    def worker(name: str) -> Worker:
        return Worker(
            tmp_path,
            env,
            includes=("file_record_handlers", "crash_hook"),
            name=name,
            pythonpath=[HANDLERS],
        ).start()

    app = create_app("redelivery-client", **embedded_settings(str(data)))
    iii = III(app, timeout_ms=30_000)
    first = worker("crashing")
    second = None
    try:
        iii.register_trigger(
            {"type": "state", "function_id": "test::recordToFile", "config": {"scope": "fragile"}}
        )
        # When a change is stored and the process dies before sending its trigger work
        result = app.send_task(
            "state::update",
            kwargs={"scope": "fragile", "key": "k", "ops": [{"increment": {"field": "n"}}]},
        )
        assert first.process is not None
        pid = first.process.pid
        wait_until(
            lambda: first.process is None or first.process.poll() is not None, 60, "the crash"
        )
        assert first.stop() == 70 and marker.exists()
        assert "test fault hook: dying" in first.log()
        # the task's message is still in the broker, taken by the process that is gone
        processing = Path(transport_options(str(data))["processing_folder"])
        assert [p.name for p in processing.glob("*.msg")] == [
            p.name for p in processing.glob(f"{pid}.*-*.celery.msg")
        ]
        assert len(list(processing.glob("*.msg"))) == 1
        assert recorded(records) == []

        # and the worker is started again on the same folder
        second = worker("restarted")
        # Then the task is delivered again (same id), returns the recorded result without
        # applying the change again, and sends the trigger work: the handler runs once
        assert plain(result.get(timeout=60)) == {"old_value": None, "new_value": {"n": 1}}
        # Sentinel: a later change of the scope; its handler runs after every handler run
        # the first change caused (one thread takes the tasks in queue order).
        iii.trigger(
            {"function_id": "state::set", "payload": {"scope": "fragile", "key": "z", "value": 0}}
        )
        wait_until(
            lambda: any(e["key"] == "z" for e in recorded(records)), 30, "the sentinel's handler"
        )
        events = [e for e in recorded(records) if e["key"] != "z"]
        assert len(events) == 1, events
        assert events[0]["new_value"] == {"n": 1} and events[0]["event_id"] == result.id
        assert iii.trigger(
            {"function_id": "state::get", "payload": {"scope": "fragile", "key": "k"}}
        ) == {"n": 1}
        assert "put back in" in second.log()
        # Nothing taken is left behind: every message was acknowledged, the gone
        # process's lock file removed.
        wait_until(lambda: not list(processing.glob("*.msg")), 10, "no taken message left")
        assert second.process is not None
        assert [p.name.partition(".")[0] for p in processing.glob("*.lock")] == [
            str(second.process.pid)
        ]
        assert "Traceback" not in second.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        app.close()
