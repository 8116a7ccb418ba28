"""The RedisAdapter's settings: every option once, with its default and its checks, for
``state.yaml`` and for ``RedisAdapter(...)`` alike."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import pydantic
from pydantic import Field

from state_tasks.adapters.redis.connection import (
    DEFAULT_REDIS_URL,
    DEFAULT_SOCKET_TIMEOUT_S,
    DEFAULT_SSL_CERT_REQS,
    RedisTarget,
)
from state_tasks.adapters.settings import AdapterSettings
from state_tasks.core.sentinel import (
    SENTINEL_MASTER_VARIABLE,
    SENTINEL_PASSWORD_VARIABLE,
    is_sentinel_url,
)

DEFAULT_KEY_PREFIX = "state"
#: How long a write waits for its ``wait_replicas`` replicas before it fails (and is retried).
DEFAULT_WAIT_TIMEOUT_MS = 1000


class RedisSettings(AdapterSettings):
    """``modules::state::adapters::RedisAdapter``; the options are those of
    :class:`state_tasks.adapters.redis.RedisAdapter`."""

    kind: ClassVar[str] = "RedisAdapter"
    process_local: ClassVar[bool] = False
    adapter: ClassVar[str] = "state_tasks.adapters.redis.adapter:RedisAdapter"

    #: ``redis://``, ``rediss://``, ``unix://``, ``sentinel://``, ``redis+cluster://`` or
    #: ``rediss+cluster://`` (default: ``$REDIS_URL``, else localhost).
    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    key_prefix: str = DEFAULT_KEY_PREFIX
    socket_timeout_s: float = Field(DEFAULT_SOCKET_TIMEOUT_S, gt=0)
    # TLS, for a rediss:// URL (redis-py's names).
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = DEFAULT_SSL_CERT_REQS  # type: ignore[assignment]
    # Sentinel, for a sentinel:// URL (state_tasks.core.sentinel); unset: the environment's
    # STATE_TASKS_SENTINEL_MASTER / STATE_TASKS_SENTINEL_PASSWORD, as the broker uses.
    master_name: str | None = None
    sentinel_password: str | None = None
    # Synchronous replication: WAIT for this many replicas after each write (0: off).
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(DEFAULT_WAIT_TIMEOUT_MS, gt=0)
    # Least privilege: run the scripts as the Redis functions an administrator loaded
    # (`state-tasks redis install-functions`): FCALL, no EVAL/EVALSHA/SCRIPT for the user.
    use_functions: bool = False
    # Redis Cluster: true makes a redis:// / rediss:// URL one seed node of a cluster (a
    # redis+cluster:// URL needs nothing more; state_tasks.core.cluster).
    cluster: bool = False

    @pydantic.field_validator("key_prefix")
    @classmethod
    def _no_braces(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError(f"key_prefix {value!r} may not contain braces")
        return value

    @pydantic.model_validator(mode="before")
    @classmethod
    def _sentinel_from_environment(cls, options: Any) -> Any:
        if isinstance(options, dict) and is_sentinel_url(str(options.get("redis_url", ""))):
            for name, variable in (
                ("master_name", SENTINEL_MASTER_VARIABLE),
                ("sentinel_password", SENTINEL_PASSWORD_VARIABLE),
            ):
                if options.get(name) is None and os.environ.get(variable):
                    options = {**options, name: os.environ[variable]}
        return options

    def target(self) -> RedisTarget:
        """Where these settings connect: the URL, TLS, Sentinel and cluster options, checked."""
        return RedisTarget(
            redis_url=self.redis_url,
            ssl_ca_certs=self.ssl_ca_certs,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            ssl_cert_reqs=self.ssl_cert_reqs,
            master_name=self.master_name,
            sentinel_password=self.sentinel_password,
            cluster=self.cluster,
            socket_timeout_s=self.socket_timeout_s,
        )
