"""How the Redis adapter reaches Redis: the URL and its options, checked once, the client
they make (one server, Sentinel, or a Cluster), and what a driver error means.

:class:`RedisTarget` validates everything at construction (a wrong option is a
:class:`~state_tasks.core.errors.ConfigError` naming it, with the URL's password shown as
``***``) and builds the client on :meth:`RedisTarget.connect`. The error helpers decide
whether a failure is one a retry may mend (:func:`is_unavailable`: the state tasks retry
it as :class:`~state_tasks.core.errors.AdapterUnavailable`) and describe it without a
password (:func:`node_error`).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from state_tasks.core.cluster import ClusterTarget, is_cluster_url, parse_cluster_url
from state_tasks.core.connect_errors import bound_tls_handshakes
from state_tasks.core.errors import AdapterError, AdapterUnavailable, ConfigError
from state_tasks.core.sentinel import SentinelTarget, is_sentinel_url, parse_sentinel_url
from state_tasks.core.urls import redact_url

DEFAULT_REDIS_URL = "redis://localhost:6379"
#: Connection and socket timeouts: a dead server is reported, not waited on forever.
DEFAULT_SOCKET_TIMEOUT_S = 5.0
#: TLS (``rediss://``): the server's certificate must verify against the CA (redis-py's
#: ``ssl_cert_reqs``: ``required``, ``optional`` or ``none``).
DEFAULT_SSL_CERT_REQS = "required"
#: Redis Cluster: how many times one call is retried (by redis-py, and by the adapter for a
#: write with ``wait_replicas``) on a connection error, ``CLUSTERDOWN``, ``TRYAGAIN`` or a
#: moved slot, with exponential backoff and jitter, before it fails as AdapterUnavailable
#: (which a state task retries in its turn). About 0.1 + 0.2 + 0.4 s at most.
CLUSTER_RETRIES = 3
CLUSTER_BACKOFF_BASE_S = 0.1
CLUSTER_BACKOFF_CAP_S = 1.0

#: What a call fails with when the server, or a node of a cluster, cannot take it now: a
#: state task retries it. On a cluster: a node down or unreachable, CLUSTERDOWN (slots not
#: served during a failover), TRYAGAIN, a slot that moved (MOVED/ASK the client could not
#: follow within its retries: ``ClusterError("TTL exhausted.")``) or not covered.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,  # and its ClusterDownError, MasterDownError
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # and its MovedError
    redis.exceptions.SlotNotCoveredError,
)
#: How redis-py reports, as a bare ``RedisClusterException``, a cluster whose slot map it
#: cannot load: no node reachable, slots not all covered, or nodes disagreeing (a failover
#: under way). Any other ``RedisClusterException`` is a misuse of the client ("all keys
#: must map to the same key slot", "Missing key", ...), which no retry mends.
_CLUSTER_UNREACHABLE = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
)
#: Everything the driver raises.
DRIVER_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def is_unavailable(error: BaseException) -> bool:
    """True when the server or cluster cannot take a call now (it is retried), false for an
    error that would recur on a retry."""
    if isinstance(error, UNAVAILABLE):
        return True
    return isinstance(error, redis.exceptions.RedisClusterException) and str(error).startswith(
        _CLUSTER_UNREACHABLE
    )


def tls_refusal(error: BaseException) -> str | None:
    """The reason, when a connection failed because a certificate did not verify."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the server's certificate does not verify ({cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return None


def node_error(error: BaseException) -> str:
    """The error's class and text (which names the node, ``host:port``), never a password."""
    text = _URL_PASSWORD.sub(r"\1***@", str(error))[:300].rstrip(". ")
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


