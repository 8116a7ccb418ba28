"""Versions, compare-and-set (``if_version``) and keys that expire (``ttl_ms``), against
every adapter; then what only the KvStore (a clock of its own), the file store (restarts)
and Redis (data from before versions, two sweepers) can show."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Recorder
from test_file_store import crash, open_store

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.errors import StateError, VersionConflict
from state_tasks.core.models import MAX_TTL_MS
from state_tasks.core.service import StateService, expiry_event_id

#: Short enough for a test, long enough for a round trip to the Bridge's remote.
TTL_MS = 600


def call(service: StateService, function_id: str, **payload: Any) -> Any:
    return service.call(function_id, payload)


def versioned(service: StateService, scope: str, key: str) -> dict[str, Any]:
    return call(service, "state::get", scope=scope, key=key, with_version=True)  # type: ignore[no-any-return]


def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- versions ----------------------------------------------------------------------------


def test_every_change_gives_a_greater_version_and_get_can_show_it(
    service: StateService, events: Recorder
) -> None:
    assert versioned(service, "v", "k") == {"value": None, "version": 0, "expires_in_ms": None}
    first = call(service, "state::set", scope="v", key="k", value=1)["version"]
    second = call(service, "state::set", scope="v", key="k", value=2)["version"]
    third = call(service, "state::update", scope="v", key="k", ops=[{"set": 3}])["version"]
    assert 0 < first < second < third
    assert versioned(service, "v", "k") == {"value": 3, "version": third, "expires_in_ms": None}
    assert call(service, "state::get", scope="v", key="k") == 3  # without the flag: as before
    assert [e["version"] for e in events.events] == [first, second, third]


def test_a_version_is_never_reused_after_a_delete_and_a_re_create(
    service: StateService, events: Recorder
) -> None:
    seen = [call(service, "state::set", scope="v", key="k", value="a")["version"]]
    assert call(service, "state::delete", scope="v", key="k") == "a"  # shape unchanged
    deleted = events.events[-1]
    assert deleted["event_type"] == "state:deleted" and deleted["reason"] == "deleted"
    assert deleted["version"] == seen[0] or deleted["version"] == 0  # Bridge: unknown (0)
    seen.append(call(service, "state::set", scope="v", key="k", value="b")["version"])
    # The scope emptied too: its versions go on all the same
    call(service, "state::delete", scope="v", key="k")
    seen.append(call(service, "state::update", scope="v", key="k", ops=[{"set": 1}])["version"])
    assert seen == sorted(set(seen))


def test_if_version_writes_only_at_that_version(
    service: StateService, events: Recorder, adapter: StateAdapter
) -> None:
    created = call(service, "state::set", scope="v", key="k", value=1, if_version=0)
    version = created["version"]
    # A stale version: nothing written, nothing fired, both versions named
    for function_id, extra in (
        ("state::set", {"value": 2}),
        ("state::update", {"ops": [{"set": 2}]}),
        ("state::delete", {}),
    ):
        with pytest.raises(VersionConflict) as raised:
            call(service, function_id, scope="v", key="k", if_version=version + 1000, **extra)
        assert raised.value.code == "VERSION_CONFLICT"
        assert raised.value.details == {"expected": version + 1000, "current": version}
        assert str(version + 1000) in raised.value.message
        assert str(version) in raised.value.message
    with pytest.raises(VersionConflict) as raised:
        call(service, "state::set", scope="v", key="k", value=2, if_version=0)
    assert raised.value.details == {"expected": 0, "current": version}
    with pytest.raises(VersionConflict) as raised:
        call(service, "state::delete", scope="v", key="absent", if_version=3)
    assert raised.value.details == {"expected": 3, "current": 0}
    assert call(service, "state::get", scope="v", key="k") == 1
    assert len(events.events) == 1
    # The current version: applied
    updated = call(
        service, "state::update", scope="v", key="k", ops=[{"set": 5}], if_version=version
    )
    assert updated["new_value"] == 5 and updated["version"] > version
    assert call(service, "state::delete", scope="v", key="k", if_version=updated["version"]) == 5
    assert adapter.get("v", "k") is None


def test_a_batch_conflict_fails_the_whole_batch_naming_the_operation(
    service: StateService, events: Recorder
) -> None:
    version = call(service, "state::set", scope="b", key="a", value=1)["version"]
    with pytest.raises(VersionConflict) as raised:
        call(
            service,
            "state::batch",
            scope="b",
            operations=[
                {"op": "set", "key": "new", "value": 1, "if_version": 0},
                {"op": "update", "key": "a", "ops": [{"set": 2}], "if_version": version + 7},
            ],
        )
    assert raised.value.details == {
        "expected": version + 7,
        "current": version,
        "operation_index": 1,
    }
    assert "operation 1" in raised.value.message
    assert call(service, "state::get_many", scope="b", keys=["a", "new"]) == [1, None]
    assert len(events.events) == 1
    result = call(
        service,
        "state::batch",
        scope="b",
        operations=[
            {"op": "update", "key": "a", "ops": [{"set": 2}], "if_version": version},
            {"op": "set", "key": "new", "value": 1, "if_version": 0},
            {"op": "delete", "key": "a"},
        ],
    )
    first, second, deleted = result["results"]
    assert first["version"] > version and second["version"] > first["version"]
    assert deleted == 2
    assert [e.get("version") for e in events.events[1:3]] == [first["version"], second["version"]]


def test_a_whole_record_replays_with_the_same_version(
    service: StateService, adapter: StateAdapter, events: Recorder
) -> None:
    first = service.call("state::set", {"scope": "r", "key": "k", "value": 1}, "op-set")
    again = StateService(adapter, on_change=events).call(
        "state::set", {"scope": "r", "key": "k", "value": 1}, "op-set"
    )
    assert again == first
    update = {"scope": "r", "key": "k", "ops": [{"set": 2}]}
    first = service.call("state::update", update, "op-update")
    assert StateService(adapter, on_change=events).call("state::update", update, "op-update") == (
        first
    )
    assert [e["version"] for e in events.events] == [
        events.events[0]["version"],
        events.events[0]["version"],
        first["version"],
        first["version"],
    ]


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("ttl_ms", 0),
        ("ttl_ms", -5),
        ("ttl_ms", 1.5),
        ("ttl_ms", True),
        ("ttl_ms", MAX_TTL_MS + 1),
        ("if_version", -1),
        ("if_version", 2.0),
        ("if_version", False),
        ("if_version", "3"),
    ],
)
def test_bad_ttl_and_if_version_are_validation_errors(
    service: StateService, events: Recorder, name: str, bad: Any
) -> None:
    for function_id, extra in (
        ("state::set", {"value": 1}),
        ("state::update", {"ops": [{"set": 1}]}),
        ("state::batch", None),
    ):
        if name == "ttl_ms" and function_id == "state::delete":
            continue
        if extra is None:
            payload = {"operations": [{"op": "set", "key": "k", "value": 1, name: bad}]}
            with pytest.raises(StateError) as raised:
                call(service, function_id, scope="bad", **payload)
        else:
            with pytest.raises(StateError) as raised:
                call(service, function_id, scope="bad", key="k", **extra, **{name: bad})
        assert raised.value.code == "VALIDATION_ERROR"
        assert name in raised.value.message
    if name == "if_version":
        with pytest.raises(StateError, match="if_version"):
            call(service, "state::delete", scope="bad", key="k", if_version=bad)
    with pytest.raises(StateError, match="with_version"):
        call(service, "state::get", scope="bad", key="k", with_version="yes")
    assert events.events == []


# -- expiry --------------------------------------------------------------------------------


def test_an_expired_key_is_gone_for_every_reader_before_any_sweep(
    service: StateService, adapter: StateAdapter
) -> None:
    scope = f"ttl-{uuid.uuid4().hex[:6]}"
    call(service, "state::set", scope=scope, key="short", value="s", ttl_ms=TTL_MS)
    call(service, "state::set", scope=scope, key="stays", value="p")
    call(service, "state::set", scope=f"{scope}-alone", key="short", value="s", ttl_ms=TTL_MS)
    entry = versioned(service, scope, "short")
    assert entry["value"] == "s" and 0 < entry["expires_in_ms"] <= TTL_MS
    assert versioned(service, scope, "stays")["expires_in_ms"] is None
    time.sleep(TTL_MS / 1000 + 0.1)
    assert call(service, "state::get", scope=scope, key="short") is None
    assert versioned(service, scope, "short") == {
        "value": None,
        "version": 0,
        "expires_in_ms": None,
    }
    assert call(service, "state::list", scope=scope) == ["p"]
    assert call(service, "state::get_many", scope=scope, keys=["short", "stays"]) == [None, "p"]
    page = call(service, "state::list", scope=scope, limit=1, with_keys=True)
    assert page == {"items": [{"key": "stays", "value": "p"}], "cursor": None}
    groups = call(service, "state::list_groups")["groups"]
    assert scope in groups and f"{scope}-alone" not in groups
    counted = call(service, "state::list_groups", prefix=scope, with_counts=True)
    assert counted["items"] == [{"scope": scope, "count": 1}]


@pytest.mark.expires_itself
def test_each_expiry_fires_one_deleted_event_with_reason_expired(
    service: StateService, adapter: StateAdapter, events: Recorder
) -> None:
    version = call(service, "state::set", scope="e", key="k", value={"a": 1}, ttl_ms=200)["version"]
    call(service, "state::set", scope="e", key="later", value=1, ttl_ms=60_000)
    fired, next_due = service.sweep_expired()
    assert fired == 0 and next_due is not None and next_due <= 200
    time.sleep(0.3)
    total = 0
    for _ in range(3):  # a second sweep finds nothing more
        total += service.sweep_expired()[0]
    assert total == 1
    expired = events.events[-1]
    assert expired["event_type"] == "state:deleted" and expired["reason"] == "expired"
    assert expired["old_value"] == {"a": 1} and expired["new_value"] is None
    assert expired["version"] == version
    assert expired["event_id"] == expiry_event_id("e", "k", version)
    assert adapter.get("e", "k") is None and adapter.get("e", "later") == "1"


@pytest.mark.expires_itself
def test_a_write_meeting_an_expired_key_fires_its_expiry_first(
    service: StateService, adapter: StateAdapter, events: Recorder
) -> None:
    version = call(service, "state::set", scope="w", key="k", value=1, ttl_ms=100)["version"]
    time.sleep(0.2)
    result = call(service, "state::update", scope="w", key="k", ops=[{"increment": {"field": "n"}}])
    assert result["old_value"] is None and result["new_value"] == {"n": 1}
    assert [(e["event_type"], e.get("reason")) for e in events.events[1:]] == [
        ("state:deleted", "expired"),
        ("state:created", None),
    ]
    assert events.events[1]["version"] == version
    assert service.sweep_expired()[0] == 0  # not twice
    assert versioned(service, "w", "k")["expires_in_ms"] is None  # the new key is permanent


def test_set_without_ttl_makes_permanent_and_update_without_ttl_keeps_the_expiry(
    service: StateService,
) -> None:
    call(service, "state::set", scope="p", key="k", value=1, ttl_ms=60_000)
    call(service, "state::update", scope="p", key="k", ops=[{"set": 2}])
    left = versioned(service, "p", "k")["expires_in_ms"]
    assert left is not None and 50_000 < left <= 60_000
    call(service, "state::update", scope="p", key="k", ops=[{"set": 3}], ttl_ms=120_000)
    assert versioned(service, "p", "k")["expires_in_ms"] > 100_000
    call(service, "state::set", scope="p", key="k", value=4)
    assert versioned(service, "p", "k")["expires_in_ms"] is None
    call(
        service,
        "state::batch",
        scope="p",
        operations=[
            {"op": "set", "key": "k", "value": 5, "ttl_ms": 30_000},
            {"op": "update", "key": "k", "ops": [{"set": 6}]},
        ],
    )
    entry = versioned(service, "p", "k")
    assert entry["value"] == 6 and 20_000 < entry["expires_in_ms"] <= 30_000


# -- one adapter at a time -----------------------------------------------------------------


def test_the_kv_store_expires_on_its_own_clock() -> None:
    now = [1_000_000]
    store = KvStore(clock_ms=lambda: now[0], op_window_s=60)
    events = Recorder()
    service = StateService(store, on_change=events)
    call(service, "state::set", scope="c", key="k", value=1, ttl_ms=1000)
    now[0] += 999
    assert call(service, "state::get", scope="c", key="k") == 1
    assert service.sweep_expired() == (0, 1.0)
    now[0] += 1
    assert call(service, "state::get", scope="c", key="k") is None
    assert service.sweep_expired() == (1, None)
    assert events.kinds() == ["state:created", "state:deleted"]
    # Rewritten keys leave stale heap entries that expire nothing
    for i in range(5):
        call(service, "state::set", scope="c", key="k", value=i, ttl_ms=10 + i)
    call(service, "state::set", scope="c", key="k", value="kept")
    now[0] += 100
    assert service.sweep_expired()[0] == 0
    assert call(service, "state::get", scope="c", key="k") == "kept"


def test_the_file_store_keeps_versions_and_expiries_across_restarts(tmp_path: Path) -> None:
    now = [5_000_000]
    clock = {"clock_ms": lambda: now[0]}
    store = open_store(tmp_path, **clock)
    service = StateService(store)
    kept = call(service, "state::set", scope="f", key="k", value=1, ttl_ms=10_000)["version"]
    call(service, "state::set", scope="f", key="gone", value=1)
    gone_version = call(service, "state::delete", scope="f", key="gone")
    assert gone_version == 1
    batch = call(
        service,
        "state::batch",
        scope="f",
        operations=[{"op": "set", "key": "b", "value": 2, "ttl_ms": 20_000}],
    )["results"][0]["version"]
    crash(store)  # the journal alone
    store = open_store(tmp_path, **clock)
    service = StateService(store)
    assert versioned(service, "f", "k") == {"value": 1, "version": kept, "expires_in_ms": 10_000}
    assert versioned(service, "f", "b")["version"] == batch
    store.save()
    store.close()  # now from the scope files
    now[0] += 15_000  # "k" expired while the store was closed
    store = open_store(tmp_path, **clock)
    events = Recorder()
    service = StateService(store, on_change=events)
    assert call(service, "state::get", scope="f", key="k") is None
    assert versioned(service, "f", "b")["expires_in_ms"] == 5_000
    assert service.sweep_expired()[0] == 1
    assert events.events[0]["reason"] == "expired" and events.events[0]["version"] == kept
    later = call(service, "state::set", scope="f", key="gone", value=2)["version"]
    assert later > batch  # the counter survived the restarts
    store.close()


def test_a_file_store_from_before_versions_loads_at_version_one(tmp_path: Path) -> None:
    document = {
        "format": "state_tasks.kv_scope",
        "version": 1,
        "scope": "old",
        "entries": [["k", {"v": 1}]],
    }
    (tmp_path / "scope-old.json").write_text(json.dumps(document))
    store = open_store(tmp_path)
    service = StateService(store)
    assert versioned(service, "old", "k") == {
        "value": {"v": 1},
        "version": 1,
        "expires_in_ms": None,
    }
    assert call(service, "state::set", scope="old", key="k", value=2, if_version=1)["version"] > 1
    store.close()


def test_redis_data_from_before_versions_is_at_version_one(redis_server: Any) -> None:
    prefix = f"legacy-{uuid.uuid4().hex[:8]}"
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix=prefix)
    service = StateService(adapter)
    # Given a scope written by the previous release: a hash and nothing else
    raw = redis.Redis.from_url(redis_server.url(0))
    raw.hset(adapter.layout.scope_key("old"), mapping={"a": '{"v":1}', "b": "2"})
    raw.zadd(f"{prefix}:groups", {"old": 0})
    assert versioned(service, "old", "a") == {
        "value": {"v": 1},
        "version": 1,
        "expires_in_ms": None,
    }
    with pytest.raises(VersionConflict):
        call(service, "state::delete", scope="old", key="b", if_version=2)
    assert call(service, "state::delete", scope="old", key="b", if_version=1) == 2
    version = call(service, "state::set", scope="old", key="b", value=3)["version"]
    assert version > 1  # never the 1 that "b" had
    assert (
        call(service, "state::set", scope="old", key="a", value=4, if_version=1)["version"]
        > version
    )
    adapter.close()


def test_two_redis_sweepers_never_both_get_an_expiry(redis_server: Any) -> None:
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    adapters = [RedisAdapter(redis_url=redis_server.url(0), key_prefix=prefix) for _ in range(3)]
    writer = StateService(adapters[0])
    for i in range(300):
        call(writer, "state::set", scope=f"s{i % 7}", key=f"k{i}", value=i, ttl_ms=50 + i)
    fired: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(event: dict[str, Any]) -> None:
        with lock:
            fired.append(event)

    stop = time.monotonic() + 3.0

    def sweep(adapter: RedisAdapter) -> None:
        service = StateService(adapter, on_change=record)
        while time.monotonic() < stop:
            service.sweep_expired(limit=20)

    threads = [threading.Thread(target=sweep, args=(a,)) for a in adapters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = sorted(e["key"] for e in fired)
    assert keys == sorted(f"k{i}" for i in range(300))
    assert all(e["reason"] == "expired" for e in fired)
    for adapter in adapters:
        adapter.close()
