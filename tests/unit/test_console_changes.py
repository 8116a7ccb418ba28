"""The live feed's logic over a real change log in process (a KvStore's, read through a
StateService as a worker reads it): exact rows, resuming from the saved cursor, compaction,
the log off, and a page catching up from its own cursor. No broker, no thread: each test
calls ``poll()`` itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from state_tasks.adapters.kv_store import KvStore
from state_tasks.console.changes import (
    LOG_OFF_RETRY_S,
    RETRY_S,
    CatchUp,
    ChangeFeed,
    CursorFile,
    Row,
    change_row,
    state_folder,
)
from state_tasks.console.gateway import ConsoleError
from state_tasks.console.values import PREVIEW_MAX_CHARS
from state_tasks.core.changes import ChangeLogSettings
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService


class Deployment:
    """A KvStore with its change log, and the ``state::changes`` call a console makes."""

    def __init__(self, max_entries: int | None = None, log: bool = True) -> None:
        adapter = KvStore()
        if not log:
            adapter.use_change_log(None)
        elif max_entries is not None:
            adapter.use_change_log(ChangeLogSettings(max_entries=max_entries))
        adapter.open()
        self.service = StateService(adapter)
        self.reads: list[dict[str, Any]] = []

    def call(self, function_id: str, **payload: Any) -> Any:
        return self.service.call(function_id, payload)

    def read(self, payload: dict[str, Any]) -> Any:
        """What the gateway does: the call, its StateError as a ConsoleError."""
        self.reads.append(dict(payload))
        try:
            return self.service.call("state::changes", payload)
        except StateError as e:
            raise ConsoleError(e.code, e.message, e.details) from None

    async def read_async(self, payload: dict[str, Any]) -> Any:
        return self.read(payload)


def changes(rows: list[Row]) -> list[tuple[str, str, int]]:
    return [(row["event_type"], row["key"], row["version"]) for row in rows if "notice" not in row]


def drain(feed: ChangeFeed) -> None:
    while feed.poll() == 0:
        pass


def test_rows_hold_exact_values_and_a_long_one_as_a_preview_with_its_size() -> None:
    deployment = Deployment()
    big = {"text": "lorem ipsum " * 2000, "n": 10**30}
    deployment.call("state::set", scope="s", key="big", value=big)
    deployment.call("state::set", scope="s", key="small", value={"n": 10**30, "é": None})
    feed = ChangeFeed(deployment.read)
    assert feed.poll() == feed.poll_interval_s  # not a full page: wait before the next
    big_row, small_row = feed.rows_from(1)
    text = json.dumps(big, ensure_ascii=False)
    assert big_row["old"] is None  # created
    assert big_row["new"] == {
        "preview": text[:PREVIEW_MAX_CHARS],
        "size": len(text.encode()),
        "truncated": True,
    }
    assert json.loads(small_row["new"]["json"]) == {"n": 10**30, "é": None}
    assert small_row["new"]["json"].startswith('{"n": 1000000000000000000000000000000')
    # Each row says where it was read from: the one before it's cursor (the first: none)
    assert big_row["from"] is None and small_row["from"] == big_row["cursor"]
    assert feed.cursor == small_row["cursor"]
    assert feed.status() == {"connected": True, "error": None, "log": "on", "state": "live"}


def test_each_batch_operation_and_a_delete_are_rows_with_their_keys() -> None:
    deployment = Deployment()
    deployment.call("state::set", scope="s", key="gone", value="old")
    deployment.call(
        "state::batch",
        scope="s",
        operations=[
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "b", "value": [2]},
            {"op": "delete", "key": "gone"},
        ],
    )
    feed = ChangeFeed(deployment.read)
    feed.poll()
    rows = feed.rows_from(1)
    assert [(r["event_type"], r["key"]) for r in rows] == [
        ("state:created", "gone"),
        ("state:created", "a"),
        ("state:created", "b"),
        ("state:deleted", "gone"),
    ]
    deleted = rows[-1]
    assert (deleted["old"], deleted["new"], deleted["reason"]) == (
        {"json": '"old"', "size": 5},
        None,
        "deleted",
    )


def test_an_expiry_entry_is_a_deleted_row_with_reason_expired() -> None:
    entry = {
        "type": "state",
        "event_type": "state:deleted",
        "scope": "sessions",
        "key": "s1",
        "old_value": {"user": "u1"},
        "new_value": None,
        "event_id": "expired-abc",
        "timestamp": "2026-12-02T08:00:00.000000+00:00",
        "version": 3,
        "reason": "expired",
        "cursor": "c2",
    }
    row = change_row(entry, "c1")
    assert row == {
        "event_type": "state:deleted",
        "scope": "sessions",
        "key": "s1",
        "version": 3,
        "event_id": "expired-abc",
        "time": "2026-12-02T08:00:00.000000+00:00",
        "cursor": "c2",
        "from": "c1",
        "old": {"json": '{"user": "u1"}', "size": 14},
        "new": None,
        "reason": "expired",
    }


def test_a_full_page_is_followed_by_another_read_at_once() -> None:
    deployment = Deployment()
    for i in range(5):
        deployment.call("state::set", scope="s", key=f"k{i}", value=i)
    feed = ChangeFeed(deployment.read, read_limit=2)
    assert [feed.poll(), feed.poll(), feed.poll()] == [0, 0, feed.poll_interval_s]
    assert [key for _, key, _ in changes(feed.rows_from(1))] == [f"k{i}" for i in range(5)]
    assert feed.poll() == feed.poll_interval_s and feed.next_seq == 6  # nothing new


def test_a_restarted_console_resumes_from_its_saved_cursor(tmp_path: Path) -> None:
    deployment = Deployment()
    file = CursorFile.for_deployment("redis://:***@broker:6379/0", tmp_path)
    assert "***" not in file.path.name
    deployment.call("state::set", scope="s", key="before", value=1)
    first = ChangeFeed(deployment.read, cursor_file=file)
    first.poll()
    first.stop()  # saves
    saved = json.loads(file.path.read_text())
    assert saved["cursor"] == first.cursor and saved["broker"] == "redis://:***@broker:6379/0"

    # Changes made while the console is down show when it is back, none twice
    deployment.call("state::set", scope="s", key="while-down", value=2)
    second = ChangeFeed(deployment.read, cursor_file=file)
    assert second.cursor == first.cursor
    second.poll()
    assert changes(second.rows_from(1)) == [("state:created", "while-down", 2)]
    # A page that had seen the first run's last change goes on right after it
    assert second.seq_after(first.cursor) == 1


def test_the_position_is_saved_at_most_once_a_second(tmp_path: Path) -> None:
    deployment = Deployment()
    now = [100.0]
    file = CursorFile(tmp_path / "feed.json")
    feed = ChangeFeed(deployment.read, cursor_file=file, clock=lambda: now[0])
    deployment.call("state::set", scope="s", key="a", value=1)
    feed.poll()
    assert not file.path.exists()  # less than a second since the start
    now[0] += 1.0
    feed.poll()
    assert json.loads(file.path.read_text())["cursor"] == feed.cursor


def test_an_unwritable_state_folder_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "blocked").write_text("a file, not a folder")
    file = CursorFile(tmp_path / "blocked" / "feed.json")
    file.save("c1", None)
    file.save("c2", None)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "cannot save its position" in caplog.records[0].message
    assert file.load() is None


def test_the_state_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_folder() == tmp_path / "state-tasks"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_folder() == tmp_path / "home" / ".local" / "state" / "state-tasks"


def test_a_trimmed_log_gives_a_notice_and_the_feed_goes_on_from_the_oldest_kept() -> None:
    deployment = Deployment(max_entries=5)
    deployment.call("state::set", scope="s", key="k", value=0)
    feed = ChangeFeed(deployment.read)
    feed.poll()
    last_seen = feed.rows_from(1)[-1]["time"]
    for i in range(1, 20):
        deployment.call("state::set", scope="s", key="k", value=i)
    drain(feed)
    notice, *rest = feed.rows_from(2)
    assert notice["notice"] == "compacted"
    assert notice["since"] == last_seen and notice["until"] == rest[0]["time"]
    assert notice["message"] == (
        f"changes between {last_seen} and {rest[0]['time']} were trimmed from the log; "
        "continuing from the oldest kept"
    )
    # what follows is every change still kept, in order, none missing
    versions = [version for _, _, version in changes(rest)]
    assert versions == list(range(versions[0], 21)) and versions[0] > 2
    assert feed.status()["connected"]


def test_with_the_log_off_the_status_says_so() -> None:
    feed = ChangeFeed(Deployment(log=False).read)
    assert feed.poll() == LOG_OFF_RETRY_S
    status = feed.status()
    assert status["log"] == "off" and status["connected"]
    assert "change log" in status["error"] and "off" in status["error"]
    assert feed.rows_from(1) == []


def test_a_failed_read_is_shown_and_the_next_one_goes_on() -> None:
    deployment = Deployment()
    failing = [True]

    def read(payload: dict[str, Any]) -> Any:
        if failing[0]:
            raise ConsoleError("BROKER_UNREACHABLE", "cannot reach the broker at redis://h")
        return deployment.read(payload)

    woken: list[int] = []
    feed = ChangeFeed(read)
    feed.subscribe(lambda: woken.append(1))
    assert feed.poll() == RETRY_S
    assert feed.status() == {
        "connected": False,
        "error": "BROKER_UNREACHABLE: cannot reach the broker at redis://h",
        "log": None,
        "state": "unreachable",  # the page's dot: red
    }
    assert feed.poll() == RETRY_S and len(woken) == 1  # the same status: no wake-up
    failing[0] = False
    deployment.call("state::set", scope="s", key="k", value=1)
    feed.poll()
    assert feed.status()["connected"] and changes(feed.rows_from(1)) == [("state:created", "k", 1)]
    assert len(woken) == 2


def test_a_saved_cursor_the_deployment_refuses_starts_over_with_a_notice(tmp_path: Path) -> None:
    deployment = Deployment()
    deployment.call("state::set", scope="s", key="k", value=1)
    file = CursorFile(tmp_path / "feed.json")
    file.save("not-a-cursor-of-this-deployment", None)
    feed = ChangeFeed(deployment.read, cursor_file=file)
    drain(feed)
    notice, row = feed.rows_from(1)
    assert notice["notice"] == "reset" and "refused" in notice["message"]
    assert (row["key"], row["from"]) == ("k", None)


def test_the_backlog_forgets_its_oldest_rows_and_their_positions() -> None:
    deployment = Deployment()
    for i in range(6):
        deployment.call("state::set", scope="s", key=f"k{i}", value=i)
    feed = ChangeFeed(deployment.read, backlog=3)
    feed.poll()
    held = feed.rows_from(1)
    assert [row["key"] for row in held] == ["k3", "k4", "k5"] and feed.first_seq() == 4
    assert feed.seq_after(held[0]["from"]) == 4  # the position right before the oldest held
    assert feed.seq_after(held[-1]["cursor"]) == 7 == feed.next_seq
    assert feed.seq_of_event(held[0]["event_id"]) == 4
    assert len(feed._seq_after) == 4 and len(feed._seq_of_event) == 3  # nothing older kept
    assert feed.seq_after("unknown") is None


def catch_up_rows(catch_up: CatchUp) -> list[Row]:
    async def collect() -> list[Row]:
        return [row async for row in catch_up.rows()]

    return asyncio.run(collect())


def test_a_page_behind_the_backlog_catches_up_from_its_own_cursor() -> None:
    deployment = Deployment()
    for i in range(8):
        deployment.call("state::set", scope="s", key=f"k{i}", value=i)
    feed = ChangeFeed(deployment.read, backlog=3)
    feed.poll()  # holds k5, k6, k7
    page_cursor = deployment.read({"limit": 2})["changes"][-1]["cursor"]  # after k1
    catch_up = CatchUp(feed, deployment.read_async, page_cursor)
    rows = catch_up_rows(catch_up)
    assert [row["key"] for row in rows] == ["k2", "k3", "k4"]
    assert rows[0]["from"] == page_cursor
    # ...then the feed's rows from k5 on, nothing twice, nothing missing
    assert [row["key"] for row in feed.rows_from(catch_up.start_seq)] == ["k5", "k6", "k7"]


def test_a_page_at_the_head_of_the_log_goes_on_with_the_next_rows() -> None:
    deployment = Deployment()
    deployment.call("state::set", scope="s", key="k", value=1)
    other = ChangeFeed(deployment.read)  # the console's run the page saw
    other.poll()
    feed = ChangeFeed(deployment.read)  # a console with no saved position: from the oldest
    catch_up = CatchUp(feed, deployment.read_async, other.cursor or "")
    assert catch_up_rows(catch_up) == [] and catch_up.start_seq == feed.next_seq


def test_a_page_whose_cursor_was_trimmed_gets_the_notice_then_what_is_kept() -> None:
    deployment = Deployment(max_entries=5)
    deployment.call("state::set", scope="s", key="k", value=0)
    page_cursor = deployment.read({})["cursor"]
    for i in range(1, 20):
        deployment.call("state::set", scope="s", key="k", value=i)
    feed = ChangeFeed(deployment.read)  # holds nothing yet
    rows = catch_up_rows(CatchUp(feed, deployment.read_async, page_cursor))
    assert rows[0]["notice"] == "compacted" and rows[0]["since"] is None
    assert rows[0]["until"] == rows[1]["time"]
    assert [version for _, _, version in changes(rows[1:])][-1] == 20


def test_a_page_too_far_behind_is_told_and_given_the_backlog() -> None:
    deployment = Deployment()
    for i in range(10):
        deployment.call("state::set", scope="s", key=f"k{i}", value=i)
    feed = ChangeFeed(deployment.read, backlog=2)
    feed.poll()
    first = deployment.read({"limit": 1})["cursor"]
    catch_up = CatchUp(feed, deployment.read_async, first, max_rows=3)
    rows = catch_up_rows(catch_up)
    assert [row.get("key") for row in rows[:3]] == ["k1", "k2", "k3"]
    assert rows[3]["notice"] == "skipped" and "more than 3 changes" in rows[3]["message"]
    assert catch_up.start_seq == feed.first_seq()
