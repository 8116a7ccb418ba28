"""Who may use the console, and which requests may write. Pure: no web framework here.

Four checks, each a function of the request's headers:

- **Host** (:meth:`ConsoleGuard.host_allowed`): on a loopback address the ``Host`` header
  must name the loopback (``127.0.0.1``, ``localhost``, ``[::1]`` with the console's port;
  without one when the port is the scheme's default, as browsers send it for port 80).
  A web page on another site that points its own name at 127.0.0.1 (DNS rebinding) then
  cannot talk to the console from the visitor's browser.
- **Token** (:meth:`ConsoleGuard.authorization`): required whenever the console listens on
  anything but the loopback, or behind a TLS proxy. Sent as ``Authorization: Bearer
  <token>`` (scripts); a browser signs in once (the one-time link printed at start-up, or
  the token typed into the sign-in page) and then holds a session cookie: a random session
  id that the console maps to the session (:class:`Sessions`), never the token itself. The
  cookie is ``HttpOnly`` and ``SameSite=Strict`` (another site's page cannot send it), and
  ``Secure`` when the console is served over TLS (``--certfile``) or behind a TLS proxy
  (``--behind-tls-proxy``). Signing out ends the session. Wrong tokens are counted per
  client (:class:`LoginThrottle`).
- **Body size** (:func:`body_refusal`): a request that is not authorized may carry at most
  :data:`UNAUTHENTICATED_BODY_MAX_BYTES` (the sign-in form), an authorized one the
  console's cap; the ``Content-Length`` header decides before any of the body is read, and
  a body without one (chunked) is refused.
- **Same origin** (:meth:`ConsoleGuard.same_origin`): a write (any method but GET, HEAD,
  OPTIONS) must come from the console's own page: its ``Origin`` (or, without one, its
  ``Referer``) must be the console's own origin, and a browser's ``Sec-Fetch-Site`` must
  not say ``cross-site``. Writes are refused altogether unless the console was started
  with ``--allow-writes``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

#: The cookie a browser holds after signing in: a session id (see :class:`Sessions`).
COOKIE_NAME = "state_tasks_console"
#: The largest body a request without the token may carry: the sign-in form (a token of a
#: few dozen characters) fits many times over. Larger is refused (413) unread.
UNAUTHENTICATED_BODY_MAX_BYTES = 4096
#: A session ends after this many seconds without a request, or this long after sign-in.
SESSION_IDLE_S = 12 * 3600.0
SESSION_MAX_S = 7 * 24 * 3600.0
#: Sessions held at most (the oldest ends first).
MAX_SESSIONS = 1000
#: Wrong tokens one client may send within :data:`LOGIN_WINDOW_S` before it must wait.
MAX_LOGIN_FAILURES = 10
LOGIN_WINDOW_S = 60.0
#: Clients whose wrong tokens are counted at once, at most (the oldest are forgotten).
MAX_THROTTLED_CLIENTS = 10_000
#: Methods that never change anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
#: The port a browser leaves out of ``Host`` for each scheme.
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``127.0.0.0/8``, ``::1``, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


#: How a request was let in: the token as a bearer header, a session cookie, or nothing
#: needed (the loopback without a token).
Authorization = Literal["bearer", "session", "open"]
#: What a one-time sign-in code was: good (now used up), used before, or never issued.
Redeemed = Literal["ok", "used", "unknown"]


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def _same(offered: str, expected: str) -> bool:
    return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), expected.encode())


class Sessions:
    """Signed-in browsers: random session ids mapped to when they began and were last used.

    The cookie holds the id only, so a cookie that leaks (a backup, a shared profile) ends
    with its session (sign-out, idleness, a console restart) and never reveals the token.

    :param idle_s: a session unused this long is over.
    :param max_s: a session is over this long after it began, used or not.
    :param max_sessions: sessions held at most; a new one ends the oldest.
    """

    def __init__(
        self,
        idle_s: float = SESSION_IDLE_S,
        max_s: float = SESSION_MAX_S,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        # id -> (began, last used), oldest first
        self._sessions: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def begin(self) -> str:
        """A new session; returns its id (256 random bits, URL-safe)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._sessions[session_id] = (now, now)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id

    def valid(self, session_id: str | None) -> bool:
        """Whether ``session_id`` is a live session (using it keeps it alive)."""
        if not session_id or len(session_id) > 128:
            return False
        now = self._clock()
        with self._lock:
            times = self._sessions.get(session_id)
            if times is None:
                return False
            began, used = times
            if now - used > self.idle_s or now - began > self.max_s:
                del self._sessions[session_id]
                return False
            self._sessions[session_id] = (began, now)
            return True

    def end(self, session_id: str | None) -> bool:
        """End a session (sign-out); ``False`` if there was none."""
        with self._lock:
            return self._sessions.pop(session_id or "", None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


class LoginThrottle:
    """Counts wrong tokens per client: after :data:`MAX_LOGIN_FAILURES` within
    :data:`LOGIN_WINDOW_S`, that client's sign-ins are refused until the window has passed
    (the token itself is 256 random bits, but one chosen with ``--token`` may be weaker)."""

    def __init__(
        self,
        max_failures: int = MAX_LOGIN_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must wait before its next sign-in is taken (0: now)."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return 0.0
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if len(times) < self.max_failures:
                return 0.0
            return self.window_s - (now - times[0])

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        with self._lock:
            times = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
            times.append(self._clock())
            self._failures[client] = times
            while len(self._failures) > MAX_THROTTLED_CLIENTS:
                self._failures.popitem(last=False)


@dataclass(frozen=True)
class BodyRefusal:
    """Why a request's body is refused before it is read: an HTTP status and a sentence."""

    status: int
    code: str
    message: str


def body_refusal(headers: Mapping[str, str], max_bytes: int, why: str) -> BodyRefusal | None:
    """Whether a request's body must be refused, from its headers alone (nothing is read).

    A body needs a ``Content-Length`` (a chunked body is refused: its size is not known
    before it is read) of at most ``max_bytes``; ``why`` names the cap in the message.
    """
    if headers.get("transfer-encoding"):
        return BodyRefusal(
            411, "LENGTH_REQUIRED", "send the request body with a Content-Length header"
        )
    length = headers.get("content-length")
    if length is None:
        return None
    if not (length.isascii() and length.isdigit()) or len(length) > 18:
        return BodyRefusal(400, "VALIDATION_ERROR", f"invalid Content-Length {length[:40]!r}")
    if int(length) > max_bytes:
        return BodyRefusal(
            413,
            "BODY_TOO_LARGE",
            f"the request body is {int(length):,} bytes; {why} at most {max_bytes:,} bytes",
        )
    return None


@dataclass
class ConsoleGuard:
    """The console's access rules.

    :param host: the address the console listens on.
    :param port: its port.
    :param token: the token every request must carry; ``None`` for none (loopback only).
    :param allow_writes: whether set, update, delete and trigger changes are allowed.
    :param behind_tls_proxy: the console is reached through a reverse proxy that terminates
        TLS: the browser's origin is ``https://<Host>``, cookies are ``Secure``, and, since
        the proxy makes it reachable from elsewhere, a token is required and any ``Host``
        is taken.
    """

    host: str
    port: int
    token: str | None = None
    allow_writes: bool = False
    behind_tls_proxy: bool = False
    sessions: Sessions = field(default_factory=Sessions, repr=False)
    throttle: LoginThrottle = field(default_factory=LoginThrottle, repr=False)
    _login_codes: set[str] = field(default_factory=set, repr=False)
    _used_codes: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.token is None and self.exposed:
            where = "behind a proxy" if self.behind_tls_proxy else f"on {self.host}"
            raise ValueError(
                f"the console listens {where}, which other machines can reach: it needs "
                "a token (--token, or STATE_TASKS_CONSOLE_TOKEN; a random one is made if unset)"
            )

    @property
    def exposed(self) -> bool:
        """Whether other machines can reach the console (any address but the loopback, or
        the loopback behind a proxy)."""
        return self.behind_tls_proxy or not is_loopback(self.host)

    def scheme(self, seen: str) -> str:
        """The scheme the browser uses, from the one the request arrived with: ``https``
        behind a TLS proxy (which talks plain HTTP to the console)."""
        return "https" if self.behind_tls_proxy else seen.lower()

    # -- the Host header -----------------------------------------------------------------

    def host_allowed(self, host_header: str | None, scheme: str = "http") -> bool:
        """Whether the request's ``Host`` names this console (checked on the loopback only).

        A ``Host`` without a port is this console's when its port is the default of the
        request's ``scheme`` (80 for http): a browser then leaves the port out.
        """
        if self.exposed:
            return True  # reachable under any name; the token guards it
        if not host_header:
            return False
        allowed = {f"{name}:{self.port}" for name in LOOPBACK_NAMES}
        if DEFAULT_PORTS.get(scheme.lower()) == self.port:
            allowed.update(LOOPBACK_NAMES)
        return host_header.lower() in allowed

    # -- the token -----------------------------------------------------------------------

    def authorization(self, authorization: str | None, cookie: str | None) -> Authorization | None:
        """How the request is let in: the token as ``Authorization: Bearer``, a live session
        cookie, or ``"open"`` when the console needs no token; ``None``: it is not."""
        if self.token is None:
            return "open"
        offered = _bearer(authorization)
        if offered is not None and _same(offered, self.token):
            return "bearer"
        if self.sessions.valid(cookie):
            return "session"
        return None

    def authorized(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether the request carries the token or a session (always true without a token)."""
        return self.authorization(authorization, cookie) is not None

    def token_matches(self, offered: str | None) -> bool:
        """Whether ``offered`` (typed into the sign-in page) is the token."""
        return bool(offered) and self.token is not None and _same(offered or "", self.token)

    def login_code(self) -> str:
        """A code for one login: the link printed at start-up carries it."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._login_codes.add(code)
        return code

    def redeem(self, code: str | None) -> Redeemed:
        """Use a login code up: ``"ok"`` once per code, ``"used"`` after that, ``"unknown"``
        for a code never issued."""
        if not code:
            return "unknown"
        with self._lock:
            for known in self._login_codes:
                if _same(code, known):
                    self._login_codes.discard(known)
                    self._used_codes.add(known)
                    return "ok"
            if any(_same(code, used) for used in self._used_codes):
                return "used"
        return "unknown"

    # -- writes --------------------------------------------------------------------------

    def same_origin(self, method: str, headers: Mapping[str, str], scheme: str = "http") -> bool:
        """Whether a request may change something as far as its origin goes.

        Safe methods always may. Others need an ``Origin`` (else a ``Referer``) equal to
        ``scheme://<Host>``; a request with neither is refused (every browser sends
        ``Origin`` with a ``fetch`` POST; a script can send it too).
        """
        if method.upper() in SAFE_METHODS:
            return True
        host = headers.get("host")
        if not host:
            return False
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None or origin == "null":
            referer = headers.get("referer")
            if not referer:
                return False
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin.lower() == f"{scheme}://{host}".lower()
