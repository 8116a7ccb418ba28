"""The change log through real workers: ``state::changes`` by ``send_task``,
``state_tasks.watch()`` polling through the workers (live, stopped, resumed from its
cursor), a change a handler makes in-process, the CLI's ``changes`` and ``watch``, and
``watch(direct=True)`` reading the Redis store without the broker.

One deployment: its state on a Redis db of its own (so its log holds this module's
changes only), its log bounded in its ``state.yaml`` (``change_log: {max_entries: 100}``:
the worker reads it, and a test trims past a reader), one worker with the test handlers
(``trigger_handlers``: a change of scope ``readback`` makes the handler ``test::readBack``
set ``readback-results`` in-process). Each test reads only what it wrote (its own scope),
well within what the log keeps.
The log on every adapter: tests/conformance/test_change_log.py.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import OUR_VARIABLES, Deployment, RedisServer, own_db, redis_state_yaml, wait_until

from state_tasks import Compacted, StateError, Watcher, watch

pytestmark = pytest.mark.integration

CLI = os.path.join(os.path.dirname(sys.executable), "state-tasks")

#: How long a change may take to reach a live watcher here (it polls every 50 ms).
LIVE_S = 5.0

#: What the deployment's change log keeps (at least: Redis trims whole blocks).
KEPT = 100

CHANGE_FIELDS = ("event_type", "scope", "key", "old_value", "new_value", "version")


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("change-log")
    state_yaml = redis_state_yaml(redis_server.url(own_db()), "changes")
    state_yaml += f"      change_log: {{max_entries: {KEPT}}}\n"
    deployment = Deployment(redis_server, workdir, state_yaml)
    deployment.worker(
        "--concurrency",
        "2",
        includes=("trigger_handlers",),
        RECORD_REDIS_URL=redis_server.url(own_db()),
    )
    yield deployment
    deployment.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def what(entry: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entry[name] for name in CHANGE_FIELDS)


def read_all(deployment: Deployment, **payload: Any) -> tuple[list[dict[str, Any]], str]:
    """Every entry of the log (of ``scope``/``prefix``) through the workers, and the cursor
    after them."""
    entries: list[dict[str, Any]] = []
    cursor = payload.pop("after", None)
    while True:
        page = deployment.call(
            "state::changes", **payload, **({} if cursor is None else {"after": cursor})
        )
        entries += page["changes"]
        if not page["changes"] and page["cursor"] == cursor:
            return entries, cursor
        cursor = page["cursor"]


def send(deployment: Deployment, function_id: str, **payload: Any) -> tuple[str, Any]:
    """A state function called as a service calls it: ``(its task id, its answer)``."""
    result = deployment.client.app.send_task(function_id, kwargs=payload)
    return result.id, result.get(timeout=20, interval=0.02)


class Collector:
    """Iterates a watcher in a thread, collecting what it yields."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.got: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for change in self.watcher:
                self.got.append(change)
        except BaseException as e:
            self.error = e

    def wait_for(self, count: int, timeout_s: float = LIVE_S) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.got) >= count or self.error, timeout_s, f"{count} changes")
        if self.error is not None:
            raise self.error
        return self.got

    def stop(self) -> str | None:
        self.watcher.close()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        cursor: str | None = self.watcher.cursor
        return cursor


