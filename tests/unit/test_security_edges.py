"""The pure parts of the security hardening: signed headers, URL checks, scrubbing secrets,
naming the likely cause of a connection failure."""

from __future__ import annotations

import ssl

import pytest
import redis

from state_tasks.core.connect_errors import is_permanent, likely_cause
from state_tasks.core.errors import ConfigError
from state_tasks.core.urls import check_url, redact_url, scrub, url_passwords
from state_tasks.security import (
    SIGNED_HEADERS_KEY,
    bind_headers,
    refuse_tls_on_plain_urls,
    unbound_header,
)

HEADERS = {"task": "state::get", "id": "t-1", "eta": None, "timelimit": (None, None)}


def signed_body(headers: dict[str, object]) -> tuple[object, ...]:
    body = ((), {"scope": "s", "key": "k"}, {"callbacks": None})
    bind_headers(headers, body)
    return body


def test_a_body_names_the_headers_it_was_signed_with() -> None:
    body = signed_body(HEADERS)
    # (as a broker hands them back: tuples are lists after JSON)
    assert unbound_header({**HEADERS, "timelimit": [None, None]}, body) is None
    renamed = unbound_header({**HEADERS, "task": "state::delete"}, body)
    assert renamed == (
        "its 'task' header ('state::delete') is not the one its sender signed ('state::get')"
    )
    assert "its 'id' header" in str(unbound_header({**HEADERS, "id": "t-2"}, body))
    assert "its 'eta' header" in str(unbound_header({**HEADERS, "eta": "2030-01-01"}, body))
    # Display headers are not bound; a body without the copy is refused
    assert unbound_header({**HEADERS, "argsrepr": "lies"}, body) is None
    unsigned = ((), {}, {"callbacks": None})
    assert "does not name the task" in str(unbound_header(HEADERS, unsigned))
    assert SIGNED_HEADERS_KEY not in unsigned[2]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://127.0.0.1:1/0?password=Sec-ret-1", "not as ?password="),
        ("redis://:Sec/ret-1@127.0.0.1:1/0", "percent-encoded"),
        ("redis://:Sec#ret-1@127.0.0.1:1/0", "percent-encoded"),
        ("redis://:Sec-ret-1@127.0.0.1:1:2/0", "cannot be read"),
    ],
)
def test_a_url_drivers_would_misread_is_refused_with_its_password_masked(
    url: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_url("CELERY_BROKER_URL", url)
    assert words in info.value.message and "Sec" not in info.value.message
    assert info.value.message.startswith("CELERY_BROKER_URL 'redis://")


def test_good_urls_pass_the_check() -> None:
    for url in (
        "redis://:p%2Fw@h:6379/0",
        "redis://:p@w@h:6379/0",
        "amqp://u:p@h:5672//",
        "sentinel://:p@h:1;sentinel://h:2",
        "statefs://localhost/",
    ):
        check_url("CELERY_BROKER_URL", url)
    check_url("CELERY_RESULT_BACKEND", "redis://h/0?password=x", password_parameter=True)


def test_scrub_hides_passwords_by_key_by_url_and_by_value() -> None:
    answer = {
        "broker": {"transport_options": {"sentinel_kwargs": {"password": "Sent-1"}}},
        "url": "redis://:Url-pw-1@h:1/0",
        "text": ["said Other-pw-1 here"],
        "security_key": "/etc/key.pem",
    }
    assert scrub(answer, ["Other-pw-1"]) == {
        "broker": {"transport_options": {"sentinel_kwargs": {"password": "***"}}},
        "url": "redis://:***@h:1/0",
        "text": ["said *** here"],
        "security_key": "/etc/key.pem",
    }
    assert url_passwords(["redis://:a%2Fb@h/0;sentinel://:c@h:1"]) == {"a%2Fb", "a/b", "c"}
    assert redact_url("redis://:pw@h:1:2/0") == "redis://:***@h:1:2"


@pytest.mark.parametrize(
    ("error", "url", "cause", "permanent"),
    [
        (redis.AuthenticationError("invalid username-password pair"), "redis://h", "wrong", True),
        (redis.AuthenticationError("Authentication required."), "redis://h", "needs a", True),
        (redis.ConnectionError("no TLS answer from h:1 within 5 s"), "rediss://h", "TLS to", True),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            "rediss://h",
            "TLS to",
            True,
        ),
        (redis.ConnectionError("Connection reset by peer"), "redis://h", "plain text", False),
        (redis.ConnectionError("Connection reset by peer"), "rediss://h", None, False),
        (redis.ConnectionError("No master found for 'x'"), "sentinel://h", "no sentinel", False),
        (
            redis.ConnectionError("Error 111 connecting. Connection refused."),
            "redis://h",
            None,
            False,
        ),
    ],
)
def test_the_likely_cause_of_a_failed_connection(
    error: BaseException, url: str, cause: str | None, permanent: bool
) -> None:
    found = likely_cause(error, url)
    assert (found is None) if cause is None else (found is not None and cause in found), found
    assert is_permanent(found) is permanent


def test_tls_variables_need_tls_urls() -> None:
    env = {"CELERY_SSL_CERT_REQS": "none"}
    refuse_tls_on_plain_urls("rediss://h/0", "rediss://h/1", env)
    refuse_tls_on_plain_urls("amqps://h//", "statefile+file:///data/results", env)
    refuse_tls_on_plain_urls("redis://h/0", "redis://h/1", {})
    with pytest.raises(ConfigError, match="the result backend URL 'redis://:\\*\\*\\*@h/1'"):
        refuse_tls_on_plain_urls("amqps://h//", "redis://:pw@h/1", env)
