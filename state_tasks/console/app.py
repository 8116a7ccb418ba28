"""The console's web application (Starlette): the page, its JSON API, and the live feed.

Every read is one state function through the broker (:class:`StateGateway`), one page at a
time: a scope of a million keys costs what a page of it costs. Values reach the page as JSON
*text* (integers beyond 2**53 stay exact; the page parses them keeping their digits), and a
value over :data:`~state_tasks.console.values.PREVIEW_MAX_CHARS` comes as a cut preview
until it is opened.

The live feed (``/api/changes``) is a stream of server-sent events: ``change`` (a row of
:mod:`state_tasks.console.changes`, its id the change's cursor), ``notice`` (changes that
cannot be shown: trimmed from the log, or more than a page can be sent) and ``status``
(whether the change log is read, or off). ``/api/change`` reads one change back from the
log, its values whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from state_tasks.console.changes import CatchUp, ChangeFeed, Row
from state_tasks.console.gateway import ConsoleError, StateGateway
from state_tasks.console.guard import COOKIE_NAME, ConsoleGuard
from state_tasks.console.values import dump, size_of, view

STATIC = Path(__file__).with_name("static")
#: Keys a page holds by default, and at most.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Seconds between two status messages on an idle live feed (they keep proxies from closing it).
FEED_HEARTBEAT_S = 10.0
#: ``/api/change``: entries read after the change's ``from`` to find it, at most (the first
#: one read is it, unless a Redis Cluster's buckets interleave otherwise).
CHANGE_LOOKUP_LIMIT = 50
#: A request body larger than this is refused (a value is at most 1 MiB as JSON by default).
MAX_BODY_BYTES = 8 * 1024 * 1024

#: Sent with every response, the sign-in page and the refusals included (none may be framed).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_SECURITY_HEADER_PAIRS = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
#: What the sign-in page loads, served without the token (nothing in it is private).
SIGN_IN_ASSETS = frozenset({"/static/console.css"})

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>state-tasks console: sign in</title><link rel="stylesheet" href="/static/console.css">
</head><body class="login"><form method="post" action="/login">
<h1>state-tasks console</h1><p>{message}</p>
<label>Token <input name="token" type="password" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""


def _error(error: ConsoleError) -> JSONResponse:
    return JSONResponse({"error": error.to_json()}, status_code=error.status)


class GuardMiddleware:
    """Host check and token for every request (the sign-in page and its stylesheet aside),
    and the security headers on every response, refusals included."""

    def __init__(self, app: ASGIApp, guard: ConsoleGuard) -> None:
        self.app = app
        self.guard = guard

    def _open(self, request: Request) -> bool:
        """Whether the request is for the sign-in page or what it loads (no token needed)."""
        path = request.url.path
        return path == "/login" or (path in SIGN_IN_ASSETS and request.method in ("GET", "HEAD"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower().decode("latin-1") not in SECURITY_HEADERS
                ]
                message = {**message, "headers": headers + _SECURITY_HEADER_PAIRS}
            await send(message)

        request = Request(scope)
        if not self.guard.host_allowed(request.headers.get("host"), request.url.scheme):
            response: Response = JSONResponse(
                {"error": {"code": "FORBIDDEN", "message": "unknown Host header"}},
                status_code=403,
            )
        elif self._open(request) or self.guard.authorized(
            request.headers.get("authorization"), request.cookies.get(COOKIE_NAME)
        ):
            await self.app(scope, receive, send_with_headers)
            return
        elif request.url.path.startswith("/api/"):
            response = _error(ConsoleError("UNAUTHORIZED", "send the console's token"))
        else:
            page = LOGIN_PAGE.format(
                message="Open the link printed at start-up, or give the token."
            )
            response = HTMLResponse(page, status_code=401)
        await response(scope, receive, send_with_headers)


def _page_size(request: Request) -> int:
    raw = request.query_params.get("limit") or str(DEFAULT_PAGE_SIZE)
    try:
        limit = int(raw)
    except ValueError:
        raise ConsoleError("VALIDATION_ERROR", f"limit must be a number, got {raw!r}") from None
    return max(1, min(MAX_PAGE_SIZE, limit))


def _required(source: dict[str, Any], name: str) -> str:
    value = source.get(name)
    if not isinstance(value, str) or not value:
        raise ConsoleError("VALIDATION_ERROR", f"{name!r} must be a non-empty string")
    return value


def _json_text(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise ConsoleError("VALIDATION_ERROR", f"{what} must be JSON text")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConsoleError(
            "VALIDATION_ERROR", f"{what} is not valid JSON ({e.msg} at line {e.lineno})"
        ) from None
    except RecursionError:
        raise ConsoleError("VALIDATION_ERROR", f"{what} is nested too deeply") from None


def _whole(value: Any) -> dict[str, Any]:
    text = dump(value)
    return {"json": text, "size": size_of(text)}


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False)}")
    return "\n".join(lines) + "\n\n"


Handler = Callable[[Request], Awaitable[Any]]


def create_console(gateway: StateGateway, feed: ChangeFeed, guard: ConsoleGuard) -> Starlette:
    """The console's ASGI app over a gateway (reads, writes), a feed (changes) and a guard."""

    def api(handler: Handler, write: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                if write:
                    if not guard.allow_writes:
                        raise ConsoleError(
                            "WRITES_DISABLED",
                            "this console is read-only: start it with --allow-writes to edit",
                        )
                    if not guard.same_origin(request.method, request.headers, request.url.scheme):
                        raise ConsoleError(
                            "FORBIDDEN", "a write must come from the console's own page"
                        )
                    if not request.headers.get("content-type", "").startswith("application/json"):
                        raise ConsoleError("VALIDATION_ERROR", "send the body as application/json")
                result = await handler(request)
            except ConsoleError as e:
                return _error(e)
            return JSONResponse(result, headers={"cache-control": "no-store"})

        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ConsoleError("VALUE_TOO_LARGE", f"the request is over {MAX_BODY_BYTES} bytes")
        data = _json_text(raw.decode("utf-8", "replace"), "the request body")
        if not isinstance(data, dict):
            raise ConsoleError("VALIDATION_ERROR", "the request body must be a JSON object")
        return data

    async def info(request: Request) -> Any:
        return {
            "broker": gateway.where(),
            "writes": guard.allow_writes,
            "feed": feed.status(),
            "page_size": DEFAULT_PAGE_SIZE,
        }

    async def scopes(request: Request) -> Any:
        payload: dict[str, Any] = {"limit": _page_size(request), "with_counts": True}
        for name in ("prefix", "cursor"):
            if request.query_params.get(name):
                payload[name] = request.query_params[name]
        return await gateway.call("state::list_groups", payload)

    async def keys(request: Request) -> Any:
        scope = _required(dict(request.query_params), "scope")
        payload: dict[str, Any] = {"scope": scope, "limit": _page_size(request), "with_keys": True}
        for name in ("prefix", "cursor"):
            if request.query_params.get(name):
                payload[name] = request.query_params[name]
        page = await gateway.call("state::list", payload)
        items = [{"key": item["key"], **view(item["value"])} for item in page["items"]]
        return {"items": items, "cursor": page["cursor"]}

    async def value(request: Request) -> Any:
        params = dict(request.query_params)
        scope, key = _required(params, "scope"), _required(params, "key")
        # With its version: a missing key is at version 0, one that holds null at 1 or more.
        got = await gateway.call("state::get", {"scope": scope, "key": key, "with_version": True})
        if not got.get("version"):
            raise ConsoleError("NOT_FOUND", f"scope {scope!r} has no key {key!r}")
        text = dump(got["value"])
        return {
            "scope": scope,
            "key": key,
            "json": text,
            "pretty": dump(got["value"], indent=2),
            "size": size_of(text),
            "version": got["version"],
            "expires_in_ms": got.get("expires_in_ms"),
        }

    async def set_value(request: Request) -> Any:
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        new = _json_text(data.get("value_json"), "the value")
        result = await gateway.call("state::set", {"scope": scope, "key": key, "value": new})
        return {
            "old_json": dump(result.get("old_value")),
            "new_json": dump(new),
            "version": result.get("version"),
        }

    async def update_value(request: Request) -> Any:
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        ops = _json_text(data.get("ops_json"), "the update ops")
        result = await gateway.call("state::update", {"scope": scope, "key": key, "ops": ops})
        return {
            "old_json": dump(result.get("old_value")),
            "new_json": dump(result.get("new_value")),
            "version": result.get("version"),
        }

    async def delete_value(request: Request) -> Any:
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        old = await gateway.call("state::delete", {"scope": scope, "key": key})
        return {"old_json": dump(old)}

    async def triggers(request: Request) -> Any:
        return {"items": await gateway.list_triggers()}

    async def register_trigger(request: Request) -> Any:
        data = await body(request)
        config = {
            name: data[name]
            for name in ("scope", "key", "condition_function_id")
            if isinstance(data.get(name), str) and data[name]
        }
        spec = {"type": "state", "function_id": data.get("function_id"), "config": config}
        return {"id": await gateway.register_trigger(spec)}

    async def unregister_trigger(request: Request) -> Any:
        trigger_id = _required(await body(request), "id")
        if not await gateway.unregister_trigger(trigger_id):
            raise ConsoleError("NOT_FOUND", f"no trigger with id {trigger_id!r}")
        return {"removed": trigger_id}

    async def change(request: Request) -> Any:
        """One change read back from the log, its values whole: the entry with ``event_id``
        right after the cursor ``from`` (a feed row's)."""
        params = dict(request.query_params)
        event_id = _required(params, "event_id")
        payload: dict[str, Any] = {"limit": 1}
        if params.get("from"):
            payload["after"] = params["from"]
        entry = None
        try:
            for limit in (1, CHANGE_LOOKUP_LIMIT):
                answer = await gateway.call("state::changes", payload | {"limit": limit})
                entry = next((e for e in answer["changes"] if e["event_id"] == event_id), None)
                if entry is not None or not answer["changes"]:
                    break
        except ConsoleError as e:
            if e.code != "COMPACTED":
                raise
        if entry is None:
            raise ConsoleError(
                "NOT_FOUND",
                "this change is no longer in the change log (it was trimmed); the key's "
                "page shows its current value",
            )
        return {
            "event_type": entry["event_type"],
            "scope": entry["scope"],
            "key": entry["key"],
            "version": entry.get("version"),
            "time": entry["timestamp"],
            "old": None if entry["event_type"] == "state:created" else _whole(entry["old_value"]),
            "new": None if entry["event_type"] == "state:deleted" else _whole(entry["new_value"]),
        }

    async def changes(request: Request) -> Response:
        scope_prefix = request.query_params.get("scope", "")
        # Where the page is: the cursor of the last change it got (its own reconnection
        # sends it as Last-Event-ID); none for a page that opens.
        after = request.headers.get("last-event-id") or request.query_params.get("after") or None
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def woken() -> None:  # called from the feed's thread
            loop.call_soon_threadsafe(wake.set)

        def event(row: Row) -> str | None:
            if "notice" in row:
                return _sse("notice", row)
            if scope_prefix and not str(row["scope"]).startswith(scope_prefix):
                return None
            return _sse("change", row, row["cursor"])

        async def read(payload: dict[str, Any]) -> Any:
            return await gateway.call("state::changes", payload)

        async def stream() -> AsyncIterator[str]:
            unsubscribe = feed.subscribe(woken)
            try:
                yield "retry: 2000\n\n"
                status = feed.status()
                yield _sse("status", status)
                next_seq = feed.first_seq()
                sent: set[str] = set()  # the changes a catch-up sent from the log
                # The last position this page passed (its changes sent or filtered out).
                position = after
                if after is not None:
                    known = feed.seq_after(after)
                    if known is not None:
                        next_seq = known
                    else:
                        catch_up = CatchUp(feed, read, after)
                        async for row in catch_up.rows():
                            position = row.get("cursor", position)
                            if (text := event(row)) is not None:
                                yield text
                        next_seq, sent = catch_up.start_seq, catch_up.sent
                while True:
                    wake.clear()
                    rows = feed.rows_from(next_seq)
                    if rows and rows[0]["seq"] > next_seq:
                        missed = rows[0]["seq"] - next_seq
                        yield _sse(
                            "notice",
                            {
                                "notice": "skipped",
                                "message": f"{missed:,} changes came faster than this page "
                                "took them and are not shown here (they are in the change log)",
                            },
                        )
                    passed = position
                    for row in rows:
                        next_seq = row["seq"] + 1
                        if row.get("event_id") in sent:
                            continue
                        position = row.get("cursor", position)
                        if (text := event(row)) is not None:
                            yield text
                            passed = position
                    current = feed.status()
                    if current != status or position != passed:
                        # a status event carries the position past filtered-out changes
                        status = current
                        yield _sse("status", status, position if position != passed else None)
                    try:
                        await asyncio.wait_for(wake.wait(), FEED_HEARTBEAT_S)
                    except TimeoutError:
                        yield _sse("status", status)
            finally:
                unsubscribe()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def login(request: Request) -> Response:
        if request.method == "POST":
            # A plain form post (no multipart parser needed for one field).
            form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
            offered = (form.get("token") or [""])[0]
            ok = bool(offered) and guard.authorized(f"Bearer {offered}", None)
            ok = ok and guard.same_origin("POST", request.headers, request.url.scheme)
        else:
            ok = guard.redeem(request.query_params.get("code"))
        if not ok or guard.token is None:
            message = (
                "That link was used already or is not valid; give the token instead."
                if guard.token is not None
                else "This console needs no sign-in."
            )
            return HTMLResponse(LOGIN_PAGE.format(message=message), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            guard.token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    routes = [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api/info", api(info)),
        Route("/api/scopes", api(scopes)),
        Route("/api/keys", api(keys)),
        Route("/api/value", api(value)),
        Route("/api/set", api(set_value, write=True), methods=["POST"]),
        Route("/api/update", api(update_value, write=True), methods=["POST"]),
        Route("/api/delete", api(delete_value, write=True), methods=["POST"]),
        Route("/api/triggers", api(triggers)),
        Route("/api/triggers/register", api(register_trigger, write=True), methods=["POST"]),
        Route("/api/triggers/unregister", api(unregister_trigger, write=True), methods=["POST"]),
        Route("/api/changes", changes),
        Route("/api/change", api(change)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            feed.stop()
            gateway.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(GuardMiddleware, guard=guard)
    return app
