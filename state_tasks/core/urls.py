"""Broker and storage URLs as they may be shown: in errors, logs and messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from state_tasks.core.errors import ConfigError

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
    except ValueError:  # (a bad port): the hosts, without the login
        userinfo, at, hosts = netloc.rpartition("@")
        return f"{scheme}://{userinfo.partition(':')[0] + ':***@' if at else ''}{hosts}"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_url(name: str, url: str, password_parameter: bool = False) -> None:
    """Refuse a URL that drivers would misread, before they print a part of its password.

    :raises ConfigError: a ``?password=`` query parameter (kombu takes the password from
        the login, and fails with a traceback on both; ``password_parameter`` allows it), or
        a login whose ``/``, ``?`` or ``#`` is not percent-encoded (the URL's host would
        start inside the password). The message shows the URL as :func:`redact_url` does.
    """
    for part in url.split(";"):
        scheme, sep, rest = part.partition("://")
        if not sep or scheme.startswith(("statefs", "filesystem", "file", "statefile")):
            continue
        end = netloc_end(rest)
        if "@" in rest[end:]:
            raise ConfigError(
                f"{name} {redact_url(url)!r} cannot be read: its password holds a '/', '?' or "
                "'#'; write them percent-encoded (%2F, %3F, %23; an '@' as %40)"
            )
        if not password_parameter and re.search(r"[?&]password=", rest[end:], re.I):
            raise ConfigError(
                f"{name} {redact_url(url)!r}: give the password in the URL's login "
                "(scheme://user:password@host), not as ?password="
            )
        try:
            urlsplit(part).port  # noqa: B018 (reads the port: raises on a bad one)
        except ValueError as e:
            raise ConfigError(f"{name} {redact_url(url)!r} cannot be read: {e}") from None


def url_passwords(urls: Iterable[str]) -> set[str]:
    """The passwords in ``urls`` (each part of a ``;``-separated list), as given and decoded."""
    found: set[str] = set()
    for url in urls:
        for part in str(url).split(";"):
            try:
                password = urlsplit(part).password
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password)})
            for match in _SECRET_PARAMETER.finditer(part):
                value = part[match.end() :].split("&")[0].split("#")[0]
                if value:
                    found.update({value, unquote(value)})
    return found


#: Keys whose values are secrets wherever they appear (Celery's and kombu's settings,
#: redis-py's keyword arguments).
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token", re.I)


def scrub(value: Any, secrets: Iterable[str] = ()) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every secret shown as ``***``:
    the values of keys named like a password, the passwords of URLs, and each of
    ``secrets`` wherever it appears in a text."""
    known = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            return {
                key: "***"
                if isinstance(key, str) and _SECRET_KEY.search(key) and item[key]
                else clean(item[key])
                for key in item
            }
        if isinstance(item, (list, tuple)):
            return type(item)(clean(x) for x in item)
        if isinstance(item, str):
            text = redact_url(item) if "://" in item and "@" in item else item
            for secret in known:
                text = text.replace(secret, "***")
            return text
        return item

    return clean(value)
