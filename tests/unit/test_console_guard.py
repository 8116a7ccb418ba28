"""The console's access rules: the Host check, the token, sessions, one-time links, wrong
tokens counted, body caps from the headers, same-origin writes, a TLS proxy in front."""

from __future__ import annotations

import pytest

from state_tasks.console.guard import (
    ConsoleGuard,
    LoginThrottle,
    Sessions,
    body_refusal,
    is_loopback,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_any_other_address_needs_a_token() -> None:
    with pytest.raises(ValueError, match="needs a token"):
        ConsoleGuard("0.0.0.0", 8765)
    assert ConsoleGuard("0.0.0.0", 8765, token="t").token == "t"


@pytest.mark.parametrize(
    ("host_header", "allowed"),
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("LOCALHOST:8765", True),
        ("127.0.0.1:9999", False),
        ("evil.example:8765", False),
        ("evil.example", False),
        (None, False),
        ("", False),
    ],
)
def test_on_the_loopback_the_host_header_must_name_it(
    host_header: str | None, allowed: bool
) -> None:
    assert ConsoleGuard("127.0.0.1", 8765).host_allowed(host_header) is allowed


def test_elsewhere_any_host_name_is_fine_because_the_token_guards_it() -> None:
    assert ConsoleGuard("0.0.0.0", 8765, token="t").host_allowed("console.internal:8765")


def test_the_token_comes_as_a_bearer_header_and_a_browser_holds_a_session_not_the_token() -> None:
    guard = ConsoleGuard("0.0.0.0", 8765, token="s3cret")
    assert guard.authorization("Bearer s3cret", None) == "bearer"
    assert guard.authorized("bearer s3cret", None)
    # the cookie is a session id: the token itself is no cookie
    assert not guard.authorized(None, "s3cret")
    session = guard.sessions.begin()
    assert session != "s3cret" and len(session) >= 40
    assert guard.authorization(None, session) == "session"
    assert guard.sessions.end(session)
    assert not guard.authorized(None, session)  # signed out
    for header, cookie in [
        (None, None),
        ("Bearer nope", None),
        ("Basic s3cret", None),
        ("Bearer", None),
        (None, "nope"),
        ("s3cret", None),
        ("Bearer s3cre", None),
    ]:
        assert not guard.authorized(header, cookie), (header, cookie)
    no_token = ConsoleGuard("127.0.0.1", 8765)
    assert no_token.authorization(None, None) == "open"  # no token: nothing to check


def test_a_login_code_works_once_and_a_used_one_is_told_from_a_wrong_one() -> None:
    guard = ConsoleGuard("0.0.0.0", 8765, token="t")
    code = guard.login_code()
    assert guard.redeem("wrong") == "unknown"
    assert guard.redeem(None) == "unknown"
    assert guard.redeem(code) == "ok"
    assert guard.redeem(code) == "used"
    assert guard.token_matches("t") and not guard.token_matches("T")
    assert not guard.token_matches("") and not guard.token_matches(None)


def test_sessions_end_when_idle_when_too_old_and_the_oldest_first() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=100, max_s=1000, max_sessions=2, clock=clock)
    first = sessions.begin()
    clock.now += 90
    assert sessions.valid(first)  # used: idle again from now
    clock.now += 90
    assert sessions.valid(first)
    clock.now += 101
    assert not sessions.valid(first)  # idle too long
    kept = sessions.begin()
    for _ in range(10):
        clock.now += 95
        assert sessions.valid(kept)
    clock.now += 95
    assert not sessions.valid(kept)  # over max_s since it began, used or not
    a, b, c = sessions.begin(), sessions.begin(), sessions.begin()
    assert not sessions.valid(a) and sessions.valid(b) and sessions.valid(c)
    assert len(sessions) == 2
    assert not sessions.valid("x" * 500) and not sessions.valid(None)


