"""What a client says when the broker or the result backend cannot be reached.

One sentence naming where it looked, with every password of the app's URLs (broker, its
read and write URLs, result backend) replaced by ``***``. Shared by the command line
(:mod:`state_tasks.cli`) and the console's gateway (:mod:`state_tasks.console.gateway`).
"""

from __future__ import annotations

import ssl
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from state_tasks.core.connect_errors import likely_cause
from state_tasks.core.urls import redact_url

#: What a call through the broker raises when the broker or the result backend cannot be
#: reached (Celery raises ``RuntimeError`` when its result backend cannot reconnect).
#: ``RecursionError`` is a ``RuntimeError`` too but means a value nested too deeply: catch
#: it before these.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    OSError,
    RuntimeError,
    RedisError,
)

_URL_SETTINGS = ("broker_url", "broker_read_url", "broker_write_url", "result_backend")


def app_urls(app: Any) -> list[str]:
    """Every URL the app connects with, and each part of a ``;``-separated list of them,
    longest first (a whole list is replaced before its parts)."""
    urls: set[str] = set()
    for name in _URL_SETTINGS:
        value = app.conf.get(name)
        if not isinstance(value, str) or not value:
            continue
        urls.add(value)
        urls.update(part for part in value.split(";") if part)
    return sorted(urls, key=len, reverse=True)


def redact(app: Any, text: str) -> str:
    """``text`` with each of the app's URLs shown as :func:`redact_url` shows it."""
    for url in app_urls(app):
        text = text.replace(url, redact_url(url))
    return text


def where(app: Any) -> str:
    """The broker (and the result backend, if another) as they may be shown."""
    broker = redact_url(str(app.conf.broker_url))
    backend = redact_url(str(app.conf.result_backend))
    return broker if broker == backend else f"{broker} (results: {backend})"


def describe_unreachable(app: Any, error: BaseException) -> str:
    """One line for one of :data:`UNREACHABLE_ERRORS`: which server, what went wrong, and
    the likely mistake behind it when the error tells (:func:`likely_cause`)."""
    # (one URL for both: "the broker", as the CLI and the console have always said)
    results = _from_results(error) and app.conf.result_backend != app.conf.broker_url
    server = "the result backend" if results else "the broker"
    url = str(app.conf.result_backend if results else app.conf.broker_url)
    cause = likely_cause(error, url)
    hint = f"; {cause}" if cause else ""
    at = redact_url(url) if results else where(app)
    tls = _tls_failure(error)
    if tls is not None:
        return f"TLS with {server} at {at} failed: {redact(app, tls)}{hint}"
    detail = redact(app, " ".join(str(_innermost(error)).split()))
    if hint:
        detail = detail.rstrip(".")
    return f"cannot reach {server} at {at}: {detail}{hint}"


def _from_results(error: BaseException) -> bool:
    """Whether the result backend failed (Celery wraps its last error in a RuntimeError)."""
    return isinstance(error, RuntimeError) and "result store backend" in " ".join(
        str(error).split()
    )


def _innermost(error: BaseException) -> BaseException:
    """The driver's error under Celery's "retry limit exceeded" (it says what failed)."""
    if _from_results(error) and error.__cause__ is not None:
        return error.__cause__
    return error


def _tls_failure(error: BaseException) -> str | None:
    """Why, when the connection failed in the TLS handshake (kombu's ``OperationalError``
    keeps the ``ssl`` error as its context): the server was reached, so "cannot reach"
    would send one looking for a network problem instead of at the certificates."""
    cause: BaseException | None = error
    for _ in range(10):
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate does not verify ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            detail = " ".join(str(cause).split())
            return f"{detail}; check the certificate files"
        cause = cause.__cause__ or cause.__context__
    return None
