"""The live feed's changes, derived from Celery's task-event reprs (cut short or whole)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

from celery.utils.saferepr import saferepr

from state_tasks.console.changes import (
    FINISHED_EVENTS,
    ChangeFeed,
    changes_from_task,
    expiry_from_task,
    list_items,
    parse_repr,
    top_level_fields,
)


def r(value: Any) -> str:
    """What Celery puts in a task event (argsrepr_maxsize, resultrepr_maxsize)."""
    return str(saferepr(value, 1024))


def test_a_set_is_created_then_updated_with_exact_values() -> None:
    (row,) = changes_from_task(
        "state::set",
        r({"scope": "users", "key": "u1", "value": {"n": 10**30}}),
        r({"old_value": None, "new_value": {"n": 10**30}}),
        task_id="t1",
    )
    assert row["event_type"] == "state:created"
    assert (row["scope"], row["key"], row["new_value"], row["exact"]) == (
        "users",
        "u1",
        {"n": 10**30},
        True,
    )
    (row,) = changes_from_task(
        "state::update",
        r({"key": "u1", "scope": "users", "ops": []}),
        r({"old_value": {"n": 1}, "new_value": {"n": 2}}),
    )
    assert (row["event_type"], row["old_value"], row["new_value"]) == (
        "state:updated",
        {"n": 1},
        {"n": 2},
    )


def test_values_beyond_celerys_limits_keep_scope_key_and_type() -> None:
    deep = {"a": {"b": {"c": {"d": 1}}}}
    big = {"text": "x" * 5000}
    (row,) = changes_from_task(
        "state::set",
        r({"scope": "s", "key": "k", "value": big}),
        r({"old_value": deep, "new_value": big}),
    )
    assert (row["scope"], row["key"], row["event_type"], row["exact"]) == (
        "s",
        "k",
        "state:updated",
        False,
    )
    assert row["old_text"].startswith("{'a': {'b': {")
    assert row["new_text"].startswith("{'text': 'xxx")


def test_deletes_of_absent_keys_and_repeats_make_no_row() -> None:
    key = r({"scope": "s", "key": "k"})
    assert changes_from_task("state::delete", key, "None") == []
    assert (
        changes_from_task(
            "state::set",
            r({"scope": "s", "key": "k", "value": 1}),
            r({"old_value": None, "new_value": 1, "replayed": True}),
        )
        == []
    )
    assert changes_from_task("state::get", key, "1") == []
    (row,) = changes_from_task("state::delete", key, r({"gone": True}))
    assert (row["event_type"], row["old_value"], row["new_value"]) == (
        "state:deleted",
        {"gone": True},
        None,
    )


def test_a_cut_scope_is_not_shown_as_another_scope() -> None:
    long_scope = "s" * 1100
    assert (
        changes_from_task(
            "state::set",
            r({"scope": long_scope, "key": "k", "value": 1}),
            r({"old_value": None, "new_value": 1}),
        )
        == []
    )


def test_a_batch_gives_one_row_per_change() -> None:
    operations = [
        {"op": "set", "key": "a", "value": 1},
        {"op": "update", "key": "b", "ops": [{"increment": {"field": "n"}}]},
        {"op": "delete", "key": "c"},
        {"op": "delete", "key": "absent"},
    ]
    results = [
        {"old_value": None, "new_value": 1},
        {"old_value": {"n": 1}, "new_value": {"n": 2}},
        {"was": "c"},
        None,
    ]
    rows = changes_from_task(
        "state::batch", r({"scope": "s", "operations": operations}), r({"results": results})
    )
    assert [(row["key"], row["event_type"]) for row in rows] == [
        ("a", "state:created"),
        ("b", "state:updated"),
        ("c", "state:deleted"),
    ]


def test_a_batch_over_the_limits_says_so() -> None:
    operations = [{"op": "set", "key": f"k{i}", "value": "v" * 50} for i in range(100)]
    results = [{"old_value": None, "new_value": "v" * 50}] * 100
    rows = changes_from_task(
        "state::batch", r({"scope": "s", "operations": operations}), r({"results": results})
    )
    assert rows[0]["key"] == "k0"
    assert rows[-1]["event_type"] == "state:batch"


def test_reprs_are_parsed_never_evaluated() -> None:
    assert parse_repr("__import__('os').system('true')") == (False, None)
    assert parse_repr("{1, 2}") == (False, None)  # a set is not JSON
    assert parse_repr("{'a': {...}}") == (False, None)
    assert parse_repr("[1, 'x', None, True]") == (True, [1, "x", None, True])
    assert top_level_fields("{'scope': 's', 'value': {'a': [1, {...}]}, ...}") == {
        "scope": "'s'",
        "value": "{'a': [1, {...}]}",
    }
    assert list_items("[{'op': 'set'}, 'x', ...]") == ["{'op': 'set'}", "'x'"]
    assert top_level_fields("not a dict") == {}


def test_the_feed_pairs_received_and_succeeded_events_and_keeps_a_backlog() -> None:
    feed = ChangeFeed(app=None, backlog=2)
    seen: list[dict[str, Any]] = []
    unsubscribe = feed.subscribe(seen.append)
    for i in range(3):
        feed.handle(
            {
                "type": "task-received",
                "uuid": f"t{i}",
                "name": "state::set",
                "kwargs": r({"scope": "s", "key": f"k{i}", "value": i}),
            }
        )
        feed.handle(
            {
                "type": "task-succeeded",
                "uuid": f"t{i}",
                "result": r({"old_value": None, "new_value": i}),
                "hostname": "w1",
                "timestamp": 1_700_000_000.0,
            }
        )
    feed.handle(
        {
            "type": "task-received",
            "uuid": "f",
            "name": "state::set",
            "kwargs": r({"scope": "s", "key": "x"}),
        }
    )
    feed.handle({"type": "task-failed", "uuid": "f"})
    feed.handle({"type": "task-succeeded", "uuid": "never-received", "result": "1"})
    assert [row["key"] for row in seen] == ["k0", "k1", "k2"]
    assert [row["seq"] for row in feed.recent()] == [2, 3]
    assert [row["key"] for row in feed.recent(after_seq=2)] == ["k2"]
    unsubscribe()
    feed.publish([{"scope": "s", "key": "later"}])
    assert len(seen) == 3


def test_event_ids_carry_the_run_so_a_restarted_console_ignores_an_old_one() -> None:
    before, after = ChangeFeed(app=None), ChangeFeed(app=None)
    assert before.boot != after.boot
    before.publish([{"scope": "s", "key": f"k{i}"} for i in range(5)])
    old_id = before.event_id(before.recent()[-1])
    assert old_id == f"{before.boot}-5"
    assert before.seq_after(old_id) == 5
    # The console restarted: its numbers start again at 1, under another boot
    after.publish([{"scope": "s", "key": "new"}])
    assert after.seq_after(old_id) == 0
    assert [row["key"] for row in after.recent(after.seq_after(old_id))] == ["new"]
    for junk in (None, "", "5", f"{after.boot}-", f"{after.boot}-x", f"{after.boot}-" + "9" * 40):
        assert after.seq_after(junk) == 0, junk


def test_the_receiver_listens_to_every_event_that_ends_a_task() -> None:
    feed = ChangeFeed(app=None)
    subscribed: list[str] = []

    class Receiver:
        def __init__(self, connection: Any, handlers: dict[str, Any]) -> None:
            subscribed.extend(handlers)

        def capture(self, **kwargs: Any) -> None:
            feed._stop.set()

    feed.app = SimpleNamespace(
        events=SimpleNamespace(Receiver=Receiver),
        connection_for_read=contextlib.nullcontext,
    )
    feed._run()
    assert set(subscribed) == {"task-received", *FINISHED_EVENTS}
    assert "task-rejected" in subscribed

    # A rejected task (given up by its worker) leaves nothing pending
    feed.handle({"type": "task-received", "uuid": "t", "name": "state::set", "kwargs": "{}"})
    feed.handle({"type": "task-rejected", "uuid": "t", "requeue": False})
    assert not feed._pending


def test_rows_carry_the_version_and_a_deletes_reason() -> None:
    [row] = changes_from_task(
        "state::set",
        r({"scope": "s", "key": "k", "value": 2}),
        r({"old_value": 1, "new_value": 2, "version": 7}),
    )
    assert (row["event_type"], row["version"]) == ("state:updated", 7)
    [row] = changes_from_task("state::delete", r({"scope": "s", "key": "k"}), r(2))
    assert (row["reason"], row["version"]) == ("deleted", None)
    rows = changes_from_task(
        "state::batch",
        r({"scope": "s", "operations": [{"op": "set", "key": "a", "value": 1}]}),
        r({"results": [{"old_value": None, "new_value": 1, "version": 9}]}),
    )
    assert [(row["key"], row["version"]) for row in rows] == [("a", 9)]


def expiry_event(key: str, event_id: str, old: Any = None) -> dict[str, Any]:
    return {
        "type": "state",
        "event_type": "state:deleted",
        "scope": "sessions",
        "key": key,
        "old_value": {"user": "u1"} if old is None else old,
        "new_value": None,
        "event_id": event_id,
        "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "version": 4,
        "reason": "expired",
    }


def test_an_expiry_is_read_from_the_trigger_task_that_carries_it() -> None:
    row = expiry_from_task(r((expiry_event("s1", "e1"),)), task_id="t", worker="w")
    assert row is not None
    assert (row["event_type"], row["reason"], row["scope"], row["key"]) == (
        "state:deleted",
        "expired",
        "sessions",
        "s1",
    )
    assert (row["old_value"], row["version"], row["event_id"], row["exact"]) == (
        {"user": "u1"},
        4,
        "e1",
        True,
    )
    # A value nested past Celery's limit keeps the key and the reason, shown as Celery cut it
    deep = expiry_from_task(r((expiry_event("s2", "e2", old={"a": [{"b": {"c": 1}}] * 300}),)))
    assert deep is not None and deep["key"] == "s2" and not deep["exact"]
    assert deep["old_text"] == "{'a': [...]}"
    # A value so long that Celery cut the event before its reason: not taken for an expiry
    assert expiry_from_task(r((expiry_event("s4", "e4", old="x" * 5000),))) is None
    # Anything else is not an expiry
    deleted = expiry_event("s3", "e3") | {"reason": "deleted"}
    for args in ((deleted,), ({"expired": "expired"},), ("'expired'",), ()):
        assert expiry_from_task(r(args)) is None, args
    assert expiry_from_task("not a repr 'expired'") is None


def test_the_feed_shows_each_expiry_once() -> None:
    feed = ChangeFeed(app=None)
    seen: list[dict[str, Any]] = []
    feed.subscribe(seen.append)
    for task in ("handler", "condition", "other-handler"):
        feed.handle(
            {
                "type": "task-received",
                "uuid": task,
                "name": "test::onScope",
                "args": r((expiry_event("s1", "same-expiry"),)),
            }
        )
    feed.handle(
        {
            "type": "task-received",
            "uuid": "next",
            "name": "test::onScope",
            "args": r((expiry_event("s1", "next-expiry"),)),
        }
    )
    assert [(row["key"], row["event_id"], row["seq"]) for row in seen] == [
        ("s1", "same-expiry", 1),
        ("s1", "next-expiry", 2),
    ]