class Lines:
    """The lines a subprocess prints, read in a thread (a wait never blocks on a pipe)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def take(self, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        taken = []
        for _ in range(count):
            left = deadline - time.monotonic()
            try:
                taken.append(json.loads(self.lines.get(timeout=max(0.01, left))))
            except queue.Empty:
                raise AssertionError(f"got {len(taken)} of {count} lines: {taken}") from None
        return taken


# -- state::changes through the workers --------------------------------------------------------


def test_changes_through_send_task_name_each_change_by_its_task_id(deployment: Deployment) -> None:
    scope = unique("sent")
    set_id, created = send(deployment, "state::set", scope=scope, key="a", value={"n": 1})
    update_id, updated = send(
        deployment, "state::update", scope=scope, key="a", ops=[{"increment": {"field": "n"}}]
    )
    batch_id, batch = send(
        deployment,
        "state::batch",
        scope=scope,
        operations=[
            {"op": "set", "key": "b", "value": "x" * 30_000},
            {"op": "delete", "key": "nothing"},
            {"op": "delete", "key": "a"},
        ],
    )
    delete_id, _ = send(deployment, "state::delete", scope=scope, key="b")
    first = deployment.call("state::changes", scope=scope, limit=2)
    rest = deployment.call("state::changes", scope=scope, after=first["cursor"], limit=1000)
    entries = first["changes"] + rest["changes"]
    assert [what(e) for e in entries] == [
        ("state:created", scope, "a", None, {"n": 1}, created["version"]),
        ("state:updated", scope, "a", {"n": 1}, {"n": 2}, updated["version"]),
        ("state:created", scope, "b", None, "x" * 30_000, batch["results"][0]["version"]),
        ("state:deleted", scope, "a", {"n": 2}, None, updated["version"]),
        ("state:deleted", scope, "b", "x" * 30_000, None, batch["results"][0]["version"]),
    ]
    assert [e["event_id"] for e in entries] == [
        set_id,
        update_id,
        f"{batch_id}:0",
        f"{batch_id}:2",
        delete_id,
    ]
    assert rest["cursor"] == entries[-1]["cursor"]
    again = deployment.call("state::changes", scope=scope, after=rest["cursor"])
    assert again == {"changes": [], "cursor": rest["cursor"]}
    # errors come back as the StateErrors they are
    with pytest.raises(StateError) as raised:
        deployment.call("state::changes", after=rest["cursor"])  # another filter's cursor
    assert raised.value.code == "VALIDATION_ERROR"
    with pytest.raises(StateError) as raised:
        deployment.call("state::changes", limit=1001)
    assert raised.value.code == "VALIDATION_ERROR"


# -- watch() through the workers -----------------------------------------------------------


def test_watch_yields_other_clients_changes_live_and_resumes_from_its_cursor(
    deployment: Deployment,
) -> None:
    scope = unique("live")
    app = deployment.client.app
    live = Collector(watch(scope=scope, app=app, poll_interval_s=0.05, limit=7))
    written: list[dict[str, Any]] = []
    for i in range(12):  # written by another client while it watches
        started = time.monotonic()
        answer = deployment.call("state::set", scope=scope, key=f"k{i % 5}", value=i)
        written.append(answer)
        if i < 3:  # each one arrives on its own, within a few seconds
            live.wait_for(i + 1)
            assert time.monotonic() - started < LIVE_S
    live.wait_for(12)
    cursor = live.stop()
    assert cursor == live.got[-1]["cursor"]
    assert [e["new_value"] for e in live.got] == list(range(12))
    assert [e["version"] for e in live.got] == [w["version"] for w in written]

    for i in range(12, 20):  # written while no one watches
        deployment.call("state::set", scope=scope, key=f"k{i % 5}", value=i)
    resumed = Collector(watch(scope=scope, after=cursor, app=app, poll_interval_s=0.05, limit=3))
    resumed.wait_for(8)
    deployment.call("state::delete", scope=scope, key="k0")
    resumed.wait_for(9)
    time.sleep(0.3)  # nothing more comes
    resumed.stop()
    assert [e["new_value"] for e in resumed.got[:8]] == list(range(12, 20))
    assert (resumed.got[8]["event_type"], resumed.got[8]["old_value"]) == ("state:deleted", 15)
    assert len(resumed.got) == 9
    # the two runs together are the log, once each, in order
    everything, _ = read_all(deployment, scope=scope)
    assert live.got + resumed.got == everything


def test_a_change_a_handler_makes_in_process_is_logged(deployment: Deployment) -> None:
    key = unique("k")
    set_id, _ = send(deployment, "state::set", scope="readback", key=key, value={"v": 1})
    watcher = watch(prefix="readback", app=deployment.client.app, poll_interval_s=0.05)
    found: list[dict[str, Any]] = []

    def handled() -> bool:
        found.extend(e for e in watcher.poll() if e["key"] == key)
        return any(e["scope"] == "readback-results" for e in found)

    wait_until(handled, 20, "the handler's change in the log")
    watcher.close()
    change, made = found[0], found[1]
    assert (change["scope"], change["event_id"]) == ("readback", set_id)
    assert what(made)[:5] == (
        "state:created",
        "readback-results",
        key,
        None,
        {"seen": {"v": 1}},
    )
    # no operation id in-process: the id derived from the change, as its trigger event's
    assert made["event_id"].startswith("v-")
    assert deployment.call("state::get", scope="readback-results", key=key) == {"seen": {"v": 1}}


def test_a_reader_behind_the_trim_is_told_through_the_workers(deployment: Deployment) -> None:
    scope = unique("behind")
    deployment.call("state::set", scope=scope, key="victim", value=1)
    behind = deployment.call("state::changes", scope=scope)["cursor"]
    deployment.call("state::delete", scope=scope, key="victim")  # the reader is behind it
    operations = [{"op": "set", "key": f"k{i}", "value": i} for i in range(3 * KEPT)]
    deployment.call("state::batch", scope=scope, operations=operations)  # ... till trimmed
    with pytest.raises(Compacted) as raised:
        deployment.call("state::changes", scope=scope, after=behind)
    assert raised.value.code == "COMPACTED"
    oldest = raised.value.details["oldest"]
    with pytest.raises(Compacted):  # a watcher is told too, never skips past the delete
        next(watch(scope=scope, after=behind, app=deployment.client.app))
    told = subprocess.run(
        [CLI, "watch", "--scope", scope, "--after", behind],
        env=deployment.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert told.returncode != 0 and told.stdout == ""
    assert "COMPACTED" in told.stderr and f"--after {oldest}" in told.stderr
    kept, _ = read_all(deployment, scope=scope, after=oldest)
    assert KEPT <= len(kept) < 3 * KEPT
    assert [e["new_value"] for e in kept] == list(range(3 * KEPT))[-len(kept) :]


# -- the command line ---------------------------------------------------------------------------


def test_the_cli_prints_a_page_and_watches_live(deployment: Deployment) -> None:
    scope = unique("cli")
    for i in range(3):
        deployment.call("state::set", scope=scope, key="k", value=i)
    env = deployment.client_env()
    page = subprocess.run(
        [CLI, "changes", "--scope", scope, "--limit", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert page.returncode == 0, page.stderr
    first = json.loads(page.stdout)
    assert [e["new_value"] for e in first["changes"]] == [0, 1]

    watcher = subprocess.Popen(
        [CLI, "watch", "--scope", scope, "--after", first["cursor"]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(watcher.stdout)  # type: ignore[arg-type]
        assert [e["new_value"] for e in lines.take(1)] == [2]  # what was there after it
        deployment.call("state::set", scope=scope, key="k", value=3)  # and what comes
        deployment.call("state::delete", scope=scope, key="k")
        later = lines.take(2)
        assert [(e["event_type"], e["new_value"]) for e in later] == [
            ("state:updated", 3),
            ("state:deleted", None),
        ]
    finally:
        watcher.kill()
        watcher.wait(10)
    everything, _ = read_all(deployment, scope=scope)
    assert later == everything[3:]  # the same entries, cursors and all

    refused = subprocess.run(
        [CLI, "changes", "--scope", scope, "--after", "not-a-cursor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "VALIDATION_ERROR" in refused.stderr


# -- direct=True --------------------------------------------------------------------------------

DIRECT = """
import json, sys
from state_tasks import watch
for change in watch(scope=sys.argv[1], direct=True, poll_interval_s=0.05):
    print(json.dumps(change), flush=True)
