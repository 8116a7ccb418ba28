"""What an administrator does for the Redis adapter: load this release's function library.

With ``use_functions: true`` the adapter runs its scripts as Redis functions (``FCALL``),
so its Redis user needs neither ``EVAL``/``EVALSHA`` nor ``SCRIPT``: only the functions an
administrator loaded can run (docs/security.md, least privilege). Each release's scripts
are a library of their own (:func:`state_tasks.adapters.redis.scripts.library_name`), so a
new release is installed beside the old one while old workers still run; remove an old
library with ``FUNCTION DELETE <name>`` once no worker of it is left.
"""

from __future__ import annotations

import os
from typing import Any

import redis.cluster

from state_tasks.adapters.redis import scripts
from state_tasks.adapters.redis.connection import DRIVER_ERRORS, node_error
from state_tasks.adapters.redis.settings import RedisSettings
from state_tasks.core.connect_errors import likely_cause
from state_tasks.core.errors import AdapterError, ConfigError


def _configured_settings(url: str | None) -> RedisSettings:
    """The RedisAdapter settings of ``state.yaml`` (its TLS files, Sentinel, cluster), with
    ``url`` in place of its ``redis_url`` when given."""
    from state_tasks.config import load_config

    config = load_config()
    given = dict(config.adapter_settings) if config.adapter_name == "RedisAdapter" else {}
    if url is not None:
        given["redis_url"] = url
    elif "redis_url" not in given and not os.environ.get("REDIS_URL"):
        raise ConfigError(
            "no Redis to install the functions on: give --url, or a RedisAdapter in "
            "state.yaml, or REDIS_URL"
        )
    return RedisSettings.validated(given)


def install_functions(url: str | None = None) -> dict[str, Any]:
    """Load this release's library on the server (every master of a cluster); return
    ``{"library", "loaded": [node...], "present": [node...]}``.

    :raises ConfigError: no URL to use, or a bad one.
    :raises AdapterError: the server refused (a user without ``FUNCTION LOAD``, say).
    """
    settings = _configured_settings(url)
    target = settings.target()
    done: dict[str, Any] = {"library": scripts.library_name(), "loaded": [], "present": []}
    client = target.connect()
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            primaries = client.get_primaries()  # type: ignore[no-untyped-call]
            nodes = [(n.name, client.get_redis_connection(n)) for n in primaries]
        else:
            nodes = [(target.safe_url, client)]
        for name, node in nodes:
            loaded = scripts.install_functions(node)
            done["loaded" if loaded else "present"].append(name)
    except DRIVER_ERRORS as e:
        hint = likely_cause(e, target.safe_url)
        if isinstance(e, redis.exceptions.NoPermissionError):
            hint = "the user may not FUNCTION LOAD: use an administrator's URL"
        raise AdapterError(
            f"loading the function library on Redis at {target.safe_url}: {node_error(e)}"
            + (f"; {hint}" if hint else "")
        ) from e
    finally:
        client.close()
    return done
