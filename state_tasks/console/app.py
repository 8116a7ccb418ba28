"""The console's web application (Starlette): the page, its JSON API, and the live feed.

Every read is one state function through the broker (:class:`StateGateway`), one page at a
time: a scope of a million keys costs what a page of it costs. Values reach the page as JSON
*text* (integers beyond 2**53 stay exact; the page parses them keeping their digits), and a
value over :data:`~state_tasks.console.values.PREVIEW_MAX_CHARS` comes as a cut preview
until it is opened.

Writes never overwrite unseen changes: every save and delete carries the version the page
showed (``if_version``); a ``VERSION_CONFLICT`` answer carries the key as it is now
(``details.theirs``) for the page to show beside the user's edit. A save keeps the key's
expiry unless told otherwise (``ttl``: ``keep``, ``set`` with ``ms``, ``remove``).

Request bodies have caps, checked from ``Content-Length`` before anything is read (see
:func:`~state_tasks.console.guard.body_refusal`): a request without the token at most
:data:`~state_tasks.console.guard.UNAUTHENTICATED_BODY_MAX_BYTES`, any other
:func:`max_body_bytes` of the largest value.

The live feed (``/api/changes``) is a stream of server-sent events: ``change`` (a row of
:mod:`state_tasks.console.changes`, its id the change's cursor), ``notice`` (changes that
cannot be shown: trimmed from the log, or more than a page can be sent), ``status``
(whether the change log is read, or off), and ``live`` once the changes the console held
when the page connected were sent (the page marks only the changes after it). ``/api/change``
reads one change back from the log, its values whole.

The triggers view gets each trigger's runs from the workers' task events
(:mod:`state_tasks.console.workers`) and whether a running worker has its function and
condition (Celery's ``inspect registered``); registering one that none has answers with a
warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
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

from state_tasks.adapters.base import DEFAULT_MAX_VALUE_BYTES
from state_tasks.console.changes import CatchUp, ChangeFeed, Row
from state_tasks.console.gateway import ConsoleError, StateGateway
from state_tasks.console.guard import (
    COOKIE_NAME,
    UNAUTHENTICATED_BODY_MAX_BYTES,
    ConsoleGuard,
    body_refusal,
)
from state_tasks.console.values import dump, size_of, view
from state_tasks.console.workers import WorkerWatch

STATIC = Path(__file__).with_name("static")
#: Keys a page holds by default, and at most.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Seconds between two status messages on an idle live feed (they keep proxies from closing it).
FEED_HEARTBEAT_S = 10.0
#: ``/api/change``: entries read after the change's ``from`` to find it, at most (the first
#: one read is it, unless a Redis Cluster's buckets interleave otherwise).
CHANGE_LOOKUP_LIMIT = 50
#: Room in a request body beyond its value's JSON text twice over (see :func:`max_body_bytes`).
BODY_MARGIN_BYTES = 64 * 1024
#: Seconds the sign-in form's body may take to arrive (a client that announces a body and
#: never sends it holds nothing longer).
SIGN_IN_BODY_TIMEOUT_S = 10.0
#: Seconds the console waits for the workers' answers to ``inspect registered``.
INSPECT_TIMEOUT_S = 1.0
#: How a save treats the key's expiry unless told (see ``set_value``).
TTL_MODES = ("keep", "set", "remove")

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
<h1>state-tasks console</h1><p id="login-message" class="{kind}">{message}</p>
<label>Token <input name="token" type="password" autocomplete="current-password" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""


def max_body_bytes(max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> int:
    """The largest request body the console takes from a signed-in user: a value of
    ``max_value_bytes`` as JSON text travels inside a JSON string, where each quote and
    backslash doubles, so twice that, plus :data:`BODY_MARGIN_BYTES` for the rest."""
    return 2 * max_value_bytes + BODY_MARGIN_BYTES


def _error(error: ConsoleError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error.to_json()}, status_code=error.status, headers=headers)


def login_page(message: str, status: int = 401, kind: str = "") -> HTMLResponse:
    """The sign-in page with a sentence (``kind``: ``error`` or ``ok``, its style)."""
    page = LOGIN_PAGE.format(message=html.escape(message), kind=kind)
    return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request's body, refused once it passes ``limit_bytes`` (the middleware already
    refused a ``Content-Length`` over the cap: this holds whatever the server does)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise ConsoleError("BODY_TOO_LARGE", f"the request body is over {limit_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class GuardMiddleware:
    """Host check, token and body caps for every request (the sign-in page and its
    stylesheet need no token), and the security headers on every response, refusals
    included. How a request was let in is ``request.state.authorization``."""

    def __init__(self, app: ASGIApp, guard: ConsoleGuard, max_body_bytes: int) -> None:
        self.app = app
        self.guard = guard
        self.max_body_bytes = max_body_bytes

    def _open(self, request: Request) -> bool:
        """Whether the request is for the sign-in page or what it loads (no token needed)."""
        path = request.url.path
        return path in ("/login", "/logout") or (
            path in SIGN_IN_ASSETS and request.method in ("GET", "HEAD")
        )

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
        response: Response
        if not self.guard.host_allowed(request.headers.get("host"), request.url.scheme):
            response = _error(ConsoleError("FORBIDDEN", "unknown Host header"))
            await response(scope, receive, send_with_headers)
            return
        how = self.guard.authorization(
            request.headers.get("authorization"), request.cookies.get(COOKIE_NAME)
        )
        # Decided from the headers: nothing of a refused body is read, and the connection
        # is closed after the answer, so the rest of it is never read either.
        if how is None:
            refusal = body_refusal(
                request.headers,
                UNAUTHENTICATED_BODY_MAX_BYTES,
                "a request without the console's token may carry",
            )
        else:
            refusal = body_refusal(request.headers, self.max_body_bytes, "this console takes")
        if refusal is not None:
            response = _error(
                ConsoleError(refusal.code, refusal.message), headers={"connection": "close"}
            )
        elif how is not None or self._open(request):
            scope.setdefault("state", {})["authorization"] = how
            await self.app(scope, receive, send_with_headers)
            return
        elif request.url.path.startswith("/api/"):
            response = _error(ConsoleError("UNAUTHORIZED", "send the console's token"))
        else:
            response = login_page("Open the link printed at start-up, or give the token.")
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


def _if_version(data: dict[str, Any]) -> int:
    value = data.get("if_version")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConsoleError(
            "VALIDATION_ERROR",
            "if_version must be the version of the key the page showed (0 for a key that "
            f"did not exist): a whole number, got {value!r}",
        )
    return value


def _ttl(raw: Any) -> tuple[str, int | None]:
    """A save's ``ttl``: ``{"mode": "keep"}`` (the default), ``{"mode": "set", "ms": n}``
    or ``{"mode": "remove"}``."""
    if raw is None:
        return "keep", None
    mode = raw.get("mode") if isinstance(raw, dict) else None
    if mode not in TTL_MODES:
        raise ConsoleError(
            "VALIDATION_ERROR", f"ttl.mode must be one of {', '.join(TTL_MODES)}, got {mode!r}"
        )
    if mode != "set":
        return mode, None
    ms = raw.get("ms")
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 1:
        raise ConsoleError(
            "VALIDATION_ERROR", f"ttl.ms must be a positive whole number, got {ms!r}"
        )
    return mode, ms


@dataclass(frozen=True)
class TaskCheck:
    """The workers' answer to ``inspect registered``: who answered, and the tasks they have."""

    asked: str
    answered: list[str]
    names: frozenset[str]
    timeout_s: float
    error: str | None = None

    def knows(self, name: str) -> bool | None:
        """Whether a worker that answered has the task ``name`` (``None``: none answered)."""
        return (name in self.names) if self.answered else None

    def said(self) -> str:
        """Who was asked and who answered, in words."""
        if not self.answered:
            why = f" ({self.error})" if self.error else ""
            return f"asked {self.asked}; none answered within {self.timeout_s:g} s{why}"
        return (
            f"asked {self.asked}; {len(self.answered)} answered within {self.timeout_s:g} s: "
            + ", ".join(self.answered)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "answered": self.answered,
            "timeout_s": self.timeout_s,
            "error": self.error,
            "said": self.said(),
        }


