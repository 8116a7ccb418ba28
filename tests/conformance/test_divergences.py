"""The seven divergences of issue 21, one named regression test (or a few) each, against
every adapter through the StateService: where the adapters answered one request in
different ways, the answer every adapter must give.

1. A redelivered ``update`` or ``batch`` is answered from its operation record, whatever
   the key holds now.
2. A redelivered delete of an absent key deletes nothing set since, even across a kill -9
   of the file store.
3. ``get_many`` of the documented maximum of keys answers every value.
4. ``list_groups`` lists no scope whose keys all expired (swept or not), and counts no
   expired key, however many scopes have keys due.
5. A stale ``if_version`` is a ``VERSION_CONFLICT`` even when the ops no longer fit the
   value: the operation record first, then ``if_version``, then the ops.
6. Versions are never reused after a delete and a re-create, even in a Redis scope written
   before versions existed.
7. Every ``UPDATE_OP_ERROR`` has ``details`` ``{"op_index": int, "reason": str}``.

The same through real workers (a repeated task id): tests/integration/test_divergences_workers.py.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import Recorder, plain
from test_file_store import crash

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.adapters.redis.layout import bucket_of
from state_tasks.core.batch import DEFAULT_MAX_BATCH_OPERATIONS, DEFAULT_MAX_GET_MANY_KEYS
from state_tasks.core.codec import MAX_STORED_DEPTH
from state_tasks.core.errors import StateError, VersionConflict
from state_tasks.core.ops import REASONS
from state_tasks.core.service import StateService

#: The Redis setups: what only a Redis scope can hold (data written by an older release).
REDIS_KINDS = ["redis", "redis_sentinel", "redis_cluster"]

INCREMENT = [{"increment": {"field": "n", "by": 1}}]


def versioned(service: StateService, scope: str, key: str) -> dict[str, Any]:
    return service.call("state::get", {"scope": scope, "key": key, "with_version": True})  # type: ignore[no-any-return]


def set_value(service: StateService, scope: str, key: str, value: Any) -> int:
    """Set a key (no operation id); return its new version."""
    return int(service.call("state::set", {"scope": scope, "key": key, "value": value})["version"])


# -- 1. a redelivered update or batch answers from its record ---------------------------------

UPDATE = {"scope": "s", "key": "c", "ops": INCREMENT}
BATCH = {
    "scope": "s",
    "operations": [
        {"op": "set", "key": "a", "value": 1},
        {"op": "update", "key": "c", "ops": INCREMENT},
    ],
}


def test_a_redelivered_update_whose_record_is_whole_answers_as_the_first_whatever_the_key_holds(
    adapter: StateAdapter, events: Recorder
) -> None:
    # Given an update applied under an operation id, its thread not moved on yet (its
    # record is whole), and another client that has set the key to a string since
    service = StateService(adapter, on_change=events)
    set_value(service, "s", "c", {"n": 1})
    first = service.call("state::update", UPDATE, "update-x")
    set_value(StateService(adapter, on_change=events), "s", "c", "oops")
    # When the update is delivered again (another worker runs it)
    again = StateService(adapter, on_change=events).call("state::update", UPDATE, "update-x")
    # Then it answers as the first did, version included, and sends its trigger work
    # again with the same event id; the string stays
    assert again == first
    assert plain(first) == {"old_value": {"n": 1}, "new_value": {"n": 2}}
    resent = [e for e in events.events if e["event_id"] == "update-x"]
    assert len(events.events) == 4 and events.events[3] in resent
    assert [(e["new_value"], e["version"]) for e in resent] == [({"n": 2}, first["version"])] * 2
    assert service.call("state::get", {"scope": "s", "key": "c"}) == "oops"


def test_a_redelivered_update_whose_record_is_settled_answers_replayed_whatever_the_key_holds(
    adapter: StateAdapter, events: Recorder
) -> None:
    # Given an update applied under an operation id, its trigger work sent and its thread
    # moved on (its record is settled), then the key set to a string by another client
    service = StateService(adapter, on_change=events)
    set_value(service, "s", "c", {"n": 1})
    first = service.call("state::update", UPDATE, "update-x")
    service.call("state::get", {"scope": "s", "key": "c"})  # the thread moves on: settles
    set_value(service, "s", "c", "oops")
    sent = len(events.events)
    # When the update is delivered again
    again = service.call("state::update", UPDATE, "update-x")
    # Then it is a settled repeat: nothing applied, nothing sent, the version it gave
    assert again == {
        "old_value": None,
        "new_value": None,
        "version": first["version"],
        "replayed": True,
    }
    assert len(events.events) == sent
    assert service.call("state::get", {"scope": "s", "key": "c"}) == "oops"


def test_a_redelivered_batch_whose_record_is_whole_answers_as_the_first_whatever_the_key_holds(
    adapter: StateAdapter, events: Recorder
) -> None:
    # Given a batch with an update applied under an operation id, its record whole, and
    # the updated key set to a string by another client since
    service = StateService(adapter, on_change=events)
    set_value(service, "s", "c", {"n": 1})
    first = service.call("state::batch", BATCH, "batch-x")
    set_value(StateService(adapter, on_change=events), "s", "c", "oops")
    # When the batch is delivered again
    again = StateService(adapter, on_change=events).call("state::batch", BATCH, "batch-x")
    # Then it answers as the first did and sends its trigger work again, same event ids
    assert again == first
    assert plain(first) == {
        "results": [
            {"old_value": None, "new_value": 1},
            {"old_value": {"n": 1}, "new_value": {"n": 2}},
        ]
    }
    batch_ids = [e["event_id"] for e in events.events if e["event_id"].startswith("batch-x")]
    assert batch_ids == ["batch-x:0", "batch-x:1", "batch-x:0", "batch-x:1"]
    assert service.call("state::get_many", {"scope": "s", "keys": ["a", "c"]}) == [1, "oops"]


def test_a_redelivered_batch_whose_record_is_settled_answers_replayed_whatever_the_key_holds(
    adapter: StateAdapter, events: Recorder
) -> None:
    # Given a batch with an update applied under an operation id and settled, then the
    # updated key set to a string by another client
    service = StateService(adapter, on_change=events)
    set_value(service, "s", "c", {"n": 1})
    first = service.call("state::batch", BATCH, "batch-x")
    service.call("state::get", {"scope": "s", "key": "c"})  # the thread moves on: settles
    set_value(service, "s", "c", "oops")
    sent = len(events.events)
    # When the batch is delivered again
    again = service.call("state::batch", BATCH, "batch-x")
    # Then it is a settled repeat with the versions it gave, and nothing more happens
    set_version, update_version = (result["version"] for result in first["results"])
    assert again == {
        "results": [
            {"old_value": None, "new_value": 1, "version": set_version},
            {"old_value": None, "new_value": None, "version": update_version},
        ],
        "replayed": True,
    }
    assert len(events.events) == sent
    assert service.call("state::get_many", {"scope": "s", "keys": ["a", "c"]}) == [1, "oops"]


# -- 2. a redelivered delete of an absent key, across a kill -9 --------------------------------


def restarted(adapter: StateAdapter, request: pytest.FixtureRequest) -> StateAdapter:
    """The adapter of a new worker after the old one was killed -9: the file store's folder
    reopened after a crash (no save, no flush), a new RedisAdapter on the same keys. The
    KvStore in memory dies with its process, and the Bridge's records are the remote's:
    those go on with the same adapter."""
    if isinstance(adapter, FileKvStore):
        crash(adapter)
        adapter._opened = False  # a dead process: the fixture has nothing left to close
        again: StateAdapter = FileKvStore(file_path=adapter.path, save_interval_ms=60_000)
    elif isinstance(adapter, RedisAdapter):
        again = RedisAdapter(
            redis_url=adapter.redis_url,
            master_name=adapter.master_name,
            key_prefix=adapter.key_prefix,
            wait_replicas=adapter.wait_replicas,
        )
    else:
        return adapter
    again.open()
    request.addfinalizer(again.close)
    return again


def test_a_redelivered_delete_of_an_absent_key_deletes_nothing_set_since_even_after_a_kill_9(
    adapter: StateAdapter, request: pytest.FixtureRequest
) -> None:
    if isinstance(adapter, FileKvStore):
        # The saver (every 50 ms here) would write the record down; a worker killed
        # between two saves has not: stop it, as the kill would
        adapter._stop.set()
        if adapter._saver is not None:
            adapter._saver.join()
    # Given a delete of an absent key under an operation id, and no write after it
    first = StateService(adapter, on_change=Recorder())
    assert first.call("state::delete", {"scope": "s", "key": "k"}, "delete-x") is None
    # When the worker is killed -9 and another one takes over, a client sets the key, and
    # the delete is delivered again
    events = Recorder()
    service = StateService(restarted(adapter, request), on_change=events)
    set_value(service, "s", "k", 1)
    repeat = service.call("state::delete", {"scope": "s", "key": "k"}, "delete-x")
    # Then the repeat deletes nothing: the key keeps the value set after the delete
    assert repeat is None
    assert service.call("state::get", {"scope": "s", "key": "k"}) == 1
    assert events.kinds() == ["state:created"]


# -- 3. get_many of the documented maximum --------------------------------------------------


def test_get_many_of_the_most_keys_it_takes_answers_every_value(service: StateService) -> None:
    # Given as many keys as get_many takes at most, each holding its own value
    keys = [f"k{i:05d}" for i in range(DEFAULT_MAX_GET_MANY_KEYS)]
    for start in range(0, len(keys), DEFAULT_MAX_BATCH_OPERATIONS):
        operations = [
            {"op": "set", "key": key, "value": {"i": i}}
            for i, key in enumerate(keys[start : start + DEFAULT_MAX_BATCH_OPERATIONS], start)
        ]
        service.call("state::batch", {"scope": "many", "operations": operations})
    # When they are read all at once, in another order than they were written
    values = service.call("state::get_many", {"scope": "many", "keys": keys[::-1]})
    # Then every value comes back, in the order of the keys asked for
    assert values == [{"i": i} for i in reversed(range(DEFAULT_MAX_GET_MANY_KEYS))]


# -- 4. list_groups and expired keys, past 10,000 scopes with keys due ---------------------------

#: More scopes with keys due than a look at the first 10,000 of them sees.
DUE_SCOPES = 10_050


@functools.cache
def due_scope_names() -> tuple[str, ...]:
    """``DUE_SCOPES`` names, then the two scopes the test watches (one whose key expires,
    one holding a key that expires beside one that never does), all in one bucket of the
    Redis Cluster layout: a cluster keeps a due index per bucket, so only scopes of one
    bucket put more than 10,000 into one index. (On the other adapters, names like any.)"""
    bucket = bucket_of("zz-gone")

    def in_bucket(stem: str) -> Any:
        names = (f"{stem}-{i:07d}" for i in itertools.count())
        return (name for name in names if bucket_of(name) == bucket)

    fillers = itertools.islice(in_bucket("due"), DUE_SCOPES)
    return (*fillers, next(in_bucket("zz-gone")), next(in_bucket("zz-mixed")))


def written_in_parallel(calls: list[Callable[[], Any]]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


@pytest.mark.expires_itself
def test_list_groups_lists_no_scope_whose_keys_all_expired_past_10000_scopes_with_keys_due(
    service: StateService,
) -> None:
    *fillers, gone, mixed = due_scope_names()

    def expiring(scope: str, key: str) -> Callable[[], Any]:
        payload = {"scope": scope, "key": key, "value": 0, "ttl_ms": 1}
        return functools.partial(service.call, "state::set", payload)

    # Given a scope whose keys never expire, more than 10,000 scopes whose one key expires,
    # then (due last) a scope whose one key expires and one holding a key that expires
    # beside one that never does; every key due, none swept yet
    set_value(service, "aa-live", "k", 0)
    set_value(service, mixed, "stays", 0)
    written_in_parallel([expiring(scope, "k") for scope in fillers])
    expiring(gone, "k")()
    expiring(mixed, "goes")()
    time.sleep(0.05)
    # When the groups are listed: plain, in pages, and with counts
    groups = service.call("state::list_groups")
    paged = service.call("state::list_groups", {"limit": 1000})
    counted = service.call("state::list_groups", {"limit": 1000, "with_counts": True})
    # Then only the scopes holding a live key are listed, each counting its live keys
    assert groups == {"groups": ["aa-live", mixed]}
    assert paged == {"items": ["aa-live", mixed], "cursor": None}
    assert counted == {
        "items": [{"scope": "aa-live", "count": 1}, {"scope": mixed, "count": 1}],
        "cursor": None,
    }


# -- 5. a stale if_version is a conflict, whatever the ops would do ----------------------------


def test_a_stale_if_version_is_a_version_conflict_even_when_the_ops_no_longer_fit(
    service: StateService, events: Recorder
) -> None:
    # Given a key read at one version, then set to a string by another client
    read = set_value(service, "s", "c", {"n": 1})
    current = set_value(service, "s", "c", "oops")
    # When an update of a field is sent with the version read
    with pytest.raises(VersionConflict) as raised:
        service.call("state::update", {**UPDATE, "if_version": read})
    # Then the answer is the conflict, naming both versions, and nothing is written
    assert raised.value.code == "VERSION_CONFLICT"
    assert raised.value.details == {"expected": read, "current": current}
    assert service.call("state::get", {"scope": "s", "key": "c"}) == "oops"
    assert len(events.events) == 2


def test_a_one_operation_batch_with_a_stale_if_version_is_the_same_version_conflict(
    service: StateService, events: Recorder
) -> None:
    read = set_value(service, "s", "c", {"n": 1})
    current = set_value(service, "s", "c", "oops")
    operations = [{"op": "update", "key": "c", "ops": INCREMENT, "if_version": read}]
    with pytest.raises(VersionConflict) as raised:
        service.call("state::batch", {"scope": "s", "operations": operations})
    assert raised.value.code == "VERSION_CONFLICT"
    assert raised.value.details == {"expected": read, "current": current, "operation_index": 0}
    assert service.call("state::get", {"scope": "s", "key": "c"}) == "oops"
    assert len(events.events) == 2


def test_a_batch_reports_its_first_failing_operation_checking_if_version_before_the_ops(
    service: StateService, events: Recorder
) -> None:
    # Given a key at a version a client no longer holds, and a key holding a string
    read = set_value(service, "s", "b", {"n": 1})
    current = set_value(service, "s", "b", {"n": 2})
    set_value(service, "s", "c", "oops")
    stale = {"op": "update", "key": "b", "ops": INCREMENT, "if_version": read}
    unfit = {"op": "update", "key": "c", "ops": INCREMENT}
    # When a batch holds the stale update first, Then its conflict is the answer
    with pytest.raises(StateError) as raised:
        service.call("state::batch", {"scope": "s", "operations": [stale, unfit]})
    assert raised.value.code == "VERSION_CONFLICT"
    assert raised.value.details == {"expected": read, "current": current, "operation_index": 0}
    # When it holds the update that does not fit first, Then that op error is the answer
    with pytest.raises(StateError) as raised:
        service.call("state::batch", {"scope": "s", "operations": [unfit, stale]})
    assert raised.value.code == "UPDATE_OP_ERROR"
    assert raised.value.details is not None
    assert raised.value.details["operation_index"] == 0
    # When an update whose if_version is stale only after an operation before it in the
    # batch, and whose ops do not fit, Then the conflict at its own index is the answer
    renew = {"op": "set", "key": "c", "value": "still a string"}
    after = {"op": "update", "key": "c", "ops": INCREMENT, "if_version": read}
    with pytest.raises(StateError) as raised:
        service.call("state::batch", {"scope": "s", "operations": [renew, after]})
    assert raised.value.code == "VERSION_CONFLICT"
    assert raised.value.details is not None
    assert raised.value.details["operation_index"] == 1
    assert raised.value.details["expected"] == read
    # And none of them wrote anything
    assert service.call("state::get_many", {"scope": "s", "keys": ["b", "c"]}) == [{"n": 2}, "oops"]
    assert len(events.events) == 3


def test_a_redelivered_update_with_if_version_answers_from_its_record_before_checking_it(
    adapter: StateAdapter, events: Recorder
) -> None:
    # Given an update applied at the version it named (which it moved on), its record
    # whole, and the key set to a string by another client since
    service = StateService(adapter, on_change=events)
    read = set_value(service, "s", "c", {"n": 1})
    conditional = {**UPDATE, "if_version": read}
    first = service.call("state::update", conditional, "update-x")
    set_value(StateService(adapter, on_change=events), "s", "c", "oops")
    # When it is delivered again, Then the record answers (no conflict, no op error)
    again = StateService(adapter, on_change=events).call("state::update", conditional, "update-x")
    assert again == first
    assert first["version"] > read
    assert service.call("state::get", {"scope": "s", "key": "c"}) == "oops"


# -- 6. versions are never reused --------------------------------------------------------------


def test_a_batch_that_deletes_and_re_creates_a_key_gives_it_a_version_never_used(
    service: StateService,
) -> None:
    # Given a key alone in its scope
    first = set_value(service, "v", "k", "a")
    # When a batch deletes it and creates it again at version 0 (absent)
    operations = [
        {"op": "delete", "key": "k"},
        {"op": "set", "key": "k", "value": "b", "if_version": 0},
    ]
    result = service.call("state::batch", {"scope": "v", "operations": operations})
    # Then the new key has a greater version, which the next conditional write takes
    deleted, created = result["results"]
    assert deleted == "a"
    assert created["version"] > first
    assert versioned(service, "v", "k")["version"] == created["version"]
    update = {"scope": "v", "key": "k", "ops": [{"set": "c"}], "if_version": created["version"]}
    assert service.call("state::update", update)["version"] > created["version"]


def write_before_versions(adapter: RedisAdapter, scope: str, fields: dict[str, str]) -> None:
    """A scope as a release before versions wrote it: its hash, its key index and its place
    in the groups index, and no versions hash."""
    client = adapter.client
    client.hset(adapter.layout.scope_key(scope), mapping=fields)
    client.zadd(adapter.layout.scope_key(scope, "k"), dict.fromkeys(fields, 0))
    layout = adapter.layout
    client.zadd(layout.groups_key(layout.tag(scope)), {scope: 0})
    assert not client.exists(adapter.layout.scope_key(scope, "v"))


@pytest.mark.parametrize("make_adapter", REDIS_KINDS, indirect=True)
def test_a_key_deleted_from_a_redis_scope_from_before_versions_is_re_created_at_a_new_version(
    adapter: RedisAdapter,
) -> None:
    # Given a scope written before versions, its one key at version 1
    service = StateService(adapter)
    write_before_versions(adapter, "old", {"k": '{"v":1}'})
    assert versioned(service, "old", "k")["version"] == 1
    # When the key is deleted (the scope empties) and set again
    assert service.call("state::delete", {"scope": "old", "key": "k"}) == {"v": 1}
    version = set_value(service, "old", "k", 2)
    # Then its version is not the 1 it had
    assert version > 1
    assert versioned(service, "old", "k") == {"value": 2, "version": version, "expires_in_ms": None}


@pytest.mark.parametrize("make_adapter", REDIS_KINDS, indirect=True)
def test_a_batch_re_creating_a_key_of_a_redis_scope_from_before_versions_gives_a_new_version(
    adapter: RedisAdapter,
) -> None:
    # Given a scope written before versions, its one key at version 1
    service = StateService(adapter)
    write_before_versions(adapter, "old", {"k": '{"v":1}'})
    # When a batch deletes the key and creates it again, at version 0 (absent)
    operations = [
        {"op": "delete", "key": "k"},
        {"op": "set", "key": "k", "value": 2, "if_version": 0},
        {"op": "set", "key": "j", "value": 3, "if_version": 0},
    ]
    result = service.call("state::batch", {"scope": "old", "operations": operations})
    # Then no conflict: the key has a version never used, the answer names the stored
    # version, and the next conditional write at that version is taken
    deleted, created, other = result["results"]
    assert deleted == {"v": 1}
    assert 1 < created["version"] < other["version"]
    assert versioned(service, "old", "k")["version"] == created["version"]
    update = {"scope": "old", "key": "k", "ops": [{"set": 4}], "if_version": created["version"]}
    assert service.call("state::update", update)["new_value"] == 4


# -- 7. every UPDATE_OP_ERROR names its op and a reason -------------------------------------------


def nested(depth: int) -> Any:
    """Arrays nested ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


