"""Broker and storage URLs as they may be shown: in errors, logs and messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: URL schemes of the embedded broker (kombu's filesystem transport, and ours that keeps order).
EMBEDDED_BROKER_SCHEMES = ("statefs://", "filesystem://")


#: A query parameter that carries a secret (redis-py reads ``?password=`` from a URL).
_SECRET_PARAMETER = re.compile(r"([?&][^=&#]*(?:password|passwd|secret|token)[^=&#]*=)[^&#]*", re.I)


def is_embedded_broker(url: object) -> bool:
    """True for the embedded filesystem broker, which lives in a folder, not a server."""
    return str(url).startswith(EMBEDDED_BROKER_SCHEMES)


def netloc_end(rest: str) -> int:
    """Where the host part of a URL's ``rest`` (after ``scheme://``) ends: its first
    ``/``, ``?`` or ``#``, or its length."""
    return min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors).

    A ``;``-separated list (Sentinel's ``sentinel://a;sentinel://b``) is redacted part by part,
    and a comma-separated list of hosts after one login (Redis Cluster's
    ``redis+cluster://:pw@a:1,b:2``) keeps its hosts. A login with an unencoded ``/``,
    ``?`` or ``#`` (which ends the hosts in a URL) is cut at the last ``@``: the hosts after
    it are shown, nothing after them. A query parameter named like a secret
    (``?password=``, ``sentinel_password``, ``token``) shows ``***`` too.
    """
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    url = _SECRET_PARAMETER.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    end = netloc_end(rest)
    if sep and "@" in rest[end:]:
        # an unencoded '/', '?' or '#' in the login: the login ends at the last '@'
        userinfo, _, after = rest.rpartition("@")
        user = userinfo.partition(":")[0] + ":" if ":" in userinfo else ""
        return f"{scheme}://{user}***@{after[: netloc_end(after)]}"
    netloc, slash, path = rest.partition("/")
    if sep and "," in netloc:
        userinfo, at, hosts = netloc.rpartition("@")
        if not at or ":" not in userinfo:
            return url
        return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}{slash}{path}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
