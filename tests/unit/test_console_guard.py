"""The console's access rules: the Host check, the token, one-time links, same-origin writes."""

from __future__ import annotations

import pytest

from state_tasks.console.guard import ConsoleGuard, is_loopback


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


def test_the_token_comes_as_a_bearer_header_or_a_cookie() -> None:
    guard = ConsoleGuard("0.0.0.0", 8765, token="s3cret")
    assert guard.authorized("Bearer s3cret", None)
    assert guard.authorized("bearer s3cret", None)
    assert guard.authorized(None, "s3cret")
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
    assert ConsoleGuard("127.0.0.1", 8765).authorized(None, None)  # no token: nothing to check


def test_a_login_code_works_once() -> None:
    guard = ConsoleGuard("0.0.0.0", 8765, token="t")
    code = guard.login_code()
    assert not guard.redeem("wrong")
    assert not guard.redeem(None)
    assert guard.redeem(code)
    assert not guard.redeem(code)


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
