"""Loading the module config (``state.yaml``) in the original engine's format.

::

    modules:
      - class: modules::state::StateModule
        config:
          adapter:
            class: modules::state::adapters::KvStore
            config: {store_method: in_memory}

A bare top-level list of modules is accepted too, ``${NAME}`` and
``${NAME:default}`` are expanded from the environment in every string, and
every mistake is reported once, at start-up, naming the file and the field.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import (
    Callable,
    Mapping,
)
from dataclasses import (
    dataclass,
    field,
)
from pathlib import Path
from typing import (
    Any,
    Literal,
)

import pydantic
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from state_tasks.adapters.base import (
    DEFAULT_MAX_VALUE_BYTES,
    StateAdapter,
)
from state_tasks.adapters.file_store import (
    DEFAULT_FILE_PATH,
    DEFAULT_SAVE_INTERVAL_MS,
)
from state_tasks.adapters.records import (
    DEFAULT_MAX_OPS,
    default_op_window_s,
)
from state_tasks.adapters.redis import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_WAIT_TIMEOUT_MS,
)
from state_tasks.core.errors import ConfigError
from state_tasks.core.sentinel import (
    SENTINEL_MASTER_VARIABLE,
    SENTINEL_PASSWORD_VARIABLE,
    is_sentinel_url,
)
from state_tasks.core.urls import redact_url
from state_tasks.high_availability import is_amqp_url

STATE_MODULE_CLASS = "modules::state::StateModule"
DEFAULT_CONFIG_FILE = "state.yaml"
DEFAULT_BRIDGE_TIMEOUT_MS = 30000
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class _AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_value_bytes: int = Field(DEFAULT_MAX_VALUE_BYTES, gt=0)
    op_window_s: float = Field(default_factory=default_op_window_s, gt=0)


class KvStoreConfig(_AdapterConfig):
    store_method: Literal["in_memory", "file_based"] = "in_memory"
    file_path: str = DEFAULT_FILE_PATH
    save_interval_ms: int = Field(DEFAULT_SAVE_INTERVAL_MS, gt=0)
    fsync: Literal["always", "interval", "never"] = "interval"
    move_corrupt_aside: bool = False
    max_ops: int = Field(DEFAULT_MAX_OPS, gt=0)


class RedisAdapterConfig(_AdapterConfig):
    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    key_prefix: str = DEFAULT_KEY_PREFIX
    # TLS, for a rediss:// URL (redis-py's names); None leaves the adapter's default.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] | None = None
    # Sentinel, for a sentinel:// URL (state_tasks.core.sentinel); unset: the environment's
    # STATE_TASKS_SENTINEL_MASTER / STATE_TASKS_SENTINEL_PASSWORD, as the broker uses.
    master_name: str | None = None
    sentinel_password: str | None = None
    # Synchronous replication: WAIT for this many replicas after each write (0: off).
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(DEFAULT_WAIT_TIMEOUT_MS, gt=0)
    # Redis Cluster: true makes a redis:// / rediss:// URL one seed node of a cluster (a
    # redis+cluster:// URL needs nothing more; state_tasks.core.cluster).
    cluster: bool = False


class BridgeConfig(_AdapterConfig):
    broker_url: str
    result_backend: str
    timeout_ms: int = Field(DEFAULT_BRIDGE_TIMEOUT_MS, gt=0)
    queue: str | None = None
    # The type of the queues the remote deployment declares (its STATE_TASKS_QUEUE_TYPE):
    # RabbitMQ refuses a client that declares the remote's queues with another type.
    queue_type: Literal["classic", "quorum"] = "classic"

    @pydantic.field_validator("queue_type")
    @classmethod
    def _quorum_needs_rabbitmq(cls, value: str, info: pydantic.ValidationInfo) -> str:
        broker_url = info.data.get("broker_url")
        if value == "quorum" and isinstance(broker_url, str) and not is_amqp_url(broker_url):
            raise ValueError(
                "quorum queues need a RabbitMQ broker_url (amqp://...), "
                f"not {redact_url(broker_url)!r}"
            )
        return value


def _kv_store(config: KvStoreConfig) -> StateAdapter:
    if config.store_method == "in_memory":
        from state_tasks.adapters.kv_store import KvStore

        return KvStore(
            max_value_bytes=config.max_value_bytes,
            op_window_s=config.op_window_s,
            max_ops=config.max_ops,
        )
    from state_tasks.adapters.file_store import FileKvStore

    return FileKvStore(
        file_path=config.file_path,
        save_interval_ms=config.save_interval_ms,
        fsync=config.fsync,
        move_corrupt_aside=config.move_corrupt_aside,
        max_value_bytes=config.max_value_bytes,
        op_window_s=config.op_window_s,
        max_ops=config.max_ops,
    )


def _redis(config: RedisAdapterConfig) -> StateAdapter:
    from state_tasks.adapters.redis import RedisAdapter

    tls = {
        name: getattr(config, name)
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
        if getattr(config, name) is not None
    }
    sentinel: dict[str, Any] = {}
    if is_sentinel_url(config.redis_url):
        sentinel = {
            "master_name": config.master_name or os.environ.get(SENTINEL_MASTER_VARIABLE),
            "sentinel_password": config.sentinel_password
            or os.environ.get(SENTINEL_PASSWORD_VARIABLE),
        }
    elif config.master_name:
        sentinel = {"master_name": config.master_name}  # refused by the adapter, by name
    return RedisAdapter(
        redis_url=config.redis_url,
        key_prefix=config.key_prefix,
        max_value_bytes=config.max_value_bytes,
        op_window_s=config.op_window_s,
        wait_replicas=config.wait_replicas,
        wait_timeout_ms=config.wait_timeout_ms,
        cluster=config.cluster,
        **tls,
        **sentinel,
    )


def _bridge(config: BridgeConfig) -> StateAdapter:
    from state_tasks.adapters.bridge import Bridge
    from state_tasks.remote import RemoteDeployment

    remote = RemoteDeployment(
        broker_url=config.broker_url,
        result_backend=config.result_backend,
        timeout_ms=config.timeout_ms,
        queue=config.queue,
        queue_type=config.queue_type,
    )
    return Bridge(
        remote=remote.call,
        remote_name=remote.name,
        max_value_bytes=config.max_value_bytes,
        op_window_s=config.op_window_s,
        on_close=remote.close,
    )


@dataclass(frozen=True)
class _Builtin:
    name: str
    model: type[_AdapterConfig]
    build: Callable[[Any], StateAdapter]
    #: Whether the adapter keeps its data (or its triggers) in the process that opens it.
    process_local: bool


_KV = _Builtin("KvStore", KvStoreConfig, _kv_store, process_local=True)
_REDIS = _Builtin("RedisAdapter", RedisAdapterConfig, _redis, process_local=False)
_BRIDGE = _Builtin("Bridge", BridgeConfig, _bridge, process_local=True)
BUILTIN_ADAPTERS: dict[str, _Builtin] = {
    "modules::state::adapters::KvStore": _KV,
    "kv": _KV,
    "modules::state::adapters::RedisAdapter": _REDIS,
    "redis": _REDIS,
    "modules::state::adapters::Bridge": _BRIDGE,
    "bridge": _BRIDGE,
}


@dataclass(frozen=True)
class StateConfig:
    """The resolved state module config: which adapter, with which settings."""

    adapter_name: str
    adapter_settings: Mapping[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"
    #: True when the data lives inside the one process that opens the adapter (KvStore).
    process_local: bool = True
    _factory: Callable[[], StateAdapter] | None = None

    def build_adapter(self) -> StateAdapter:
        """Create the configured adapter (not yet opened)."""
        if self._factory is not None:
            return self._factory()
        return _KV.build(KvStoreConfig.model_validate({}))


def _expand_env(node: Any, where: str, source: str) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = os.environ.get(name)
            if value is not None:
                return value
            if default is not None:
                return default
            raise ConfigError(
                f"{source}: {where or 'top level'}: environment variable {name} is not set "
                f"and has no default; set it, or write ${{{name}:default}}"
            )

        return _ENV_PATTERN.sub(replace, node)
    if isinstance(node, list):
        return [_expand_env(item, f"{where}[{i}]", source) for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {
            key: _expand_env(value, f"{where}.{key}" if where else str(key), source)
            for key, value in node.items()
        }
    return node


def _mapping(node: Any, where: str, source: str) -> dict[str, Any]:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {node!r}")
    return node


def _resolve_custom(name: str, where: str, source: str) -> type[StateAdapter]:
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"{source}: {where}: unknown adapter class {name!r}; use one of "
            "modules::state::adapters::KvStore | RedisAdapter | Bridge, kv | redis | bridge, "
            "or a dotted path to your own StateAdapter subclass (package.module.Class)"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{source}: {where}: cannot import adapter class {name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, StateAdapter)):
        raise ConfigError(
            f"{source}: {where}: {name!r} is not a subclass of "
            "state_tasks.adapters.base.StateAdapter"
        )
    return cls


def _build_spec(adapter: dict[str, Any], where: str, source: str) -> StateConfig:
    name = adapter.get("class", "modules::state::adapters::KvStore")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: {where}.class: expected a string, got {name!r}")
    unknown = set(adapter) - {"class", "config"}
    if unknown:
        raise ConfigError(
            f"{source}: {where}: unknown keys {sorted(unknown)} (allowed: class, config)"
        )
    settings = _mapping(adapter.get("config"), f"{where}.config", source)
    builtin = BUILTIN_ADAPTERS.get(name)
    if builtin is None:
        cls = _resolve_custom(name, f"{where}.class", source)
        return StateConfig(
            cls.__name__,
            settings,
            source,
            cls.process_local,
            lambda: _build_custom(cls, settings, where, source),
        )
    try:
        model = builtin.model.model_validate(settings)
    except pydantic.ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(builtin.model.model_fields)
            message = f"unknown field for {builtin.name} (allowed: {allowed})"
        elif err["type"] == "value_error":
            message = str(err["ctx"]["error"])
        elif "input" in err and err["type"] != "missing":
            message = f"{message} (got {err['input']!r})"
        raise ConfigError(f"{source}: {where}.config.{loc}: {message}") from None
    return StateConfig(
        builtin.name,
        model.model_dump(),
        source,
        builtin.process_local,
        lambda: builtin.build(model),
    )


def _build_custom(
    cls: type[StateAdapter], settings: dict[str, Any], where: str, source: str
) -> StateAdapter:
    try:
        return cls(**settings)
    except TypeError as e:
        raise ConfigError(
            f"{source}: {where}.config: {cls.__name__} rejected its config: {e}"
        ) from e


def parse_config(document: Any, source: str) -> StateConfig:
    """Resolve a parsed ``state.yaml`` document (already a Python object)."""
    document = _expand_env(document, "", source)
    if document is None:
        return StateConfig("KvStore", KvStoreConfig.model_validate({}).model_dump(), source)
    if isinstance(document, dict):
        unknown = set(document) - {"modules"}
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level keys {sorted(unknown)} (expected 'modules')"
            )
        modules, prefix = document.get("modules"), "modules"
    else:
        modules, prefix = document, ""
    if not isinstance(modules, list):
        raise ConfigError(
            f"{source}: {prefix or 'top level'}: expected a list of modules, got {modules!r}"
        )
    for index, module in enumerate(modules):
        where = f"{prefix}[{index}]"
        module = _mapping(module, where, source)
        if module.get("class") != STATE_MODULE_CLASS:
            continue  # another module of the engine: not ours to judge
        config = _mapping(module.get("config"), f"{where}.config", source)
        unknown = set(config) - {"adapter"}
        if unknown:
            raise ConfigError(
                f"{source}: {where}.config: unknown keys {sorted(unknown)} (allowed: adapter)"
            )
        adapter = _mapping(config.get("adapter"), f"{where}.config.adapter", source)
        return _build_spec(adapter, f"{where}.config.adapter", source)
    raise ConfigError(
        f"{source}: no module with class {STATE_MODULE_CLASS}; add one (see docs/configuration.md)"
    )


def load_config(path: str | os.PathLike[str] | None = None) -> StateConfig:
    """Load the module config.

    ``path`` defaults to ``$STATE_CONFIG``, else ``./state.yaml`` if it exists,
    else the built-in defaults (KvStore, in_memory).
    """
    if path is None:
        path = os.environ.get("STATE_CONFIG") or None
        if path is None:
            if not Path(DEFAULT_CONFIG_FILE).is_file():
                return StateConfig("KvStore", KvStoreConfig.model_validate({}).model_dump())
            path = DEFAULT_CONFIG_FILE
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the state module config: {e.strerror}") from e
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    return parse_config(document, source)
