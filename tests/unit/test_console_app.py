"""The console's web app over a stand-in gateway: what a signed-out browser gets, every
response's security headers, and the live feed's stream: where a page resumes (after a
reconnection, after a console restart), the notices, the log off, a change read back whole.

Requests go straight to the ASGI app (no server, no broker; the gateway calls a StateService
in process): each test is milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from state_tasks.adapters.kv_store import KvStore
from state_tasks.console.app import SECURITY_HEADERS, create_console
from state_tasks.console.changes import ChangeFeed, CursorFile
from state_tasks.console.gateway import ConsoleError
from state_tasks.console.guard import ConsoleGuard
from state_tasks.core.changes import ChangeLogSettings
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService

TOKEN = "s3cret-token"


class Gateway:
    """What the app asks of a gateway in these tests: calls answered by a StateService in
    process, failures as the real gateway gives them."""

    def __init__(self, service: StateService | None = None) -> None:
        if service is None:
            adapter = KvStore()
            adapter.open()
            service = StateService(adapter)
        self.service = service

    def where(self) -> str:
        return "redis://:***@broker:6379/0"

    def close(self) -> None:
        pass

    def call_blocking(self, function_id: str, payload: dict[str, Any]) -> Any:
        try:
            return self.service.call(function_id, payload)
        except StateError as e:
            raise ConsoleError(e.code, e.message, e.details) from None

    async def call(self, function_id: str, payload: dict[str, Any]) -> Any:
        return self.call_blocking(function_id, payload)

    def set(self, scope: str, key: str, value: Any) -> None:
        self.service.call("state::set", {"scope": scope, "key": key, "value": value})

    def feed(self, **options: Any) -> ChangeFeed:
        return ChangeFeed(lambda payload: self.call_blocking("state::changes", payload), **options)


def console(
    host: str = "0.0.0.0",
    port: int = 8765,
    feed: ChangeFeed | None = None,
    gateway: Gateway | None = None,
) -> Any:
    token = None if host == "127.0.0.1" else TOKEN
    guard = ConsoleGuard(host, port, token=token)
    gateway = gateway or Gateway()
    return create_console(gateway, feed or gateway.feed(), guard)  # type: ignore[arg-type]


def get(
    app: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, sent to the ASGI app directly."""
    all_headers = {"host": "console.internal:8765"} | (headers or {})
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        sent = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await sent.wait()  # the client stays until the response is whole
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent.set()

        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    start = messages[0]
    got = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], got, body


def assert_secured(headers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_the_sign_in_page_gets_its_stylesheet_without_the_token() -> None:
    app = console()
    status, headers, page = get(app, "/")
    assert status == 401 and b'href="/static/console.css"' in page
    status, headers, css = get(app, "/static/console.css")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert b"body.login" in css
    assert_secured(headers)
    # ...and nothing else: the page's script and the API still need the token
    assert get(app, "/static/console.js")[0] == 401
    assert get(app, "/static/index.html")[0] == 401
    assert get(app, "/static/./console.js")[0] == 401
    assert get(app, "/api/info")[0] == 401
    assert get(app, "/static/console.js", {"authorization": f"Bearer {TOKEN}"})[0] == 200


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/", {}, 401),  # the sign-in page
        ("/api/info", {}, 401),
        ("/login", {}, 200),
        ("/login?code=nope", {}, 401),
        ("/api/info", {"authorization": f"Bearer {TOKEN}"}, 200),
        ("/nowhere", {"authorization": f"Bearer {TOKEN}"}, 404),
    ],
)
def test_every_response_carries_the_security_headers(
    path: str, headers: dict[str, str], status: int
) -> None:
    got_status, got_headers, _ = get(console(), path, headers)
    assert got_status == status
    assert_secured(got_headers)


def test_a_refused_host_gets_the_security_headers_too() -> None:
    status, headers, body = get(console("127.0.0.1"), "/", {"host": "rebound.example:8765"})
    assert status == 403 and json.loads(body)["error"]["code"] == "FORBIDDEN"
    assert_secured(headers)


def test_on_port_80_the_browsers_bare_host_is_accepted() -> None:
    app = console("127.0.0.1", 80)
    assert get(app, "/api/info", {"host": "127.0.0.1"})[0] == 200
    assert get(app, "/api/info", {"host": "localhost"})[0] == 200
    assert get(app, "/api/info", {"host": "rebound.example"})[0] == 403
    assert get(console("127.0.0.1", 8765), "/api/info", {"host": "127.0.0.1"})[0] == 403


Event = tuple[str, str, Any]


