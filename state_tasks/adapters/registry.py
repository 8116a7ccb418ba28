"""The built-in adapters by the names ``state.yaml`` gives them, as Celery's
``BACKEND_ALIASES`` map names to classes: each name is a dotted path to the adapter's
settings model (:class:`state_tasks.adapters.settings.AdapterSettings`), imported only when
that adapter is configured, so a deployment on the KvStore never imports redis-py."""

from __future__ import annotations

import importlib

from state_tasks.adapters.settings import AdapterSettings

_KV = "state_tasks.adapters.kv_store:KvStoreSettings"
_REDIS = "state_tasks.adapters.redis.settings:RedisSettings"
# The Bridge's settings build its Celery client: they live in the Celery layer.
_BRIDGE = "state_tasks.remote:BridgeSettings"

#: Adapter name in ``state.yaml`` -> ``module:SettingsClass``.
ADAPTER_ALIASES: dict[str, str] = {
    "modules::state::adapters::KvStore": _KV,
    "kv": _KV,
    "modules::state::adapters::RedisAdapter": _REDIS,
    "redis": _REDIS,
    "modules::state::adapters::Bridge": _BRIDGE,
    "bridge": _BRIDGE,
}
#: The adapter a deployment without ``state.yaml`` uses.
DEFAULT_ADAPTER = "modules::state::adapters::KvStore"


def settings_class(name: str) -> type[AdapterSettings] | None:
    """The settings model of the built-in adapter called ``name``; ``None`` for another."""
    path = ADAPTER_ALIASES.get(name)
    if path is None:
        return None
    module, _, attr = path.partition(":")
    model: type[AdapterSettings] = getattr(importlib.import_module(module), attr)
    return model
