"""state::batch, state::get_many and paged list/list_groups, against every adapter."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Recorder, plain
from test_file_store import crash, open_store

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.batch import DEFAULT_MAX_BATCH_OPERATIONS, BatchOp, encode_cursor
from state_tasks.core.errors import StateError
from state_tasks.core.ops import parse_ops
from state_tasks.core.service import StateService


def call(service: StateService, function_id: str, **payload: Any) -> Any:
    return plain(service.call(function_id, payload))


def set_op(key: str, value: Any) -> dict[str, Any]:
    return {"op": "set", "key": key, "value": value}


INCREMENT = [{"increment": {"field": "n", "by": 1}}]


# -- batch ----------------------------------------------------------------------------


def test_a_batch_applies_in_order_and_answers_like_the_single_calls(
    service: StateService, events: Recorder
) -> None:
    call(service, "state::set", scope="b", key="gone", value="old")
    result = call(
        service,
        "state::batch",
        scope="b",
        operations=[
            set_op("a", {"n": 1}),
            {"op": "update", "key": "a", "ops": INCREMENT},
            {"op": "delete", "key": "gone"},
            {"op": "delete", "key": "never"},
            {"op": "set", "key": "c", "data": [1]},
        ],
    )
    assert result == {
        "results": [
            {"old_value": None, "new_value": {"n": 1}},
            {"old_value": {"n": 1}, "new_value": {"n": 2}},
            "old",
            None,
            {"old_value": None, "new_value": [1]},
        ]
    }
    assert call(service, "state::get_many", scope="b", keys=["a", "gone", "c"]) == [
        {"n": 2},
        None,
        [1],
    ]
    # One event per change, in order, after the commit; the absent delete fires nothing
    assert events.kinds() == [
        "state:created",
        "state:created",
        "state:updated",
        "state:deleted",
        "state:created",
    ]
    assert [(e["key"], e["old_value"], e["new_value"]) for e in events.events[1:]] == [
        ("a", None, {"n": 1}),
        ("a", {"n": 1}, {"n": 2}),
        ("gone", "old", None),
        ("c", None, [1]),
    ]


@pytest.mark.parametrize(
    ("operation", "code", "message"),
    [
        ({"op": "merge", "key": "k"}, "VALIDATION_ERROR", "operation 2: unknown op 'merge'"),
        ({"op": "set", "key": "k"}, "VALIDATION_ERROR", "operation 2 (set): 'value' is missing"),
        ({"op": "delete", "key": ""}, "VALIDATION_ERROR", "operation 2 (delete): 'key'"),
        ({"op": "delete", "key": "k", "x": 1}, "VALIDATION_ERROR", "'x' is not a known field"),
        ("set", "VALIDATION_ERROR", "operation 2: must be an object"),
        ({"op": "update", "key": "k", "ops": {"set": 1}}, "UPDATE_OP_ERROR", "operation 2"),
        (
            {"op": "update", "key": "a", "ops": [{"increment": {"field": "s"}}]},
            "UPDATE_OP_ERROR",
            "operation 2 (update of key 'a')",
        ),
        ({"op": "set", "key": "k", "value": "x" * 2000}, "VALUE_TOO_LARGE", "operation 2"),
    ],
)
def test_one_bad_operation_fails_the_batch_writes_nothing_fires_nothing(
    make_adapter: Any, operation: Any, code: str, message: str
) -> None:
    events = Recorder()
    service = StateService(make_adapter(max_value_bytes=1000), on_change=events)
    with pytest.raises(StateError) as info:
        call(
            service,
            "state::batch",
            scope="b",
            operations=[set_op("a", {"s": "text"}), set_op("b", 2), operation],
        )
    assert info.value.code == code
    assert message in info.value.message and "wrote nothing" in info.value.message
    assert (info.value.details or {}).get("operation_index") == 2
    assert call(service, "state::list_groups") == {"groups": []}
    assert events.kinds() == []


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ([], "'operations' is empty"),
        (
            [set_op(f"k{i}", i) for i in range(DEFAULT_MAX_BATCH_OPERATIONS + 1)],
            "the limit is 1000",
        ),
        ("nope", "'operations' Input should be a valid list"),
    ],
)
def test_an_empty_or_oversized_batch_is_refused(
    service: StateService, events: Recorder, operations: Any, message: str
) -> None:
    with pytest.raises(StateError) as info:
        call(service, "state::batch", scope="b", operations=operations)
    assert info.value.code == "VALIDATION_ERROR" and message in info.value.message
    assert call(service, "state::list_groups") == {"groups": []}


def test_a_batch_of_the_maximum_size_is_applied(service: StateService) -> None:
    operations = [set_op(f"k{i:04d}", i) for i in range(DEFAULT_MAX_BATCH_OPERATIONS)]
    result = call(service, "state::batch", scope="big", operations=operations)
    assert len(result["results"]) == DEFAULT_MAX_BATCH_OPERATIONS
    page = call(service, "state::list", scope="big", limit=3, prefix="k09")
    assert page["items"] == [900, 901, 902]


def test_a_batch_that_empties_a_scope_removes_it_from_the_groups(service: StateService) -> None:
    call(service, "state::batch", scope="e", operations=[set_op("a", 1), set_op("b", 2)])
    assert call(service, "state::list_groups") == {"groups": ["e"]}
    call(
        service,
        "state::batch",
        scope="e",
        operations=[{"op": "delete", "key": "a"}, {"op": "delete", "key": "b"}],
    )
    assert call(service, "state::list_groups") == {"groups": []}
    assert call(service, "state::list", scope="e", limit=10) == {"items": [], "cursor": None}


def test_a_repeated_batch_applies_once_and_refires_with_the_same_event_ids(
    service: StateService, adapter: StateAdapter, events: Recorder
) -> None:
    payload = {
        "scope": "r",
        "operations": [
            {"op": "update", "key": "c", "ops": INCREMENT},
            {"op": "update", "key": "c", "ops": INCREMENT},
        ],
    }
    first = service.call("state::batch", payload, "batch-1")
    # A redelivery before the first delivery's thread moved on: the record is whole
    again = StateService(adapter, on_change=events).call("state::batch", payload, "batch-1")
    assert first == again
    assert plain(first) == {
        "results": [
            {"old_value": None, "new_value": {"n": 1}},
            {"old_value": {"n": 1}, "new_value": {"n": 2}},
        ]
    }
    assert [e["event_id"] for e in events.events] == ["batch-1:0", "batch-1:1"] * 2
    # Once settled (the service moved on), a repeat changes nothing and sends nothing
    call(service, "state::get", scope="r", key="c")
    settled = service.call("state::batch", payload, "batch-1")
    assert settled["replayed"] is True
    assert call(service, "state::get", scope="r", key="c") == {"n": 2}
    assert len(events.events) == 4


# -- get_many -------------------------------------------------------------------------


def test_get_many_returns_values_in_the_order_of_the_keys(service: StateService) -> None:
    call(service, "state::set", scope="g", key="a", value=1)
    call(service, "state::set", scope="g", key="n", value=None)
    assert call(service, "state::get_many", scope="g", keys=["x", "a", "n", "a"]) == [
        None,
        1,
        None,
        1,
    ]
    assert call(service, "state::get_many", scope="g", keys=[]) == []
    assert call(service, "state::get_many", scope="none", keys=["a"]) == [None]
    with pytest.raises(StateError, match=r"'keys\.1' must be a non-empty string"):
        call(service, "state::get_many", scope="g", keys=["a", ""])


# -- paging ---------------------------------------------------------------------------


def fill(service: StateService, scope: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 500):
        call(
            service,
            "state::batch",
            scope=scope,
            operations=[set_op(key, key) for key in keys[start : start + 500]],
        )


def all_pages(service: StateService, **payload: Any) -> list[list[Any]]:
    pages, cursor = [], None
    while True:
        page = service.call("state::list", payload | ({"cursor": cursor} if cursor else {}))
        pages.append(page["items"])
        cursor = page["cursor"]
        if cursor is None:
            return pages


def test_pages_walk_the_keys_in_sorted_order_exactly_once(service: StateService) -> None:
    keys = [f"k{i:03d}" for i in range(250)] + ["a", "é", "z", "💾"]
    fill(service, "p", list(reversed(keys)))
    pages = all_pages(service, scope="p", limit=100, with_keys=True)
    assert [len(page) for page in pages] == [100, 100, 54]
    walked = [item["key"] for page in pages for item in page]
    assert walked == sorted(keys)
    assert all(item["value"] == item["key"] for page in pages for item in page)
    # Without with_keys: bare values
    assert call(service, "state::list", scope="p", limit=2) == {
        "items": ["a", "k000"],
        "cursor": call(service, "state::list", scope="p", limit=2)["cursor"],
    }
    # A limit equal to what is left gives no extra empty page
    assert [len(p) for p in all_pages(service, scope="p", limit=127)] == [127, 127]


def test_a_prefix_returns_only_its_keys(service: StateService) -> None:
    fill(service, "p", ["user:1", "user:2", "user:10", "users", "use", "u", "v", "user;"])
    pages = all_pages(service, scope="p", prefix="user:", limit=2, with_keys=True)
    assert [item["key"] for page in pages for item in page] == ["user:1", "user:10", "user:2"]
    assert call(service, "state::list", scope="p", prefix="nothing") == {
        "items": [],
        "cursor": None,
    }
    assert call(service, "state::list", scope="p", prefix="")["items"] == sorted(
        ["user:1", "user:2", "user:10", "users", "use", "u", "v", "user;"]
    )


def test_keys_added_and_removed_between_pages(service: StateService) -> None:
    fill(service, "p", [f"k{i}" for i in range(10)])
    first = call(service, "state::list", scope="p", limit=5, with_keys=True)
    assert [i["key"] for i in first["items"]] == ["k0", "k1", "k2", "k3", "k4"]
    call(service, "state::delete", scope="p", key="k2")  # already returned
    call(service, "state::delete", scope="p", key="k6")  # not yet returned: skipped
    call(service, "state::set", scope="p", key="k55", value="new")
    rest = call(
        service, "state::list", scope="p", limit=100, cursor=first["cursor"], with_keys=True
    )
    assert [i["key"] for i in rest["items"]] == ["k5", "k55", "k7", "k8", "k9"]


def test_list_without_paging_options_is_unchanged(
    service: StateService, adapter: StateAdapter
) -> None:
    fill(service, "p", ["b", "a", "c"])
    values = call(service, "state::list", scope="p")
    assert values == ["b", "a", "c"] if adapter.ordered_list else sorted(values) == ["a", "b", "c"]
    assert call(service, "state::list_groups") == {"groups": ["p"]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"limit": 0}, "'limit' Input should be greater than or equal to 1"),
        ({"limit": 100_000}, "'limit' Input should be less than or equal to 10000"),
        ({"limit": "5"}, "'limit' Input should be a valid integer"),
        ({"cursor": "not a cursor!"}, "not base64url"),
        ({"cursor": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, "altered or forged"),
        ({"cursor": encode_cursor("list", "other", "", "k1")}, "belongs to another scope"),
        ({"cursor": encode_cursor("list", "p", "k", "k1")}, "another prefix"),
        ({"cursor": encode_cursor("list_groups", "", "", "k1")}, "belongs to another"),
        ({"with_keys": "yes"}, "'with_keys' Input should be a valid boolean"),
    ],
)
def test_bad_paging_options_are_refused(
    service: StateService, payload: dict[str, Any], message: str
) -> None:
    fill(service, "p", ["k1", "k2"])
    with pytest.raises(StateError) as info:
        service.call("state::list", {"scope": "p", **payload})
    assert info.value.code == "VALIDATION_ERROR"
    assert message in info.value.message


def test_a_tampered_cursor_is_refused(service: StateService) -> None:
    fill(service, "p", ["k1", "k2", "k3"])
    cursor = call(service, "state::list", scope="p", limit=1)["cursor"]
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    with pytest.raises(StateError, match="altered or forged"):
        call(service, "state::list", scope="p", limit=1, cursor=tampered)


def test_list_groups_pages_with_prefix_and_counts(service: StateService) -> None:
    for scope, n in [("team-b", 2), ("team-a", 1), ("other", 3), ("team-c", 1)]:
        fill(service, scope, [f"k{i}" for i in range(n)])
    page = call(service, "state::list_groups", prefix="team-", limit=2, with_counts=True)
    assert page["items"] == [{"scope": "team-a", "count": 1}, {"scope": "team-b", "count": 2}]
    rest = call(service, "state::list_groups", prefix="team-", limit=2, cursor=page["cursor"])
    assert rest == {"items": ["team-c"], "cursor": None}
    assert call(service, "state::list_groups", limit=10)["items"] == [
        "other",
        "team-a",
        "team-b",
        "team-c",
    ]
    with pytest.raises(StateError, match="another prefix"):
        call(service, "state::list_groups", prefix="x", cursor=page["cursor"])
    with pytest.raises(StateError, match="'limit' Input should be greater"):
        call(service, "state::list_groups", limit=0)


# -- adapter specifics ----------------------------------------------------------------


def test_file_store_journals_a_batch_as_one_record_and_replays_it_with_its_op_id(
    tmp_path: Path,
) -> None:
    # Given a batch applied under an operation id, then a kill -9 before any save
    store = open_store(tmp_path)
    ops = [
        BatchOp("set", "a", value_json="1"),
        BatchOp("update", "c", ops=tuple(parse_ops(INCREMENT))),
    ]
    results = store.batch("s", ops, "batch-1")
    journal = [p for p in tmp_path.iterdir() if p.name.startswith("journal-")]
    assert sum(p.read_bytes().count(b"\n") for p in journal) == 1  # one record
    crash(store)
    # When the store is opened again
    again = open_store(tmp_path)
    # Then the batch is all there, and a redelivery returns its results, changing nothing
    assert again.get_many("s", ["a", "c"]) == ["1", '{"n":1}']
    assert again.batch("s", ops, "batch-1") == results
    assert again.get("s", "c") == '{"n":1}'
    # And a torn batch record (a crash mid-append) leaves none of it
    crash(again)
    segment = max(p for p in tmp_path.iterdir() if p.name.startswith("journal-"))
    with segment.open("ab") as handle:
        handle.write(b'01234567 {"op":"batch","scope":"s","ops":[["a",2],["z"')
    third = open_store(tmp_path)
    assert third.get_many("s", ["a", "z"]) == ["1", None]
    third.close()


def test_redis_scope_written_before_the_key_index_pages_whole(redis_server: Any) -> None:
    # Given a scope written by an older release: its hash, and no key index
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix=f"legacy-{uuid.uuid4().hex}")
    raw = redis.Redis.from_url(redis_server.url(0), decode_responses=True)
    raw.hset(adapter.layout.scope_key("old"), mapping={f"k{i:02d}": str(i) for i in range(30)})
    raw.zadd(f"{adapter.key_prefix}:groups", {"old": 0})
    # When it changes (a new key, a deleted key) before any page
    adapter.set("old", "new", '"n"')
    adapter.delete("old", "k05")
    assert not raw.exists(adapter.layout.scope_key("old", "k"))  # no partial index
    # Then its pages hold every key, once, and the index is kept from then on
    keys, after, more = [], None, True
    while more:
        rows, more = adapter.list_page("old", "", after, 7)
        keys += [key for key, _ in rows]
        after = rows[-1][0] if rows else None
    assert keys == sorted({f"k{i:02d}" for i in range(30)} - {"k05"} | {"new"})
    adapter.set("old", "k05", "5")
    assert raw.zcard(adapter.layout.scope_key("old", "k")) == 31
    assert adapter.list_page("old", "k0", None, 100)[0][5] == ("k05", "5")
    adapter.close()
