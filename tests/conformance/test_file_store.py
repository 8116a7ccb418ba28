"""The file-based KvStore on its own: files, journal, restarts, crashes and corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Events

from state_tasks.adapters.file_store import FileKvStore, scope_file_name
from state_tasks.core.errors import AdapterError, AdapterUnavailable, ConfigError
from state_tasks.core.ops import parse_ops
from state_tasks.core.service import StateService
from state_tasks.triggers.registry import TriggerRegistry


def open_store(path: Path, **settings: object) -> FileKvStore:
    store = FileKvStore(file_path=path, save_interval_ms=60_000, **settings)  # type: ignore[arg-type]
    store.open()
    return store


def crash(store: FileKvStore) -> None:
    """Drop the store as a kill -9 would: no save, no flush, the lock let go."""
    store._stop.set()
    if store._saver is not None:
        store._saver.join()
    if store._journal_fd is not None:
        os.close(store._journal_fd)
    store._release_ownership()


def test_values_groups_order_and_triggers_survive_a_clean_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(5):
        store.set("users", f"u{i}", f'{{"i":{i}}}')
    store.set("other", "k", "[]")
    store.delete("users", "u2")
    store.update("counters", "c", parse_ops([{"increment": {"field": "n", "by": 2**70}}]))
    trigger = TriggerRegistry(store).register({"type": "state", "function_id": "h", "config": {}})
    store.close()

    again = open_store(tmp_path)
    assert again.list("users") == ['{"i":0}', '{"i":1}', '{"i":3}', '{"i":4}']
    assert again.list_groups() == ["counters", "other", "users"]
    assert again.get("counters", "c") == f'{{"n":{2**70}}}'
    assert again.get("other", "k") == "[]"
    assert [t.id for t in TriggerRegistry(again).list()] == [trigger.id]
    again.close()


def test_acknowledged_writes_survive_a_crash_before_any_save(tmp_path: Path) -> None:
    store = open_store(tmp_path, fsync="never")
    service = StateService(store)
    for i in range(200):
        service.call("state::set", {"scope": f"s{i % 7}", "key": f"k{i}", "value": {"i": i}})
    service.call("state::delete", {"scope": "s0", "key": "k0"})
    crash(store)
    assert not list(tmp_path.glob("scope-*.json"))  # nothing was saved: all of it is in the journal

    again = open_store(tmp_path)
    assert sum(len(again.list(f"s{j}")) for j in range(7)) == 199
    assert again.get("s0", "k0") is None and again.get("s1", "k1") == '{"i":1}'
    again.close()


def test_save_writes_only_changed_scopes_and_compacts_the_journal(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for scope in ("a", "b", "c"):
        store.set(scope, "k", "1")
    assert store.save() == 3
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("scope-*.json")}
    store.set("b", "k", "2")
    assert store.save() == 1
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("scope-*.json")}
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {scope_file_name("b")}
    journals = sorted(p.name for p in tmp_path.glob("journal-*.log"))
    assert len(journals) == 1 and (tmp_path / journals[0]).stat().st_size == 0
    assert store.save() == 0
    store.close()


def test_a_scope_emptied_by_deletes_loses_its_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.set("gone", "k", "1")
    store.save()
    assert (tmp_path / scope_file_name("gone")).exists()
    store.delete("gone", "k")
    store.save()
    assert not (tmp_path / scope_file_name("gone")).exists()
    store.close()


@pytest.mark.parametrize(
    "scope",
    [
        "../../x",
        "/abs",
        "..",
        ".",
        "a/b",
        "a\\b",
        "",
        "\x00",
        "CON",
        "A",
        "a",
        "%2F",
        "é",
        "x" * 1024,
        "é" * 512,
    ],
)
def test_scope_file_names_stay_inside_the_folder(scope: str) -> None:
    name = scope_file_name(scope)
    assert name.startswith("scope-") and name.endswith(".json")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode()) <= 255
    assert name == name.encode("ascii").decode()


def test_names_never_collide(tmp_path: Path) -> None:
    scopes = ["A", "a", "%41", "x" * 1024, "x" * 1023 + "y", "../x", "..%2Fx", "a b", "a_b", "a-b"]
    assert len({scope_file_name(s) for s in scopes}) == len(scopes)
    store = open_store(tmp_path)
    for scope in scopes:
        store.set(scope, "k", _json(scope))
    store.close()
    assert {p.parent for p in tmp_path.rglob("*")} == {tmp_path}
    again = open_store(tmp_path)
    assert again.list_groups() == sorted(scopes)
    assert all(again.get(scope, "k") == _json(scope) for scope in scopes)
    again.close()


def _json(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False, separators=(",", ":"))


def test_a_second_owner_is_refused_with_the_owners_pid(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(
        AdapterError, match=rf"already open in another process \(pid {os.getpid()}\)"
    ):
        open_store(tmp_path)
    store.close()
    open_store(tmp_path).close()  # free again once the owner let go


def test_a_torn_journal_tail_is_recovered_up_to_the_last_whole_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    store.set("s", "a", "1")
    store.set("s", "b", "2")
    crash(store)
    (journal,) = tmp_path.glob("journal-*.log")
    with journal.open("ab") as handle:
        handle.write(b'1234abcd {"op":"set","scope":"s","key":"c","val')  # a crash mid-append
    again = open_store(tmp_path)
    assert again.list("s") == ["1", "2"]
    assert "cut a torn last record" in caplog.text
    again.set("s", "d", "4")
    crash(again)
    third = open_store(tmp_path)
    assert third.list("s") == ["1", "2", "4"]
    third.close()


def test_a_corrupt_record_inside_the_journal_stops_start_up(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.set("s", "a", "1")
    store.set("s", "b", "2")
    crash(store)
    (journal,) = tmp_path.glob("journal-*.log")
    journal.write_bytes(journal.read_bytes().replace(b'"a"', b'"A"', 1))
    with pytest.raises(AdapterError, match=r"journal-.*\.log' is corrupt \(bad record at byte 0\)"):
        open_store(tmp_path)


def test_a_corrupt_scope_file_stops_start_up_or_is_moved_aside_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    store.set("good", "k", "1")
    store.set("bad", "k", "2")
    store.close()
    bad = tmp_path / scope_file_name("bad")
    bad.write_text(bad.read_text()[:20])  # truncated
    with pytest.raises(AdapterError) as info:
        open_store(tmp_path)
    assert str(bad) in info.value.message and "move_corrupt_aside" in info.value.message
    assert bad.exists()  # nothing touched

    store = open_store(tmp_path, move_corrupt_aside=True)
    assert store.list_groups() == ["good"]
    assert not bad.exists() and list(tmp_path.glob(f"{bad.name}.corrupt-*"))
    assert "moved corrupt" in caplog.text and "NOT loaded" in caplog.text
    store.close()


def test_the_saver_runs_on_its_interval(tmp_path: Path) -> None:
    import time

    store = FileKvStore(file_path=tmp_path, save_interval_ms=100)
    store.open()
    store.set("timed", "k", "1")
    deadline = time.monotonic() + 5
    while not (tmp_path / scope_file_name("timed")).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp_path / scope_file_name("timed")).exists()
    store.close()


@pytest.mark.parametrize("interval", [0, -5])
def test_non_positive_save_interval_is_refused(tmp_path: Path, interval: int) -> None:
    with pytest.raises(ConfigError, match="save_interval_ms: Input should be greater than 0"):
        FileKvStore(file_path=tmp_path, save_interval_ms=interval)


def test_applied_operation_ids_survive_a_crash_and_a_save(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    increment = parse_ops([{"increment": {"field": "n"}}])
    store.update("s", "c", increment, op_id="t1")
    crash(store)
    again = open_store(tmp_path)
    assert again.update("s", "c", increment, op_id="t1") == (None, '{"n":1}')  # replayed record
    again.update("s", "c", increment, op_id="t2")
    again.save()  # the journal is compacted: the records now live in ops.json
    again.close()
    third = open_store(tmp_path)
    assert third.update("s", "c", increment, op_id="t1") == (None, '{"n":1}')
    assert third.update("s", "c", increment, op_id="t2") == ('{"n":1}', '{"n":2}')
    assert third.get("s", "c") == '{"n":2}'
    third.close()


# -- pending expiries across a crash ---------------------------------------------------------


def set_key(service: StateService, key: str, ttl_ms: int | None = None) -> None:
    payload: dict[str, object] = {"scope": "s", "key": key, "value": key}
    if ttl_ms is not None:
        payload["ttl_ms"] = ttl_ms
    service.call("state::set", payload)


def expire_without_sending(store: FileKvStore, now: list[int], key: str) -> None:
    """Set ``key`` with a ttl, let it expire and have a sweep remove it, its event unsent
    (the worker dies before sending)."""
    events = Events()
    service = StateService(store, on_change=events)
    set_key(service, key, ttl_ms=10)
    now[0] += 10
    events.broken = True
    with pytest.raises(AdapterUnavailable):
        service.sweep_expired()


@pytest.mark.parametrize("saved", [False, True], ids=["journal", "ops.json"])
def test_the_file_store_sends_an_expiry_the_dead_worker_did_not(
    tmp_path: Path, saved: bool
) -> None:
    # Given a worker that removed an expired key and died before sending its event
    now = [1_000_000]
    store = open_store(tmp_path, clock_ms=lambda: now[0])
    expire_without_sending(store, now, "k")
    if saved:
        store.save()
    crash(store)
    # When a worker starts on the folder: its first sweep sends it, once
    store = open_store(tmp_path, clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events)
    assert store.get("s", "k") is None
    assert service.sweep_expired()[0] == 1
    assert service.sweep_expired()[0] == 0
    assert [event["key"] for event in events.expiries()] == ["k"]
    store.close()
    # And after a clean restart nothing is sent again
    store = open_store(tmp_path, clock_ms=lambda: now[0])
    assert StateService(store, on_change=events).sweep_expired()[0] == 0
    assert len(events.expiries()) == 1
    store.close()


def test_the_file_store_does_not_resend_a_sent_expiry_after_a_crash(tmp_path: Path) -> None:
    # Given an expiry whose event was sent, and a write after it (which journals that)
    now = [1_000_000]
    store = open_store(tmp_path, clock_ms=lambda: now[0])
    events = Events()
    service = StateService(store, on_change=events)
    set_key(service, "k", ttl_ms=10)
    now[0] += 10
    assert service.sweep_expired()[0] == 1
    set_key(service, "other")
    crash(store)
    # When a worker starts on the folder, it sends nothing again
    store = open_store(tmp_path, clock_ms=lambda: now[0])
    assert StateService(store, on_change=events).sweep_expired()[0] == 0
    assert len(events.expiries()) == 1
    store.close()
