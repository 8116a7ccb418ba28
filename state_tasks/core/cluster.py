"""Redis Cluster: the URL convention for state.

Seed nodes comma-separated after one scheme, the login (if any) once, before the first::

    redis+cluster://[user:password@]10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379
    rediss+cluster://...                       (TLS to every node)

A cluster has one database, so a path other than ``/`` or ``/0`` is refused. Any one
live seed is enough: the client asks it for the others (``CLUSTER SLOTS``). A plain
``redis://host:port`` (or ``rediss://``) with ``cluster: true`` is the same with one seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from state_tasks.core.errors import ConfigError
from state_tasks.core.urls import netloc_end, redact_url

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: The port a seed without one is taken to listen on.
DEFAULT_CLUSTER_PORT = 6379


def is_cluster_url(url: object) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return str(url).startswith(CLUSTER_SCHEMES)


@dataclass(frozen=True)
class ClusterTarget:
    """The seed nodes and how to log in to every node of the cluster."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def _shown(url: str) -> str:
    """The URL as an error may show it: password redacted, nothing after the hosts (a path may
    be part of a password with an unencoded ``/``, a query may hold ``password=``)."""
    scheme, sep, rest = redact_url(url).partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo}{at}{hosts[: netloc_end(hosts)]}"


def parse_cluster_url(url: str) -> ClusterTarget:
    """Read a cluster URL (see the module's doc), or a plain ``redis://`` / ``rediss://``
    URL naming one seed (``cluster: true``).

    :raises ConfigError: no seed, a seed that is not ``host[:port]``, a db other than 0 or
        another path, a query (``?...``), a login with an unencoded ``/``, ``?`` or ``#``, or
        another scheme; the message shows the URL with its password replaced by ``***`` and
        nothing after the hosts but a db number.
    """
    shown = _shown(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis+cluster", "rediss+cluster", "redis", "rediss"):
        raise ConfigError(
            f"cluster URL {shown!r} must start with redis+cluster://, "
            "rediss+cluster:// (or redis:// / rediss:// with cluster: true)"
        )
    end = netloc_end(rest)
    netloc, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise ConfigError(
            f"cluster URL {shown!r}: its login has a '/', '?' or '#', which ends the hosts "
            "in a URL; percent-encode them (%2F, %3F, %23)"
        )
    path, query_mark, _ = tail.partition("?")
    path, fragment_mark, _ = path.partition("#")
    path = path.strip("/")
    if path.isdigit() and path.isascii():
        if int(path) != 0:
            raise ConfigError(
                f"cluster URL {shown!r}: a Redis Cluster has only db 0 (got /{path}); "
                "use key_prefix to keep deployments apart"
            )
    elif path:
        raise ConfigError(
            f"cluster URL {shown!r} has a path after the hosts that is not a db number "
            "(an unencoded '/' in the password?); a Redis Cluster has only db 0"
        )
    if query_mark or fragment_mark or "#" in tail:
        raise ConfigError(
            f"cluster URL {shown!r} has options after '?' (or a '#'), which are not read; "
            "put the login before the hosts and TLS settings in the adapter's ssl_* options"
        )
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        seed = seed.strip()
        if not seed:
            continue
        try:
            parts = urlsplit(f"//{seed}")
            port = parts.port or DEFAULT_CLUSTER_PORT
        except ValueError as e:
            raise ConfigError(f"cluster URL {shown!r}: seed {seed!r}: {e}") from None
        if not parts.hostname:
            raise ConfigError(f"cluster URL {shown!r}: seed {seed!r} is not host:port")
        nodes.append((parts.hostname, port))
    if not nodes:
        raise ConfigError(
            f"cluster URL {shown!r} names no seed node (redis+cluster://host:port,host:port)"
        )
    return ClusterTarget(tuple(nodes), username, password, scheme.startswith("rediss"))
