"""The console's web app over a stand-in gateway: what a signed-out browser gets, every
response's security headers, and where the live feed resumes after a console restart.

Requests go straight to the ASGI app (no server, no broker): each test is milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from state_tasks.console.app import SECURITY_HEADERS, create_console
from state_tasks.console.changes import ChangeFeed
from state_tasks.console.guard import ConsoleGuard

TOKEN = "s3cret-token"


class Gateway:
    """What the app asks of a gateway in these tests."""

    def where(self) -> str:
        return "redis://:***@broker:6379/0"

    def close(self) -> None:
        pass


def console(host: str = "0.0.0.0", port: int = 8765, feed: ChangeFeed | None = None) -> Any:
    token = None if host == "127.0.0.1" else TOKEN
    guard = ConsoleGuard(host, port, token=token)
    return create_console(Gateway(), feed or ChangeFeed(app=None), guard)  # type: ignore[arg-type]


def get(
    app: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, sent to the ASGI app directly."""
    all_headers = {"host": "console.internal:8765"} | (headers or {})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
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
        ("/login?code=nope", {}, 401),
        ("/api/info", {"authorization": f"Bearer {TOKEN}"}, 200),
        ("/nowhere", {"authorization": f"Bearer {TOKEN}"}, 404),
    ],
)
def test_every_response_carries_the_security_headers(
    path: str, headers: dict[str, str], status: int
) -> None:
    got_status, got_headers, _ = get(console(), path.split("?")[0], headers)
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


def feed_events(app: Any, last_event_id: str | None, wanted: int) -> list[tuple[str, str, Any]]:
    """The first ``wanted`` change events of ``/api/changes``: (id, event, data)."""
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
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    text: list[str] = []
    changes: list[tuple[str, str, Any]] = []

    async def run() -> None:
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                return
            text.append(message.get("body", b"").decode())
            changes[:] = []
            for block in "".join(text).split("\n\n"):
                fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if fields.get("event") == "change":
                    changes.append((fields.get("id", ""), "change", json.loads(fields["data"])))
            if len(changes) >= wanted:
                done.set()

        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    return changes


def test_after_a_console_restart_a_reconnecting_page_gets_the_new_changes() -> None:
    # A page saw changes 1 to 3 of the console's first run
    first = ChangeFeed(app=None)
    first.publish([{"scope": "s", "key": f"before{i}"} for i in range(3)])
    seen = feed_events(console("127.0.0.1", feed=first), None, 3)
    assert [data["key"] for _, _, data in seen] == ["before0", "before1", "before2"]
    last_id = seen[-1][0]
    assert last_id == f"{first.boot}-3"
    # Within one run, reconnecting with that id resumes after it
    first.publish([{"scope": "s", "key": "before3"}])
    resumed = feed_events(console("127.0.0.1", feed=first), last_id, 1)
    assert [data["key"] for _, _, data in resumed] == ["before3"]

    # The console restarts (numbers start again at 1) and changes are made; the page
    # reconnects with the id it kept, and gets them all
    second = ChangeFeed(app=None)
    second.publish([{"scope": "s", "key": f"after{i}"} for i in range(2)])
    again = feed_events(console("127.0.0.1", feed=second), last_id, 2)
    assert [data["key"] for _, _, data in again] == ["after0", "after1"]
    assert [event_id for event_id, _, _ in again] == [f"{second.boot}-1", f"{second.boot}-2"]
