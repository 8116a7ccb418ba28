"""Why a connection to a server failed, in words that point at the fix.

Drivers say what happened on the wire ("Connection reset by peer", "invalid
username-password pair", a TLS alert); an operator needs the likely mistake behind it (a
``rediss://`` URL on a plain port, a wrong password). Shared by the broker's and the result
backend's errors (:mod:`state_tasks.broker_errors`), the worker's start-up checks and the
RedisAdapter. The errors are recognised by their class names and texts;
:func:`bound_tls_handshakes` imports redis-py when called.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

#: What redis-py and OpenSSL say, mapped to the likely mistake. First match wins; the texts
#: are matched in lower case against each error of the chain (class name and message). These
#: are mistakes a retry cannot mend (:func:`is_permanent`).
_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("wrong version number", "wrong_version_number", "record layer failure", "packet length"),
        "TLS to a port that does not speak TLS? (a rediss:// or amqps:// URL on a plain port)",
    ),
    (
        # (bound_tls_handshakes: the server took the connection, then never said hello)
        ("no tls answer",),
        "TLS to a port that does not speak TLS? (a rediss:// URL on a plain port)",
    ),
    (
        ("certificate required", "eof occurred in violation of protocol", "unexpected eof"),
        "the server asks for a client certificate? (give the client's certificate and key)",
    ),
    (
        ("invalid username-password pair", "wrongpass", "access_refused", "access refused"),
        "wrong password (or user name) in the URL",
    ),
    (
        ("authentication required", "noauth"),
        "the server needs a password, and the URL gives none",
    ),
    (
        ("called without any password configured",),
        "the URL gives a password, and the server needs none",
    ),
)
#: Likely mistakes that may also be a passing state (a failover, a loaded server): said,
#: but retried.
_PASSING: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("no master found", "masternotfounderror"),
        "no sentinel knows a master of that name? (STATE_TASKS_SENTINEL_MASTER, master_name)",
    ),
)
_PLAIN_ON_TLS = (
    "plain text to a port that expects TLS? (use a rediss:// or amqps:// URL for a TLS port)"
)
_RESET = ("connection reset by peer", "connection closed by server", "connectionreseterror")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen and len(seen) < 10:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def likely_cause(error: BaseException, url: str) -> str | None:
    """The likely mistake behind ``error``, a failure to connect to or log in at ``url``;
    ``None`` when the error says nothing more than "unreachable" (or is a certificate that
    does not verify, which its own message says best)."""
    texts = []
    for cause in _chain(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return None
        texts.append(f"{cause.__class__.__name__}: {cause}".lower())
    text = " | ".join(texts)
    for needles, cause_text in (*_CAUSES, *_PASSING):
        if any(needle in text for needle in needles):
            return cause_text
    if not url.startswith(("rediss", "amqps")) and any(needle in text for needle in _RESET):
        return _PLAIN_ON_TLS
    return None


def is_permanent(cause: str | None) -> bool:
    """Whether a :func:`likely_cause` is a mistake that a retry cannot mend (a TLS or
    plain-text mismatch the server answered, a refused login): fail at once."""
    return cause is not None and any(cause == text for _, text in _CAUSES)


#: How long a TLS handshake may take when the connection sets no connect timeout.
DEFAULT_TLS_HANDSHAKE_TIMEOUT_S = 5.0


def bound_tls_handshakes() -> None:
    """Make redis-py's TLS handshakes end within the connection's connect timeout.

    redis-py connects with ``socket_connect_timeout``, then shakes hands under
    ``socket_timeout``: ``None`` for Celery's broker and results unless set, and then a
    ``rediss://`` URL on a plain Redis port waits for ever (the plain server waits for a
    command, the client for the server's hello). Patched once per process, in the class
    that every Redis client here uses (kombu's, Celery's, the adapter's); a handshake that
    times out fails as a ``ConnectionError`` naming the likely cause.
    """
    from redis.connection import SSLConnection
    from redis.exceptions import ConnectionError as RedisConnectionError

    original: Callable[..., Any] = SSLConnection._wrap_socket_with_ssl
    if getattr(original, "bounded", False):
        return

    def wrap(self: SSLConnection, sock: Any) -> Any:
        timeout_s = self.socket_connect_timeout or DEFAULT_TLS_HANDSHAKE_TIMEOUT_S
        sock.settimeout(timeout_s)
        try:
            wrapped = original(self, sock)
        except TimeoutError as e:
            raise RedisConnectionError(
                f"no TLS answer from {self.host}:{self.port} within {timeout_s:g} s"
            ) from e
        wrapped.settimeout(self.socket_timeout)
        return wrapped

    wrap.bounded = True  # type: ignore[attr-defined]
    SSLConnection._wrap_socket_with_ssl = wrap  # type: ignore[method-assign]
