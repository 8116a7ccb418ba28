"""Records of applied operations: what a repeat does, and what a record costs.

A change made under an operation id is recorded whole (with its result) until its trigger
work is sent, then settled to a marker of a fixed size. These tests run the repeat rules
against every adapter, and measure the cost on Redis (``INFO memory``), on the KvStore
(``tracemalloc``) and in the file store's files.
"""

from __future__ import annotations

import re
import threading
import time
import tracemalloc
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Recorder, plain
from helpers import RedisServer
from test_file_store import crash, open_store

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.errors import AdapterUnavailable
from state_tasks.core.service import StateService

#: The most an operation may cost once settled, whatever the size of its value.
MAX_BYTES_PER_OP = 256
#: A value of about 10 KB as JSON.
BIG_VALUE = {"blob": "x" * 10_000}
OPS_MEASURED = 2000


class FailOnce(Recorder):
    """A trigger listener whose first send fails, as a broker that is away would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("broker away")
        super().__call__(event)


def set_payload(value: Any) -> dict[str, Any]:
    return {"scope": "s", "key": "k", "value": value}


INCREMENT = {"scope": "s", "key": "c", "ops": [{"increment": {"field": "n", "by": 1}}]}
DELETE = {"scope": "s", "key": "k"}


# -- what a repeat does ---------------------------------------------------------------


def test_a_repeat_of_a_settled_operation_changes_nothing_and_sends_nothing(
    service: StateService, events: Recorder
) -> None:
    # Given a set, an update and a delete, each sent its trigger work, and the service
    # moved on (the next call of the same thread settles them)
    set_version = service.call("state::set", set_payload({"v": 1}), "set-1")["version"]
    update_version = service.call("state::update", INCREMENT, "update-1")["version"]
    service.call("state::set", set_payload({"v": 2}), "set-2")
    service.call("state::delete", DELETE, "delete-1")
    service.call("state::get", {"scope": "s", "key": "k"})
    sent = [e["event_id"] for e in events.events]
    # When each is delivered again
    again_set = service.call("state::set", set_payload({"v": 1}), "set-1")
    again_update = service.call("state::update", INCREMENT, "update-1")
    again_delete = service.call("state::delete", DELETE, "delete-1")
    # Then nothing changes, nothing more is sent, and each answer says it is a repeat,
    # with the version the operation gave (the settled record kept it)
    assert again_set == {
        "old_value": None,
        "new_value": {"v": 1},
        "version": set_version,
        "replayed": True,
    }
    assert again_update == {
        "old_value": None,
        "new_value": None,
        "version": update_version,
        "replayed": True,
    }
    assert again_delete is None
    assert service.call("state::get", {"scope": "s", "key": "k"}) is None
    assert service.call("state::get", {"scope": "s", "key": "c"}) == {"n": 1}
    assert sent == ["set-1", "update-1", "set-2", "delete-1"]
    assert [e["event_id"] for e in events.events] == sent


def test_a_retry_after_a_failed_dispatch_returns_the_result_and_sends_with_the_same_event_id(
    adapter: StateAdapter,
) -> None:
    # Given changes stored whose trigger work could not be sent (the broker was away)
    for function_id, payload, op_id, result in [
        ("state::set", set_payload({"v": 1}), "set-1", {"old_value": None, "new_value": {"v": 1}}),
        ("state::update", INCREMENT, "update-1", {"old_value": None, "new_value": {"n": 1}}),
        ("state::delete", DELETE, "delete-1", {"v": 1}),
    ]:
        listener = FailOnce()
        service = StateService(adapter, on_change=listener)
        with pytest.raises(AdapterUnavailable, match="retrying the call sends them"):
            service.call(function_id, payload, op_id)
        service.call("state::get", {"scope": "s", "key": "k"})  # the thread moves on
        # When the task is retried under the same id
        again = service.call(function_id, payload, op_id)
        # Then it returns the first result and sends the work, with the same event_id
        assert plain(again) == result
        assert [e["event_id"] for e in listener.events] == [op_id]
    assert adapter.get("s", "c") == '{"n":1}' and adapter.get("s", "k") is None


def test_a_repeat_on_another_thread_before_the_first_moved_on_finds_the_whole_record(
    service: StateService, events: Recorder
) -> None:
    # Given a change whose thread has not made another call yet (a worker that died
    # after sending the trigger work, before its task's result was stored)
    first = service.call("state::update", INCREMENT, "update-1")
    # When the task is redelivered and runs on another thread
    answers: list[Any] = []
    other = threading.Thread(
        target=lambda: answers.append(service.call("state::update", INCREMENT, "update-1"))
    )
    other.start()
    other.join()
    # Then it still gets the exact result, and the work is sent again (at least once)
    assert answers == [first]
    assert plain(first) == {"old_value": None, "new_value": {"n": 1}}
    assert [e["event_id"] for e in events.events] == ["update-1", "update-1"]
    assert service.call("state::get", {"scope": "s", "key": "c"}) == {"n": 1}


def test_a_repeat_of_a_settled_batch_answers_each_set_and_update_with_its_version(
    service: StateService, events: Recorder
) -> None:
    # Given a batch of sets, an update and deletes, its work sent and the service moved on
    service.call("state::set", {"scope": "s", "key": "gone", "value": 0})
    batch = {
        "scope": "s",
        "operations": [
            {"op": "set", "key": "a", "value": 1},
            {"op": "delete", "key": "gone"},
            {"op": "update", "key": "c", "ops": [{"increment": {"field": "n"}}]},
            {"op": "delete", "key": "never"},
            {"op": "set", "key": "b", "value": 2},
        ],
    }
    first = service.call("state::batch", batch, "batch-1")
    service.call("state::get", {"scope": "s", "key": "a"})
    sent = len(events.events)
    # When it is delivered again
    again = service.call("state::batch", batch, "batch-1")
    # Then it changes nothing, sends nothing, and each set and update has its version
    versions = [r["version"] if isinstance(r, dict) else None for r in first["results"]]
    assert again == {
        "results": [
            {"old_value": None, "new_value": 1, "version": versions[0]},
            None,
            {"old_value": None, "new_value": None, "version": versions[2]},
            None,
            {"old_value": None, "new_value": 2, "version": versions[4]},
        ],
        "replayed": True,
    }
    assert len(events.events) == sent


def test_a_repeated_delete_of_an_absent_key_deletes_nothing_set_since(
    service: StateService, events: Recorder
) -> None:
    assert service.call("state::delete", DELETE, "delete-1") is None
    service.call("state::set", set_payload("later"), "set-1")
    assert service.call("state::delete", DELETE, "delete-1") is None
    assert service.call("state::get", {"scope": "s", "key": "k"}) == "later"
    assert events.kinds() == ["state:created"]


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_the_kvstore_forgets_by_time_and_by_count(kind: str, tmp_path: Path) -> None:
    def make(**settings: Any) -> KvStore:
        if kind == "memory":
            return KvStore(**settings)
        store = FileKvStore(file_path=tmp_path / uuid.uuid4().hex, **settings)
        store.open()
        return store

    # Time: an operation older than the window is applied again
    store = make(op_window_s=0.2)
    StateService(store).call("state::update", INCREMENT, "old")
    time.sleep(0.3)
    StateService(store).call("state::update", INCREMENT, "old")
    assert store.get("s", "c") == '{"n":2}'
    store.close()
    # Count: beyond max_ops the oldest is forgotten, whole or settled
    store = make(max_ops=3)
    service = StateService(store)
    for i in range(5):
        service.call("state::update", INCREMENT, f"op-{i}")
    service.settle_sent()
    for i in range(5, 10):
        StateService(store).call("state::update", INCREMENT, f"op-{i}")  # left whole
    assert len(store._ops.settled) <= 3 and len(store._ops.whole) <= 3
    service.call("state::update", INCREMENT, "op-0")  # forgotten: applied again
    assert store.get("s", "c") == '{"n":11}'
    store.close()


# -- what a record costs ----------------------------------------------------------------


def test_redis_keeps_a_settled_operation_in_at_most_256_bytes(redis_server: RedisServer) -> None:
    # Given a RedisAdapter holding one 10 KB value
    client = redis.Redis.from_url(redis_server.url(0))
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix=f"cost-{uuid.uuid4().hex[:8]}")
    adapter.use_change_log(None)  # what the operation records cost (the log's: bench/)
    service = StateService(adapter, on_change=lambda event: None)
    service.call("state::set", set_payload(BIG_VALUE))
    before = int(client.info("memory")["used_memory"])
    # When it is set again 2,000 times, each under its own operation id
    for _ in range(OPS_MEASURED):
        service.call("state::set", set_payload(BIG_VALUE), str(uuid.uuid4()))
    service.call("state::get", {"scope": "s", "key": "k"})  # the thread moves on: settles
    adapter.close()  # (settling rides with the next write; close settles what waits)
    # Then each remembered operation costs at most 256 bytes (the live data did not grow)
    grown = int(client.info("memory")["used_memory"]) - before
    assert grown / OPS_MEASURED <= MAX_BYTES_PER_OP, f"{grown / OPS_MEASURED:.0f} bytes per op"
    markers = list(client.scan_iter(f"{adapter.key_prefix}:op:*", count=1000))
    assert len(markers) == OPS_MEASURED
    assert {client.type(key) for key in markers[:50]} == {b"string"}
    assert 0 < client.pttl(markers[0]) <= adapter.op_window_s * 1000
    client.close()


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_the_kvstore_keeps_a_settled_operation_in_at_most_256_bytes_of_memory(
    kind: str, tmp_path: Path
) -> None:
    # Given a KvStore holding one 10 KB value
    store = KvStore() if kind == "memory" else FileKvStore(file_path=tmp_path, fsync="never")
    store.use_change_log(None)  # what the operation records cost (the log's: bench/)
    store.open()
    service = StateService(store, on_change=lambda event: None)
    service.call("state::set", set_payload(BIG_VALUE))
    service.call("state::set", set_payload(BIG_VALUE), "warm-up")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # When it is set again 2,000 times, each under its own operation id
        for _ in range(OPS_MEASURED):
            service.call("state::set", set_payload(BIG_VALUE), str(uuid.uuid4()))
        service.call("state::get", {"scope": "s", "key": "k"})  # the thread moves on: settles
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        store.close()
    # Then each remembered operation costs at most 256 bytes
    assert grown / OPS_MEASURED <= MAX_BYTES_PER_OP, f"{grown / OPS_MEASURED:.0f} bytes per op"
    assert len(store._ops.settled) == OPS_MEASURED + 1 and not store._ops.whole


@pytest.mark.parametrize("change_log", [False, True], ids=["no log", "log"])
def test_the_file_store_writes_each_value_once_and_small_operation_records(
    tmp_path: Path, change_log: bool
) -> None:
    # Given a file store holding one 10 KB value (with its change log: each journal record
    # carries the old value too, for the log's entry; the records stay as small)
    store = FileKvStore(file_path=tmp_path, save_interval_ms=60_000)
    if not change_log:
        store.use_change_log(None)
    store.open()
    service = StateService(store, on_change=lambda event: None)
    service.call("state::set", set_payload(BIG_VALUE))
    store.save()
    value_bytes = len(store.get("s", "k") or "")
    # When it is set again 2,000 times, each under its own operation id
    for _ in range(OPS_MEASURED):
        service.call("state::set", set_payload(BIG_VALUE), str(uuid.uuid4()))
    service.call("state::get", {"scope": "s", "key": "k"})  # settles the last one
    # Then the journal holds each value once (not the old value beside it; with the log,
    # the old value is the log entry's: twice) ...
    journal = sum(path.stat().st_size for path in tmp_path.glob("journal-*.log"))
    copies = 2 if change_log else 1
    assert journal / OPS_MEASURED <= copies * value_bytes + MAX_BYTES_PER_OP
    # ... and once saved, the operation records take about 50 bytes each
    store.save()
    ops_file = (tmp_path / "ops.json").stat().st_size
    assert ops_file / OPS_MEASURED <= 64, f"{ops_file / OPS_MEASURED:.0f} bytes per op"
    # ... and a save with no new operation leaves ops.json alone
    written_at = (tmp_path / "ops.json").stat().st_mtime_ns
    service.call("state::set", set_payload(1))
    store.save()
    assert (tmp_path / "ops.json").stat().st_mtime_ns == written_at
    store.close()


# -- the file store across crashes --------------------------------------------------------


def test_file_store_records_come_back_whole_or_settled_after_a_crash(tmp_path: Path) -> None:
    # Given a settled update, and a set whose trigger work failed (its record is whole)
    store = open_store(tmp_path)
    service = StateService(store, on_change=lambda event: None)
    service.call("state::update", INCREMENT, "settled")
    failing = StateService(store, on_change=FailOnce())
    with pytest.raises(AdapterUnavailable):
        failing.call("state::set", set_payload({"v": 2}), "whole")
    service.call("state::set", set_payload({"v": 3}))  # carries the settle in its record
    # When the worker is killed and a new one opens the folder
    crash(store)
    again = open_store(tmp_path)
    events = Recorder()
    service = StateService(again, on_change=events)
    # Then the settled one is refused quietly, and the whole one answers with its old
    # value (derived from the journal) and sends its work again
    assert service.call("state::update", INCREMENT, "settled")["replayed"] is True
    assert plain(service.call("state::set", set_payload({"v": 2}), "whole")) == {
        "old_value": None,
        "new_value": {"v": 2},
    }
    assert [e["event_id"] for e in events.events] == ["whole"]
    assert again.get("s", "c") == '{"n":1}' and again.get("s", "k") == '{"v":3}'
    again.close()


def test_file_store_records_stay_exact_after_a_crash_in_the_middle_of_a_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a saved value, then a change whose record is whole, then a later change
    store = open_store(tmp_path)
    store.set("s", "k", '"first"')
    store.save()
    failing = StateService(store, on_change=FailOnce())
    with pytest.raises(AdapterUnavailable):
        failing.call("state::set", set_payload("second"), "whole")
    store.set("s", "k", '"third"')

    # When a save writes its files, then the process dies before deleting the journal
    # segments it covered (replaying them over the new scope file must not make "third"
    # the old value of "whole")
    def killed(self: FileKvStore) -> list[tuple[int, Path]]:
        raise SystemExit("killed before deleting the journal segments")

    monkeypatch.setattr(FileKvStore, "_segments", killed)
    with pytest.raises(SystemExit):
        store.save()
    monkeypatch.undo()
    crash(store)
    assert len(list(tmp_path.glob("journal-*.log"))) == 2
    # Then the restarted store has every change once, and the record its true old value
    again = open_store(tmp_path)
    assert again.get("s", "k") == '"third"'
    assert again.set("s", "k", '"second"', "whole") == '"first"'
    assert again.get("s", "k") == '"third"'
    again.close()


def test_file_store_reads_operation_records_of_the_previous_format(tmp_path: Path) -> None:
    # Given a folder written by the previous version: ops.json version 1 and a journal
    # record that carries the old value
    (tmp_path / "ops.json").write_text(
        '{"format":"state_tasks.applied_ops","version":1,'
        f'"ops":{{"a":["1","2",{time.time() + 600:.3f}]}}}}'
    )
    store = open_store(tmp_path)
    store.set("s", "k", "1")
    crash(store)
    (journal,) = tmp_path.glob("journal-*.log")
    body = (
        '{"op":"set","scope":"s","key":"k","value":5,"id":"b","old":"1",'
        f'"exp":{time.time() + 600:.3f}}}'
    ).encode()
    with journal.open("ab") as handle:
        handle.write(b"%08x %s\n" % (zlib.crc32(body), body))
    # Then both operations are recognised with their recorded results
    again = open_store(tmp_path)
    assert again.set("s", "k", "2", "a") == "1"
    assert again.set("s", "k", "5", "b") == "1"
    assert again.get("s", "k") == "5"
    again.close()


def test_redis_settles_with_the_next_write_at_no_round_trip_of_its_own(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url(0), decode_responses=True)
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix=f"ride-{uuid.uuid4().hex[:8]}")
    adapter.set("s", "k", "1", "a")
    record = f"{adapter.key_prefix}:op:a"
    # Given a record whose trigger work was sent
    adapter.settle(["a"])
    calls = int(client.info("commandstats")["cmdstat_evalsha"]["calls"])
    # Then it waits, whole, for the next write, which settles it in the same script
    assert client.type(record) == "hash"
    adapter.set("s", "k", "2")
    assert client.type(record) == "string"
    assert int(client.info("commandstats")["cmdstat_evalsha"]["calls"]) == calls + 1
    # And close settles what still waits
    adapter.set("s", "k", "3", "b")
    adapter.settle(["b"])
    adapter.close()
    assert client.type(f"{adapter.key_prefix}:op:b") == "string"
    client.close()


def test_redis_understands_a_settled_marker_from_before_versions(
    redis_server: RedisServer,
) -> None:
    # Given records settled by the previous release: the string '1'
    client = redis.Redis.from_url(redis_server.url(0), decode_responses=True)
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix=f"old-{uuid.uuid4().hex[:8]}")
    service = StateService(adapter, on_change=lambda event: None)
    service.call("state::set", set_payload({"v": 1}), "set-1")
    service.call("state::update", INCREMENT, "update-1")
    batch = {"scope": "s", "operations": [{"op": "set", "key": "b", "value": 1}]}
    service.call("state::batch", batch, "batch-1")
    service.call("state::get", {"scope": "s", "key": "k"})
    adapter.close()
    for op_id in ("set-1", "update-1", "batch-1"):
        record = f"{adapter.key_prefix}:op:{op_id}"
        assert client.get(record).startswith("v")  # settled, with its versions
        client.set(record, "1", px=client.pttl(record))
    # When they are repeated, Then they are settled repeats without a version
    again = StateService(
        RedisAdapter(redis_url=redis_server.url(0), key_prefix=adapter.key_prefix),
        on_change=lambda event: None,
    )
    assert again.call("state::set", set_payload({"v": 1}), "set-1") == {
        "old_value": None,
        "new_value": {"v": 1},
        "replayed": True,
    }
    assert again.call("state::update", INCREMENT, "update-1") == {
        "old_value": None,
        "new_value": None,
        "replayed": True,
    }
    assert again.call("state::batch", batch, "batch-1") == {
        "results": [{"old_value": None, "new_value": 1}],
        "replayed": True,
    }
    again.adapter.close()
    client.close()


def test_file_store_keeps_settled_versions_across_a_crash_and_reads_old_markers(
    tmp_path: Path,
) -> None:
    # Given a settled set (journaled with the next record) and a settled update (saved)
    store = open_store(tmp_path)
    service = StateService(store, on_change=lambda event: None)
    update_version = service.call("state::update", INCREMENT, "update-1")["version"]
    service.call("state::get", {"scope": "s", "key": "c"})  # settles it
    store.save()  # ops.json holds it, settled with its version
    set_version = service.call("state::set", set_payload({"v": 1}), "set-1")["version"]
    service.call("state::get", {"scope": "s", "key": "k"})  # settles it
    service.call("state::set", {"scope": "s", "key": "other", "value": 0})  # journals that
    crash(store)
    # When a new process opens the folder, Then both repeats answer with their versions
    again = open_store(tmp_path)
    service = StateService(again, on_change=lambda event: None)
    assert service.call("state::set", set_payload({"v": 1}), "set-1")["version"] == set_version
    assert service.call("state::update", INCREMENT, "update-1")["version"] == update_version
    again.close()
    # And markers written before they kept versions (a bare expiry) answer without
    ops = (tmp_path / "ops.json").read_text()
    assert '"set-1":[' in ops and '"update-1":[' in ops
    old = re.sub(r'"(set-1|update-1)":\[(\d+),\d+\]', r'"\1":\2', ops)
    assert old != ops
    (tmp_path / "ops.json").write_text(old)
    for path in tmp_path.glob("journal-*.log"):
        path.unlink()
    again = open_store(tmp_path)
    service = StateService(again, on_change=lambda event: None)
    assert "version" not in service.call("state::set", set_payload({"v": 1}), "set-1")
    assert "version" not in service.call("state::update", INCREMENT, "update-1")
    again.close()