def feed_events(
    app: Any, wanted: int, last_event_id: str | None = None, stop_at: str = "", **query: str
) -> list[Event]:
    """The first ``wanted`` change and notice events of ``/api/changes`` (and, with
    ``stop_at``, up to the first event of that kind), and the status and live events among
    them: (id, event, data)."""
    headers = [(b"host", b"127.0.0.1:8765")]
    if last_event_id is not None:
        headers.append((b"last-event-id", last_event_id.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/changes",
        "raw_path": b"/api/changes",
        "query_string": urlencode(query).encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    text: list[str] = []
    events: list[Event] = []

    async def run() -> None:
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                return
            text.append(message.get("body", b"").decode())
            events[:] = []
            for block in "".join(text).split("\n\n"):
                fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if "event" in fields:
                    data = json.loads(fields["data"])
                    events.append((fields.get("id", ""), fields["event"], data))
            enough = len([e for e in events if e[1] not in ("status", "live")]) >= wanted
            if enough and (not stop_at or any(e[1] == stop_at for e in events)):
                done.set()

        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    return events


def shown(events: list[Event]) -> list[Any]:
    """What the page shows: each change's key, each notice's kind."""
    return [
        data["key"] if kind == "change" else data["notice"]
        for _, kind, data in events
        if kind not in ("status", "live")
    ]


def test_a_reconnecting_page_resumes_right_after_its_last_change() -> None:
    gateway = Gateway()
    for i in range(3):
        gateway.set("s", f"k{i}", i)
    feed = gateway.feed()
    feed.poll()
    app = console("127.0.0.1", feed=feed, gateway=gateway)
    seen = feed_events(app, 3)
    assert shown(seen) == ["k0", "k1", "k2"]
    # each change's event id is its cursor: the browser sends the last one back
    assert [event_id for event_id, kind, _ in seen if kind == "change"] == [
        row["cursor"] for row in feed.rows_from(1)
    ]
    gateway.set("s", "k3", 3)
    feed.poll()
    last_id = [event_id for event_id, kind, _ in seen if kind == "change"][-1]
    assert shown(feed_events(app, 1, last_id)) == ["k3"]


def test_after_a_console_restart_an_open_page_gets_every_change_it_missed(
    tmp_path: Path,
) -> None:
    gateway = Gateway()
    file = CursorFile(tmp_path / "feed.json")
    gateway.set("s", "before0", 0)
    gateway.set("s", "before1", 1)
    first = gateway.feed(cursor_file=file)
    first.poll()
    # The page got the first change only (the second was on its way when the console stopped)
    page = feed_events(console("127.0.0.1", feed=first, gateway=gateway), 1)
    page_id = next(event_id for event_id, kind, _ in page if kind == "change")
    first.stop()
    gateway.set("s", "during", 2)

    # The restarted console reads on from its saved position; the page reconnects with the
    # id it kept and gets what it missed from the log, then the new rows, each once
    second = gateway.feed(cursor_file=file)
    second.poll()
    assert [row["key"] for row in second.rows_from(1)] == ["during"]
    events = feed_events(console("127.0.0.1", feed=second, gateway=gateway), 2, page_id)
    assert shown(events) == ["before1", "during"]


def test_a_filtered_page_gets_its_scopes_and_its_position_moves_past_the_others() -> None:
    gateway = Gateway()
    gateway.set("orders", "o1", 1)
    gateway.set("users", "u1", 1)
    feed = gateway.feed()
    feed.poll()
    events = feed_events(console("127.0.0.1", feed=feed, gateway=gateway), 1, scope="ord")
    assert shown(events) == ["o1"]
    # the status after it carries the cursor past users/u1: a reconnection starts after it
    last_id, kind, _ = events[-1]
    assert kind == "status" and last_id == feed.cursor


def test_the_page_is_told_of_a_trimmed_log_and_of_the_log_off() -> None:
    adapter = KvStore()
    adapter.use_change_log(ChangeLogSettings(max_entries=5))
    adapter.open()
    gateway = Gateway(StateService(adapter))
    gateway.set("s", "k", 0)
    feed = gateway.feed()
    feed.poll()
    for i in range(1, 20):
        gateway.set("s", "k", i)
    while feed.poll() == 0:  # the read that finds the trim, then the one from the oldest
        pass
    events = feed_events(console("127.0.0.1", feed=feed, gateway=gateway), 3)
    _, kind, notice = events[2]
    assert (kind, notice["notice"]) == ("notice", "compacted")
    assert "were trimmed from the log; continuing from the oldest kept" in notice["message"]

    off = KvStore()
    off.use_change_log(None)
    off.open()
    gateway = Gateway(StateService(off))
    feed = gateway.feed()
    feed.poll()
    app = console("127.0.0.1", feed=feed, gateway=gateway)
    status = get(app, "/api/info", {"host": "127.0.0.1:8765"})
    assert json.loads(status[2])["feed"]["log"] == "off"


def test_a_long_value_is_a_preview_in_the_feed_and_read_back_whole() -> None:
    gateway = Gateway()
    value = {"text": "lorem ipsum " * 2000}
    gateway.set("s", "before", 1)
    gateway.set("s", "big", value)
    feed = gateway.feed()
    feed.poll()
    app = console("127.0.0.1", feed=feed, gateway=gateway)
    _, row = [data for _, kind, data in feed_events(app, 2) if kind == "change"]
    assert row["new"]["truncated"] and row["new"]["size"] > 23_000
    assert json.dumps(value).startswith(row["new"]["preview"])
    query = urlencode({"from": row["from"], "event_id": row["event_id"]})
    status, _, body = get(app, f"/api/change?{query}", {"host": "127.0.0.1:8765"})
    whole = json.loads(body)
    assert status == 200 and json.loads(whole["new"]["json"]) == value
    assert (whole["key"], whole["old"]) == ("big", None)
    # a change the log no longer holds is NOT_FOUND, with what to do instead
    query = urlencode({"from": row["from"], "event_id": "v-gone"})
    status, _, body = get(app, f"/api/change?{query}", {"host": "127.0.0.1:8765"})
    assert status == 404 and "current value" in json.loads(body)["error"]["message"]


def test_the_page_is_told_where_the_changes_newer_than_it_begin() -> None:
    gateway = Gateway()
    gateway.set("s", "before-the-page", 1)
    feed = gateway.feed()
    feed.poll()
    events = feed_events(console("127.0.0.1", feed=feed, gateway=gateway), 1, stop_at="live")
    kinds = [kind for _, kind, _ in events]
    # the changes the console held come first; the page marks only those after "live"
    assert kinds.index("change") < kinds.index("live")
