"""The console's writes, sign-in and body caps, over the ASGI app with a stand-in gateway (a
StateService in process, a KvStore): saves and deletes only at the version the page showed,
a conflict answered with the key as it is now, the expiry kept unless changed, bodies
refused from their headers before a byte is read, sessions that are not the token, and
triggers registered with a warning when no worker has their function.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from test_console_app import TOKEN, Gateway, assert_secured

from state_tasks.console.app import create_console as _create_console
from state_tasks.console.app import max_body_bytes
from state_tasks.console.guard import COOKIE_NAME, ConsoleGuard
from state_tasks.console.workers import WorkerWatch

ORIGIN = "http://127.0.0.1:8765"


class TriggerGateway(Gateway):
    """A gateway that also keeps triggers and answers ``inspect registered``."""

    def __init__(self, registered: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.registered = registered if registered is not None else {}
        self.triggers: list[dict[str, Any]] = []

    async def list_triggers(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(t)) for t in self.triggers]

    async def register_trigger(self, spec: dict[str, Any]) -> str:
        trigger_id = f"trg_{len(self.triggers)}"
        self.triggers.append({"id": trigger_id, **spec})
        return trigger_id

    async def registered_tasks(
        self, timeout_s: float, expected: int | None = None
    ) -> dict[str, list[str]]:
        return self.registered


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, read: int) -> None:
        self.status, self.headers, self.body = status, headers, body
        #: How many body chunks the app asked for.
        self.read = read

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self) -> str:
        return self.headers.get("set-cookie", "")


def request(
    app: Any,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    scheme: str = "http",
) -> Response:
    """One request straight to the ASGI app; counts what of the body the app reads."""
    all_headers = {"host": "127.0.0.1:8765"}
    if body:
        all_headers["content-length"] = str(len(body))
    all_headers |= headers or {}
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("10.1.2.3", 50000),
        "server": ("127.0.0.1", 8765),
    }
    messages: list[dict[str, Any]] = []
    read = 0

    async def run() -> None:
        sent = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal read
            read += 1
            if read == 1:
                return {"type": "http.request", "body": body, "more_body": False}
            await sent.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent.set()

        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    got = {k.decode().lower(): v.decode() for k, v in messages[0]["headers"]}
    content = b"".join(m.get("body", b"") for m in messages[1:])
    return Response(messages[0]["status"], got, content, read)


def post(app: Any, path: str, data: dict[str, Any], **headers: str) -> Response:
    return request(
        app,
        path,
        method="POST",
        body=json.dumps(data).encode(),
        headers={"content-type": "application/json", "origin": ORIGIN, **headers},
    )


def create_console(
    gateway: Gateway | None = None,
    *,
    host: str = "127.0.0.1",
    workers: WorkerWatch | None = None,
    behind_tls_proxy: bool = False,
) -> Any:
    gateway = gateway or Gateway()
    token = None if host == "127.0.0.1" and not behind_tls_proxy else TOKEN
    guard = ConsoleGuard(
        host, 8765, token=token, allow_writes=True, behind_tls_proxy=behind_tls_proxy
    )
    return _create_console(gateway, gateway.feed(), guard, workers)  # type: ignore[arg-type]


# -- safe edits ---------------------------------------------------------------------------


def get_versioned(gateway: Gateway, key: str) -> Any:
    return gateway.service.call("state::get", {"scope": "s", "key": key, "with_version": True})


def test_a_value_is_sent_once_with_its_version_and_expiry() -> None:
    gateway = Gateway()
    gateway.service.call(
        "state::set", {"scope": "s", "key": "k", "value": {"n": 10**30}, "ttl_ms": 60_000}
    )
    answer = request(create_console(gateway), "/api/value?scope=s&key=k").json()
    assert set(answer) == {"scope", "key", "json", "size", "version", "expires_in_ms"}
    assert answer["json"] == '{"n": 1000000000000000000000000000000}'
    assert answer["version"] >= 1 and 0 < answer["expires_in_ms"] <= 60_000


def test_a_save_at_the_version_shown_keeps_the_expiry_and_a_stale_one_is_a_conflict() -> None:
    gateway = Gateway()
    gateway.service.call("state::set", {"scope": "s", "key": "k", "value": 1, "ttl_ms": 600_000})
    app = create_console(gateway)
    shown = get_versioned(gateway, "k")

    # Saved at the version shown, "keep": the expiry is still there (an update keeps it)
    saved = post(
        app,
        "/api/set",
        {"scope": "s", "key": "k", "value_json": "2", "if_version": shown["version"]},
    )
    assert saved.status == 200 and saved.json()["ttl"] == "keep"
    now = get_versioned(gateway, "k")
    assert now["value"] == 2 and 0 < now["expires_in_ms"] <= shown["expires_in_ms"]

    # Sent with the version the page showed before: nothing is written, and the answer
    # carries the key as it is now
    stale = post(
        app,
        "/api/set",
        {"scope": "s", "key": "k", "value_json": "3", "if_version": shown["version"]},
    )
    assert stale.status == 409
    error = stale.json()["error"]
    assert error["code"] == "VERSION_CONFLICT"
    assert error["details"]["expected"] == shown["version"]
    assert error["details"]["current"] == now["version"]
    theirs = error["details"]["theirs"]
    assert (theirs["json"], theirs["version"]) == ("2", now["version"])
    assert theirs["expires_in_ms"] > 0
    assert get_versioned(gateway, "k")["value"] == 2

    # Overwritten knowingly (the version read now), with a new expiry, then without one
    data = {"scope": "s", "key": "k", "value_json": "3", "if_version": theirs["version"]}
    assert post(app, "/api/set", data | {"ttl": {"mode": "set", "ms": 5_000}}).status == 200
    assert 0 < get_versioned(gateway, "k")["expires_in_ms"] <= 5_000
    data["if_version"] = get_versioned(gateway, "k")["version"]
    assert post(app, "/api/set", data | {"ttl": {"mode": "remove"}}).status == 200
    assert get_versioned(gateway, "k")["expires_in_ms"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "if_version must be"),
        ({"if_version": "3"}, "if_version must be"),
        ({"if_version": True}, "if_version must be"),
        ({"if_version": 0, "ttl": {"mode": "later"}}, "ttl.mode must be"),
        ({"if_version": 0, "ttl": {"mode": "set"}}, "ttl.ms must be"),
        ({"if_version": 0, "ttl": {"mode": "set", "ms": 0}}, "ttl.ms must be"),
    ],
)
def test_a_save_without_a_version_or_with_a_bad_expiry_is_refused(
    extra: dict[str, Any], message: str
) -> None:
    gateway = Gateway()
    answer = post(
        create_console(gateway), "/api/set", {"scope": "s", "key": "k", "value_json": "1"} | extra
    )
    assert answer.status == 400 and message in answer.json()["error"]["message"]
    assert get_versioned(gateway, "k")["version"] == 0


def test_a_new_key_that_exists_meanwhile_and_a_stale_delete_or_update_are_conflicts() -> None:
    gateway = Gateway()
    app = create_console(gateway)
    gateway.set("s", "k", {"theirs": True})
    new = post(app, "/api/set", {"scope": "s", "key": "k", "value_json": "1", "if_version": 0})
    assert new.status == 409
    assert json.loads(new.json()["error"]["details"]["theirs"]["json"]) == {"theirs": True}
    version = get_versioned(gateway, "k")["version"]
    gateway.set("s", "k", {"theirs": 2})
    for path, data in [
        ("/api/delete", {}),
        ("/api/update", {"ops_json": '[{"set": 5}]'}),
    ]:
        answer = post(app, path, {"scope": "s", "key": "k", "if_version": version} | data)
        assert answer.status == 409, path
        assert answer.json()["error"]["details"]["theirs"]["version"] > version
    assert get_versioned(gateway, "k")["value"] == {"theirs": 2}
    # a key deleted meanwhile: theirs is at version 0
    current = get_versioned(gateway, "k")["version"]
    gateway.service.call("state::delete", {"scope": "s", "key": "k"})
    gone = post(app, "/api/delete", {"scope": "s", "key": "k", "if_version": current})
    assert gone.json()["error"]["details"]["theirs"] == {
        "json": None,
        "size": 0,
        "version": 0,
        "expires_in_ms": None,
    }


# -- bodies -----------------------------------------------------------------------------


def test_a_large_body_without_the_token_is_refused_unread_and_the_connection_closed() -> None:
    app = create_console(host="0.0.0.0")
    huge = {"content-length": str(50 * 1024 * 1024), "origin": "http://127.0.0.1:8765"}
    for path in ("/login", "/api/set", "/logout", "/"):
        answer = request(app, path, method="POST", headers=huge)
        assert answer.status == 413, path
        assert answer.read == 0, path  # not a byte of it asked for
        assert answer.headers["connection"] == "close"
        assert answer.json()["error"]["code"] == "BODY_TOO_LARGE"
        assert "4,096" in answer.json()["error"]["message"]
        assert_secured(answer.headers)
    chunked = request(app, "/login", method="POST", headers={"transfer-encoding": "chunked"})
    assert (chunked.status, chunked.read) == (411, 0)
    # with the token, the cap is the largest value twice over plus a margin
    bearer = {"authorization": f"Bearer {TOKEN}"}
    cap = max_body_bytes()
    assert cap == 2 * 1024 * 1024 + 64 * 1024
    over = request(
        app, "/api/set", method="POST", headers=bearer | {"content-length": str(cap + 1)}
    )
    assert (over.status, over.read) == (413, 0)
    at_cap = {"content-length": str(cap)}
    assert request(app, "/api/info", headers=bearer | at_cap).read <= 1


def test_the_sign_in_form_is_read_within_its_cap() -> None:
    app = create_console(host="0.0.0.0")
    form = b"token=" + TOKEN.encode()
    answer = request(
        app,
        "/login",
        method="POST",
        body=form,
        headers={"content-type": "application/x-www-form-urlencoded", "origin": ORIGIN},
    )
    assert answer.status == 303


# -- sign-in ------------------------------------------------------------------------------


def sign_in(app: Any, token: str, scheme: str = "http") -> Response:
    return request(
        app,
        "/login",
        method="POST",
        body=f"token={token}".encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "origin": f"{scheme}://127.0.0.1:8765",
        },
        scheme=scheme,
    )


def test_a_wrong_token_says_so_and_a_session_is_not_the_token() -> None:
    app = create_console(host="0.0.0.0")
    wrong = sign_in(app, "nope")
    assert wrong.status == 401 and b"Wrong token" in wrong.body
    assert b"used already" not in wrong.body
    signed_in = sign_in(app, TOKEN)
    assert signed_in.status == 303
    cookie = signed_in.cookie()
    assert cookie.startswith(f"{COOKIE_NAME}=") and TOKEN not in cookie
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "secure" not in cookie.lower()  # plain HTTP
    session = cookie.split(";")[0]
    info = request(app, "/api/info", headers={"cookie": session}).json()
    assert info["authorization"] == "session"

    # Signing out ends the session and clears the cookie
    out = request(app, "/logout", method="POST", headers={"cookie": session, "origin": ORIGIN})
    assert out.status == 303 and out.headers["location"] == "/login?signed_out=1"
    assert "Max-Age=0" in out.cookie() or "max-age=0" in out.cookie().lower()
    assert request(app, "/api/info", headers={"cookie": session}).status == 401
    assert b"signed out" in request(app, "/login?signed_out=1").body


def test_a_used_link_says_so_and_a_made_up_one_says_it_is_not_valid() -> None:
    gateway = Gateway()
    guard = ConsoleGuard("0.0.0.0", 8765, token=TOKEN)
    app = _create_console(gateway, gateway.feed(), guard)  # type: ignore[arg-type]
    code = guard.login_code()
    assert request(app, f"/login?code={code}").status == 303
    used = request(app, f"/login?code={code}")
    assert used.status == 401 and b"used already" in used.body
    made_up = request(app, "/login?code=made-up")
    assert made_up.status == 401 and b"not valid" in made_up.body


def test_too_many_wrong_tokens_from_one_client_wait() -> None:
    app = create_console(host="0.0.0.0")
    for _ in range(10):
        assert sign_in(app, "nope").status == 401
    held = sign_in(app, TOKEN)
    assert held.status == 429 and b"Too many wrong tokens" in held.body


def test_over_tls_and_behind_a_tls_proxy_the_cookie_is_secure() -> None:
    over_tls = sign_in(create_console(host="0.0.0.0"), TOKEN, scheme="https")
    assert "secure" in over_tls.cookie().lower()
    # behind a proxy the console sees plain HTTP; the browser's origin is https
    app = create_console(behind_tls_proxy=True)
    proxied = request(
        app,
        "/login",
        method="POST",
        body=f"token={TOKEN}".encode(),
        headers={
            "host": "console.example.com",
            "origin": "https://console.example.com",
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert proxied.status == 303 and "secure" in proxied.cookie().lower()
    assert request(app, "/api/info").status == 401  # the loopback needs the token too


# -- triggers ---------------------------------------------------------------------------


def test_a_trigger_no_worker_can_run_is_registered_with_a_warning() -> None:
    gateway = TriggerGateway({"celery@a": ["test::onAny", "conditions::truthy"]})
    app = create_console(gateway)
    fine = post(app, "/api/triggers/register", {"function_id": "test::onAny", "scope": "s"})
    assert fine.json()["warnings"] == []
    answer = post(
        app,
        "/api/triggers/register",
        {"function_id": "test::nope", "condition_function_id": "conditions::gone"},
    ).json()
    assert [w["code"] for w in answer["warnings"]] == ["UNKNOWN_FUNCTION", "UNKNOWN_CONDITION"]
    assert "no running worker has the function 'test::nope'" in answer["warnings"][0]["message"]
    assert "1 answered within 1 s: celery@a" in answer["warnings"][0]["message"]
    assert answer["workers"]["asked"] == "every worker on redis://:***@broker:6379/0"

    listed = request(app, "/api/triggers").json()
    known = {t["function_id"]: t["known"] for t in listed["items"]}
    assert known == {
        "test::onAny": {"function": True},
        "test::nope": {"function": False, "condition": False},
    }

    # no worker answering is said too: it cannot be told
    nobody = create_console(TriggerGateway({}))
    answer = post(nobody, "/api/triggers/register", {"function_id": "test::onAny"}).json()
    assert [w["code"] for w in answer["warnings"]] == ["NO_WORKER_ANSWERED"]
    assert "none answered within 1 s" in answer["warnings"][0]["message"]


def test_the_triggers_view_gets_each_functions_runs_from_the_task_events() -> None:
    watch = WorkerWatch(None, clock=lambda: 1000.0)
    gateway = TriggerGateway({"celery@a": ["test::onAny"]})
    app = create_console(gateway, workers=watch)
    post(app, "/api/triggers/register", {"function_id": "test::onAny"})
    watch.handle({"type": "task-received", "uuid": "t1", "name": "test::onAny", "hostname": "w"})
    watch.handle(
        {"type": "task-failed", "uuid": "t1", "exception": "KeyError('n')", "timestamp": 999.0}
    )
    listed = request(app, "/api/triggers").json()
    runs = listed["runs"]["test::onAny"]
    assert (runs["runs"], runs["failed"], runs["last_error"]) == (1, 1, "KeyError('n')")
    again = request(app, "/api/triggers/runs?name=test::onAny").json()
    assert again["runs"] == listed["runs"] and again["events"]["task_events"] == "unknown"
