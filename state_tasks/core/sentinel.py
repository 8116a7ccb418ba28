"""Redis behind Sentinel: the URL convention shared by the broker, the results and state.

kombu's and Celery's convention, used unchanged for state: every sentinel as its own
``sentinel://`` URL, joined by ``;``, and the name of the watched master given apart
(``master_name``)::

    sentinel://:password@10.0.0.1:26379/0;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379

The password, user name and db number of the *first* URL that has them are the master's
(the sentinels themselves take ``sentinel_password``); a port left out is 26379.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from state_tasks.core.errors import ConfigError
from state_tasks.core.urls import redact_url

SENTINEL_SCHEME = "sentinel://"
#: The port a sentinel listens on unless its URL says otherwise.
DEFAULT_SENTINEL_PORT = 26379
#: Environment variable naming the master for the broker, the results and (by default) state.
SENTINEL_MASTER_VARIABLE = "STATE_TASKS_SENTINEL_MASTER"
#: Environment variable holding the sentinels' own password, when they require one.
SENTINEL_PASSWORD_VARIABLE = "STATE_TASKS_SENTINEL_PASSWORD"


def is_sentinel_url(url: object) -> bool:
    """True for a ``sentinel://`` URL (or a ``;``-separated list of them)."""
    return str(url).startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelTarget:
    """The sentinels to ask and how to log in to the master they name."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Read ``sentinel://host:port[;sentinel://host:port...]`` (see the module's doc).

    :raises ConfigError: a part that is not a ``sentinel://host[:port][/db]`` URL; the
        message shows the URL with its password replaced by ``***``.
    """
    sentinels: list[tuple[str, int]] = []
    db: int | None = None
    username: str | None = None
    password: str | None = None
    for part in url.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            parts = urlsplit(part)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as e:
            raise ConfigError(f"sentinel URL {redact_url(url)!r}: {e}") from None
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigError(
                f"sentinel URL {redact_url(url)!r}: every part must be sentinel://host[:port][/db]"
            )
        sentinels.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ConfigError(f"sentinel URL {redact_url(url)!r}: db {path!r} is not a number")
            db = int(path)
        if parts.password is not None and password is None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
    if not sentinels:
        raise ConfigError("sentinel URL names no sentinel (sentinel://host:port;...)")
    return SentinelTarget(tuple(sentinels), db or 0, username, password)