@dataclass
class RedisTarget:
    """Where the adapter's Redis is and how to talk to it, checked.

    See :class:`state_tasks.adapters.redis.RedisAdapter` for the options.
    """

    redis_url: str = DEFAULT_REDIS_URL
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = DEFAULT_SSL_CERT_REQS
    master_name: str | None = None
    sentinel_password: str | None = None
    cluster: bool = False
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    #: The URL with its password shown as ``***`` (and the Sentinel master's name).
    safe_url: str = field(init=False)
    cluster_target: ClusterTarget | None = field(init=False, default=None)
    sentinel_target: SentinelTarget | None = field(init=False, default=None)
    tls_options: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        url = self.redis_url
        if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")) and not (
            is_cluster_url(url)
        ):
            raise ConfigError(
                f"redis_url {redact_url(url)!r} must start with redis://, rediss://, "
                "unix://, sentinel://, redis+cluster:// or rediss+cluster://"
            )
        if is_cluster_url(url) or self.cluster:
            if not url.startswith(("redis://", "rediss://")) and not is_cluster_url(url):
                raise ConfigError(
                    f"cluster: true needs a redis:// or rediss:// seed node (or a "
                    f"redis+cluster:// URL), got {redact_url(url)!r}"
                )
            self.cluster_target = parse_cluster_url(url)
        if is_sentinel_url(url):
            if not self.master_name:
                raise ConfigError(
                    f"redis_url {redact_url(url)!r} names sentinels: set master_name "
                    "(the name they watch the master under, e.g. mymaster)"
                )
            self.sentinel_target = parse_sentinel_url(url)
        elif self.master_name:
            raise ConfigError(
                f"master_name {self.master_name!r} needs a sentinel:// redis_url (Sentinel "
                "and Cluster do not mix: a cluster fails over by itself) "
                f"(got {redact_url(url)!r})"
            )
        if self.ssl_cert_reqs not in ("required", "optional", "none"):
            raise ConfigError(
                f"ssl_cert_reqs {self.ssl_cert_reqs!r} must be 'required', 'optional' or 'none'"
            )
        tls_files = {
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        # TLS options on a plain URL would be silently ignored: a deployment that believes
        # it is encrypted must not run in clear text.
        tls = url.startswith(("rediss://", "rediss+cluster://"))
        if not tls and any(tls_files.values()):
            raise ConfigError(
                f"redis_url {redact_url(url)!r}: ssl_* options need a rediss:// "
                "(or rediss+cluster://) URL"
            )
        if tls:
            self.tls_options = {
                **{name: path for name, path in tls_files.items() if path},
                "ssl_cert_reqs": self.ssl_cert_reqs,
                "ssl_check_hostname": self.ssl_cert_reqs == "required",
            }
        self.safe_url = redact_url(url)
        if self.master_name:
            self.safe_url += f" (master {self.master_name!r})"

    def connect(self) -> Any:
        """A new client and its connection pool: ``redis.Redis`` (one server, or the master
        the sentinels name), or ``redis.cluster.RedisCluster``."""
        bound_tls_handshakes()
        timeouts = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_timeout_s,
        }
        if self.cluster_target is not None:
            return self._connect_cluster(self.cluster_target, timeouts)
        if self.sentinel_target is None:
            return redis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                health_check_interval=30,
                **timeouts,
                **self.tls_options,
            )
        # The sentinels name the master on every new connection; a connection to a master
        # that became a replica fails as a connection error (redis-py's
        # SentinelManagedConnection), which the state tasks retry: the retry finds the new one.
        sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            self.sentinel_target.sentinels,
            sentinel_kwargs={**timeouts, "password": self.sentinel_password},
            **timeouts,
        )
        return sentinels.master_for(  # type: ignore[no-untyped-call]
            self.master_name,
            decode_responses=True,
            health_check_interval=30,
            db=self.sentinel_target.db,
            username=self.sentinel_target.username,
            password=self.sentinel_target.password,
        )

    def _connect_cluster(
        self, target: ClusterTarget, timeouts: dict[str, Any]
    ) -> redis.cluster.RedisCluster:
        """A cluster client: it asks a seed for the slot map, sends each command to the
        master of its key's slot, follows MOVED/ASK, and after a connection error,
        CLUSTERDOWN or TRYAGAIN asks for the map anew and retries (CLUSTER_RETRIES)."""
        tls: dict[str, Any] = {}
        if target.tls:
            tls = {"ssl": True, **self.tls_options}
        try:
            return redis.cluster.RedisCluster(
                startup_nodes=[
                    redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                    for host, port in target.nodes
                ],
                username=target.username,
                password=target.password,
                decode_responses=True,
                health_check_interval=30,
                retry=Retry(
                    ExponentialWithJitterBackoff(
                        base=CLUSTER_BACKOFF_BASE_S, cap=CLUSTER_BACKOFF_CAP_S
                    ),
                    CLUSTER_RETRIES,
                ),
                **timeouts,
                **tls,
            )
        except DRIVER_ERRORS as e:
            refused = tls_refusal(e)
            if refused is not None:  # a certificate that does not verify: no retry
                raise AdapterError(
                    f"connecting: TLS with Redis at {self.safe_url} failed: {refused}. "
                    "Check ssl_ca_certs (the CA that signed the server's certificate) and "
                    "that the certificate names the host in redis_url."
                ) from e
            if not is_unavailable(e):
                raise AdapterError(
                    f"Redis Cluster at {self.safe_url} refused the client: {node_error(e)}"
                ) from e
            raise AdapterUnavailable(
                f"cannot reach Redis Cluster at {self.safe_url}: no seed node answered "
                f"({node_error(e)}). Check that the nodes run and the URL is right; calls "
                "succeed again once they are back."
            ) from e