#: Op 1 of each case makes a value that cannot be stored: deeper than MAX_STORED_DEPTH (a
#: value at that depth, set one level down), an integer of 4,301 digits (more than Python
#: writes as text), a lone surrogate.
UNSTORABLE = {
    "too_deep": {"type": "set", "path": ["deep"], "value": nested(MAX_STORED_DEPTH)},
    "huge_integer": {"type": "set", "path": ["big"], "value": 10**4300},
    "lone_surrogate": {"type": "set", "path": ["name"], "value": "\ud800"},
}


def unstorable_ops(case: str) -> list[dict[str, Any]]:
    """Ops 0 and 2 are harmless; op 1 makes the value unstorable (op 2 does not mend it)."""
    return [{"set": {"n": 1}}, UNSTORABLE[case], {"increment": {"field": "n"}}]


def assert_op_error_details(error: StateError, op_index: int) -> None:
    assert error.code == "UPDATE_OP_ERROR"
    details = error.details
    assert isinstance(details, dict)
    assert details["op_index"] == op_index and isinstance(details["op_index"], int)
    assert isinstance(details["reason"], str) and details["reason"] in REASONS


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_an_update_whose_result_cannot_be_stored_names_the_op_and_a_reason(
    service: StateService, events: Recorder, case: str
) -> None:
    set_value(service, "s", "c", {"n": 5})
    with pytest.raises(StateError) as raised:
        service.call("state::update", {"scope": "s", "key": "c", "ops": unstorable_ops(case)})
    assert_op_error_details(raised.value, 1)
    assert service.call("state::get", {"scope": "s", "key": "c"}) == {"n": 5}
    assert len(events.events) == 1


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_a_batch_update_whose_result_cannot_be_stored_names_the_op_and_the_operation(
    service: StateService, events: Recorder, case: str
) -> None:
    set_value(service, "s", "c", {"n": 5})
    operations = [
        {"op": "set", "key": "a", "value": 1},
        {"op": "update", "key": "c", "ops": unstorable_ops(case)},
    ]
    with pytest.raises(StateError) as raised:
        service.call("state::batch", {"scope": "s", "operations": operations})
    assert_op_error_details(raised.value, 1)
    assert raised.value.details is not None and raised.value.details["operation_index"] == 1
    assert service.call("state::get_many", {"scope": "s", "keys": ["a", "c"]}) == [None, {"n": 5}]
    assert len(events.events) == 1