def _trigger_tasks(trigger: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(role, task name) of a trigger's function and condition."""
    yield "function", str(trigger.get("function_id"))
    condition = (trigger.get("config") or {}).get("condition_function_id")
    if condition:
        yield "condition", str(condition)


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False)}")
    return "\n".join(lines) + "\n\n"


Handler = Callable[[Request], Awaitable[Any]]


def create_console(
    gateway: StateGateway,
    feed: ChangeFeed,
    guard: ConsoleGuard,
    workers: WorkerWatch | None = None,
    *,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> Starlette:
    """The console's ASGI app over a gateway (reads, writes), a feed (changes), a guard,
    and the workers' events (runs of the triggers' tasks; ``None``: none are received).
    ``max_value_bytes``: the deployment's largest value, which sets the body cap."""
    watch = workers or WorkerWatch(None)
    body_cap = max_body_bytes(max_value_bytes)

    def api(handler: Handler, write: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                if write:
                    if not guard.allow_writes:
                        raise ConsoleError(
                            "WRITES_DISABLED",
                            "this console is read-only: start it with --allow-writes to edit",
                        )
                    scheme = guard.scheme(request.url.scheme)
                    if not guard.same_origin(request.method, request.headers, scheme):
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
        raw = await read_body(request, body_cap)
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
            # "session": signed in with a cookie (the page offers to sign out)
            "authorization": getattr(request.state, "authorization", None),
            "tls": guard.scheme(request.url.scheme) == "https",
            "max_body_bytes": body_cap,
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

    async def current(scope: str, key: str) -> dict[str, Any]:
        """The key as it is now: its JSON text once (``None`` when it does not exist), its
        size, version (0: none) and expiry. A missing key is at version 0, one that holds
        null at 1 or more."""
        got = await gateway.call("state::get", {"scope": scope, "key": key, "with_version": True})
        version = got.get("version") or 0
        text = dump(got["value"]) if version else None
        return {
            "json": text,
            "size": size_of(text) if text is not None else 0,
            "version": version,
            "expires_in_ms": got.get("expires_in_ms"),
        }

    async def checked(write: Awaitable[Any], scope: str, key: str) -> Any:
        """Run a write sent with ``if_version``; on a ``VERSION_CONFLICT`` add the key as it
        is now (``details.theirs``), read right after, for the page to show."""
        try:
            return await write
        except ConsoleError as e:
            if e.code != "VERSION_CONFLICT":
                raise
            try:
                theirs: dict[str, Any] | None = await current(scope, key)
            except ConsoleError:
                theirs = None  # the page offers to reload
            raise ConsoleError(e.code, e.message, {**(e.details or {}), "theirs": theirs}) from None

    async def value(request: Request) -> Any:
        params = dict(request.query_params)
        scope, key = _required(params, "scope"), _required(params, "key")
        now = await current(scope, key)
        if not now["version"]:
            raise ConsoleError("NOT_FOUND", f"scope {scope!r} has no key {key!r}")
        return {"scope": scope, "key": key, **now}

    async def set_value(request: Request) -> Any:
        """Save a value with the version the page showed. Its expiry: ``keep`` sends
        ``state::update`` with one ``set`` op of the whole value (an update without
        ``ttl_ms`` keeps the key's expiry, in the same atomic step: no clock is read);
        ``set`` and ``remove`` send ``state::set`` with and without ``ttl_ms``."""
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        new = _json_text(data.get("value_json"), "the value")
        base = {"scope": scope, "key": key, "if_version": _if_version(data)}
        mode, ttl_ms = _ttl(data.get("ttl"))
        if mode == "keep":
            write = gateway.call("state::update", base | {"ops": [{"set": new}]})
        else:
            ttl = {"ttl_ms": ttl_ms} if ttl_ms is not None else {}
            write = gateway.call("state::set", base | {"value": new} | ttl)
        result = await checked(write, scope, key)
        return {
            "old_json": dump(result.get("old_value")),
            "new_json": dump(new),
            "version": result.get("version"),
            "ttl": mode,
        }

    async def update_value(request: Request) -> Any:
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        ops = _json_text(data.get("ops_json"), "the update ops")
        payload = {"scope": scope, "key": key, "ops": ops, "if_version": _if_version(data)}
        result = await checked(gateway.call("state::update", payload), scope, key)
        return {
            "old_json": dump(result.get("old_value")),
            "new_json": dump(result.get("new_value")),
            "version": result.get("version"),
        }

    async def delete_value(request: Request) -> Any:
        data = await body(request)
        scope, key = _required(data, "scope"), _required(data, "key")
        payload = {"scope": scope, "key": key, "if_version": _if_version(data)}
        old = await checked(gateway.call("state::delete", payload), scope, key)
        return {"old_json": dump(old)}

    async def check_tasks() -> TaskCheck:
        """Ask every worker which tasks it has (``inspect registered``), waiting at most
        :data:`INSPECT_TIMEOUT_S`, or until the workers seen alive have answered."""
        asked = f"every worker on {gateway.where()}"
        try:
            answers = await gateway.registered_tasks(
                INSPECT_TIMEOUT_S, expected=len(watch.alive_workers()) or None
            )
        except ConsoleError as e:
            return TaskCheck(asked, [], frozenset(), INSPECT_TIMEOUT_S, f"{e.code}: {e.message}")
        names = frozenset(name for tasks in answers.values() for name in tasks)
        return TaskCheck(asked, sorted(answers), names, INSPECT_TIMEOUT_S)

    async def triggers(request: Request) -> Any:
        items = await gateway.list_triggers()
        check = await check_tasks()
        names: set[str] = set()
        for trigger in items:
            trigger["known"] = {}
            for role, name in _trigger_tasks(trigger):
                trigger["known"][role] = check.knows(name)
                names.add(name)
        return {
            "items": items,
            "workers": check.to_json(),
            "runs": watch.runs(sorted(names)),
            "events": watch.status(),
        }

    async def trigger_runs(request: Request) -> Any:
        names = request.query_params.getlist("name")
        return {"runs": watch.runs(names), "events": watch.status()}

    async def register_trigger(request: Request) -> Any:
        data = await body(request)
        config: dict[str, Any] = {
            name: data[name]
            for name in ("scope", "key", "condition_function_id")
            if isinstance(data.get(name), str) and data[name]
        }
        when = data.get("when")
        if isinstance(when, str) and when.strip():  # the form's text: a filter as JSON
            try:
                when = json.loads(when)
            except ValueError as e:
                raise ConsoleError("VALIDATION_ERROR", f"'when' is not valid JSON: {e}") from None
        if when not in (None, ""):
            config["when"] = when
        spec = {"type": "state", "function_id": data.get("function_id"), "config": config}
        trigger_id = await gateway.register_trigger(spec)
        check = await check_tasks()
        warnings = []
        for role, name in _trigger_tasks({"function_id": spec["function_id"], "config": config}):
            if check.knows(name) is False:
                warnings.append(
                    {
                        "code": f"UNKNOWN_{role.upper()}",
                        "message": f"no running worker has the {role} {name!r} ({check.said()}). "
                        "Until a worker that has it runs, each change this trigger matches "
                        "sends a task that no worker runs (a worker logs 'Received "
                        "unregistered task').",
                    }
                )
        if not check.answered:
            warnings.append(
                {
                    "code": "NO_WORKER_ANSWERED",
                    "message": f"whether a worker has {spec['function_id']!r} cannot be told: "
                    f"{check.said()}.",
                }
            )
        return {"id": trigger_id, "warnings": warnings, "workers": check.to_json()}

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
                live = False  # whether the page was told that what follows is new
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
                    if not live:
                        # what the console held when the page connected was sent: the
                        # changes after this are newer than the page
                        live = True
                        yield _sse("live", {})
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
        """Sign in with the one-time link's code (GET) or the token typed in (POST): a new
        session, its id in the cookie."""
        if guard.token is None:
            return login_page("This console needs no sign-in.", 200, "ok")
        scheme = guard.scheme(request.url.scheme)
        client = request.client.host if request.client else "unknown"
        if request.method == "GET" and "code" not in request.query_params:
            if request.query_params.get("signed_out"):
                return login_page("You are signed out.", 200, "ok")
            return login_page("Open the link printed at start-up, or give the token.", 200)
        wait_s = guard.throttle.wait_s(client)
        if wait_s > 0:
            return login_page(
                f"Too many wrong tokens from this address; try again in {wait_s:.0f} s.",
                429,
                "error",
            )
        if request.method == "POST":
            if not guard.same_origin("POST", request.headers, scheme):
                return login_page("Sign in from this console's own page.", 403, "error")
            # A plain form post (no multipart parser needed for one field).
            try:
                raw = await asyncio.wait_for(
                    read_body(request, UNAUTHENTICATED_BODY_MAX_BYTES), SIGN_IN_BODY_TIMEOUT_S
                )
            except ConsoleError as e:
                return login_page(e.message, e.status, "error")
            except TimeoutError:
                return login_page("The sign-in form did not arrive in time.", 408, "error")
            form = parse_qs(raw.decode("utf-8", "replace"))
            if not guard.token_matches((form.get("token") or [""])[0]):
                guard.throttle.failed(client)
                return login_page(
                    "Wrong token: check it and try again (it was printed at start-up, or "
                    "set with --token or STATE_TASKS_CONSOLE_TOKEN).",
                    401,
                    "error",
                )
        else:
            redeemed = guard.redeem(request.query_params.get("code"))
            if redeemed != "ok":
                guard.throttle.failed(client)
                message = (
                    "That sign-in link was used already (it works once); give the token."
                    if redeemed == "used"
                    else "That sign-in link is not valid (from an earlier run of the "
                    "console?); give the token."
                )
                return login_page(message, 401, "error")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            guard.sessions.begin(),
            httponly=True,
            samesite="strict",
            secure=scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        """Sign out: the session ends, the cookie is cleared."""
        scheme = guard.scheme(request.url.scheme)
        if not guard.same_origin("POST", request.headers, scheme):
            return login_page("Sign out from this console's own page.", 403, "error")
        guard.sessions.end(request.cookies.get(COOKIE_NAME))
        response = RedirectResponse("/login?signed_out=1", status_code=303)
        response.delete_cookie(
            COOKIE_NAME, httponly=True, samesite="strict", secure=scheme == "https"
        )
        return response

    routes = [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/info", api(info)),
        Route("/api/scopes", api(scopes)),
        Route("/api/keys", api(keys)),
        Route("/api/value", api(value)),
        Route("/api/set", api(set_value, write=True), methods=["POST"]),
        Route("/api/update", api(update_value, write=True), methods=["POST"]),
        Route("/api/delete", api(delete_value, write=True), methods=["POST"]),
        Route("/api/triggers", api(triggers)),
        Route("/api/triggers/runs", api(trigger_runs)),
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
            watch.stop()
            gateway.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(GuardMiddleware, guard=guard, max_body_bytes=body_cap)
    return app
