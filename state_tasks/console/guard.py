"""Who may use the console, and which requests may write. Pure: no web framework here.

Three checks, each a function of the request's headers:

- **Host** (:meth:`ConsoleGuard.host_allowed`): on a loopback address the ``Host`` header
  must name the loopback (``127.0.0.1``, ``localhost``, ``[::1]`` with the console's port;
  without one when the port is the scheme's default, as browsers send it for port 80).
  A web page on another site that points its own name at 127.0.0.1 (DNS rebinding) then
  cannot talk to the console from the visitor's browser.
- **Token** (:meth:`ConsoleGuard.authorized`): required whenever the console listens on
  anything but the loopback. Sent as ``Authorization: Bearer <token>`` (scripts) or as the
  cookie set by the one-time link printed at start-up (browsers). The cookie is
  ``HttpOnly`` and ``SameSite=Strict``, so another site's page cannot send it.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: The cookie a browser holds after the one-time link.
COOKIE_NAME = "state_tasks_console"
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


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


@dataclass
class ConsoleGuard:
    """The console's access rules.

    :param host: the address the console listens on.
    :param port: its port.
    :param token: the token every request must carry; ``None`` for none (loopback only).
    :param allow_writes: whether set, update, delete and trigger changes are allowed.
    """

    host: str
    port: int
    token: str | None = None
    allow_writes: bool = False
    _login_codes: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"the console listens on {self.host}, which other machines can reach: it needs "
                "a token (--token, or STATE_TASKS_CONSOLE_TOKEN; a random one is made if unset)"
            )

    # -- the Host header -----------------------------------------------------------------

    def host_allowed(self, host_header: str | None, scheme: str = "http") -> bool:
        """Whether the request's ``Host`` names this console (checked on the loopback only).

        A ``Host`` without a port is this console's when its port is the default of the
        request's ``scheme`` (80 for http): a browser then leaves the port out.
        """
        if not is_loopback(self.host):
            return True  # reachable under any name; the token guards it
        if not host_header:
            return False
        allowed = {f"{name}:{self.port}" for name in LOOPBACK_NAMES}
        if DEFAULT_PORTS.get(scheme.lower()) == self.port:
            allowed.update(LOOPBACK_NAMES)
        return host_header.lower() in allowed

    # -- the token -----------------------------------------------------------------------

    def authorized(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether the request carries the token (always true without one)."""
        if self.token is None:
            return True
        for offered in (_bearer(authorization), cookie):
            if offered is not None and hmac.compare_digest(
                offered.encode("utf-8", "surrogatepass"), self.token.encode()
            ):
                return True
        return False

    def login_code(self) -> str:
        """A code for one login: the link printed at start-up carries it."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._login_codes.add(code)
        return code

    def redeem(self, code: str | None) -> bool:
        """Use a login code up: true once per code, then never again."""
        if not code:
            return False
        with self._lock:
            for known in self._login_codes:
                if hmac.compare_digest(known.encode(), code.encode("utf-8", "surrogatepass")):
                    self._login_codes.discard(known)
                    return True
        return False

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
