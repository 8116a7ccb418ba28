"""Broker and storage URLs as they may be shown: in errors, logs and messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: URL schemes of the embedded broker (kombu's filesystem transport, and ours that keeps order).
EMBEDDED_BROKER_SCHEMES = ("statefs://", "filesystem://")


def is_embedded_broker(url: object) -> bool:
    """True for the embedded filesystem broker, which lives in a folder, not a server."""
    return str(url).startswith(EMBEDDED_BROKER_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