def test_wrong_tokens_are_counted_per_client_and_the_wait_ends() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.wait_s("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
        clock.now += 1
    assert throttle.wait_s("10.0.0.1") == pytest.approx(57)
    assert throttle.wait_s("10.0.0.2") == 0  # another client is not held up
    clock.now += 57
    assert throttle.wait_s("10.0.0.1") == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, None),  # no body
        ({"content-length": "4096"}, None),
        ({"content-length": "4097"}, 413),
        ({"content-length": str(50 * 1024 * 1024)}, 413),
        ({"transfer-encoding": "chunked"}, 411),  # its size is not known before it is read
        ({"content-length": "12", "transfer-encoding": "chunked"}, 411),
        ({"content-length": "-1"}, 400),
        ({"content-length": "1e9"}, 400),
        ({"content-length": "9" * 40}, 400),
    ],
)
def test_a_body_is_refused_from_its_headers(headers: dict[str, str], status: int | None) -> None:
    refusal = body_refusal(headers, 4096, "a request without the token may carry")
    assert (refusal.status if refusal else None) == status
    if status == 413:
        assert refusal is not None and "at most 4,096 bytes" in refusal.message


def test_behind_a_tls_proxy_the_loopback_needs_a_token_and_the_origin_is_https() -> None:
    with pytest.raises(ValueError, match="behind a proxy"):
        ConsoleGuard("127.0.0.1", 8765, behind_tls_proxy=True)
    guard = ConsoleGuard("127.0.0.1", 8765, token="t", behind_tls_proxy=True)
    assert guard.exposed and guard.scheme("http") == "https"
    assert guard.host_allowed("console.example.com")  # the proxy passes the public name
    headers = {"host": "console.example.com", "origin": "https://console.example.com"}
    assert guard.same_origin("POST", headers, guard.scheme("http"))
    plain = ConsoleGuard("127.0.0.1", 8765)
    assert plain.scheme("http") == "http" and not plain.exposed


@pytest.mark.parametrize(
    ("method", "headers", "allowed"),
    [
        ("GET", {}, True),
        ("POST", {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8765"}, True),
        ("POST", {"host": "127.0.0.1:8765", "origin": "http://evil.example"}, False),
        ("POST", {"host": "127.0.0.1:8765", "origin": "https://127.0.0.1:8765"}, False),
        ("POST", {"host": "127.0.0.1:8765", "origin": "http://127.0.0.1:8766"}, False),
        ("POST", {"host": "127.0.0.1:8765"}, False),
        ("POST", {"host": "127.0.0.1:8765", "origin": "null"}, False),
        ("POST", {"host": "127.0.0.1:8765", "referer": "http://127.0.0.1:8765/#/x"}, True),
        ("POST", {"host": "127.0.0.1:8765", "referer": "http://evil.example/"}, False),
        (
            "POST",
            {
                "host": "127.0.0.1:8765",
                "origin": "http://127.0.0.1:8765",
                "sec-fetch-site": "cross-site",
            },
            False,
        ),
        (
            "POST",
            {
                "host": "127.0.0.1:8765",
                "origin": "http://127.0.0.1:8765",
                "sec-fetch-site": "same-site",
            },
            False,
        ),
        ("POST", {"origin": "http://127.0.0.1:8765"}, False),
        ("DELETE", {"host": "127.0.0.1:8765", "origin": "http://evil.example"}, False),
    ],
)
def test_writes_must_come_from_the_console_itself(
    method: str, headers: dict[str, str], allowed: bool
) -> None:
    guard = ConsoleGuard("127.0.0.1", 8765, allow_writes=True)
    assert guard.same_origin(method, headers) is allowed


@pytest.mark.parametrize(
    ("port", "scheme", "host_header", "allowed"),
    [
        (80, "http", "127.0.0.1", True),  # what a browser sends for http://127.0.0.1/
        (80, "http", "localhost", True),
        (80, "http", "[::1]", True),
        (80, "http", "127.0.0.1:80", True),
        (80, "http", "evil.example", False),
        (443, "https", "localhost", True),
        (443, "http", "localhost", False),
        (8765, "http", "127.0.0.1", False),
        (8765, "http", "localhost", False),
    ],
)
def test_a_host_without_a_port_is_fine_when_the_port_is_the_schemes_default(
    port: int, scheme: str, host_header: str, allowed: bool
) -> None:
    assert ConsoleGuard("127.0.0.1", port).host_allowed(host_header, scheme) is allowed