"""


def test_watch_direct_reads_the_redis_store_without_the_broker(deployment: Deployment) -> None:
    scope = unique("direct")
    deployment.call("state::set", scope=scope, key="k", value="before")
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    env |= {
        "STATE_CONFIG": deployment.env["STATE_CONFIG"],
        # no broker, no result backend: nothing listens there
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        "CELERY_RESULT_BACKEND": "redis://127.0.0.1:1/0",
    }
    reader = subprocess.Popen(
        [sys.executable, "-c", DIRECT, scope],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = Lines(reader.stdout)  # type: ignore[arg-type]
        assert [e["new_value"] for e in lines.take(1)] == ["before"]
        deployment.call("state::set", scope=scope, key="k", value="after")
        assert [e["new_value"] for e in lines.take(1, timeout_s=LIVE_S)] == ["after"]
    finally:
        reader.kill()
        _, stderr = reader.communicate(timeout=10)
    assert "Traceback" not in stderr, stderr


def test_watch_direct_on_a_store_inside_the_worker_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "state.yaml"
    config.write_text("modules:\n  - class: modules::state::StateModule\n")
    monkeypatch.setenv("STATE_CONFIG", str(config))
    with pytest.raises(StateError) as raised:
        watch(direct=True)
    assert raised.value.code == "CONFIG_ERROR"
    assert "direct=False" in raised.value.message
