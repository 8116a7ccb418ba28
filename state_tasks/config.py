"""Loading the module config (``state.yaml``) in the original engine's format.

::

    modules:
      - class: modules::state::StateModule
        config:
          adapter:
            class: modules::state::adapters::KvStore
            config: {store_method: in_memory}
          change_log: {max_entries: 100000, max_age_s: 86400}   # optional; false: off

A bare top-level list of modules is accepted too, ``${NAME}`` and
``${NAME:default}`` are expanded from the environment in every string, and
every mistake is reported once, at start-up, naming the file and the field.
"""

from __future__ import annotations

import dataclasses
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
)

import pydantic
import yaml

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.registry import ADAPTER_ALIASES, DEFAULT_ADAPTER, settings_class
from state_tasks.adapters.settings import AdapterSettings
from state_tasks.core.changes import ChangeLogSettings
from state_tasks.core.errors import ConfigError

STATE_MODULE_CLASS = "modules::state::StateModule"
DEFAULT_CONFIG_FILE = "state.yaml"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


@dataclass(frozen=True)
class StateConfig:
    """The resolved state module config: which adapter, with which settings."""

    adapter_name: str
    adapter_settings: Mapping[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"
    #: True when the data lives inside the one process that opens the adapter (KvStore).
    process_local: bool = True
    _factory: Callable[[], StateAdapter] | None = None
    #: What the change log keeps (``None``: ``change_log: false``, no log).
    change_log: ChangeLogSettings | None = field(default_factory=ChangeLogSettings)

    def build_adapter(self) -> StateAdapter:
        """Create the configured adapter (not yet opened), with its change log."""
        adapter = self._factory() if self._factory is not None else _default_settings().build()
        adapter.use_change_log(self.change_log)
        return adapter


def _default_settings() -> AdapterSettings:
    """The settings of the adapter of a deployment without ``state.yaml``."""
    model = settings_class(DEFAULT_ADAPTER)
    assert model is not None
    return model.validated({})


def _default_config(source: str = "built-in defaults") -> StateConfig:
    settings = _default_settings()
    return StateConfig(settings.kind, settings.model_dump(), source, settings.process_local)


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
            f"{' | '.join(ADAPTER_ALIASES)}, "
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
    model = settings_class(name)
    if model is None:
        cls = _resolve_custom(name, f"{where}.class", source)
        return StateConfig(
            cls.__name__,
            settings,
            source,
            cls.process_local,
            lambda: _build_custom(cls, settings, where, source),
        )
    checked = model.validated(settings, f"{source}: {where}.config.")
    return StateConfig(model.kind, checked.model_dump(), source, model.process_local, checked.build)


def _build_custom(
    cls: type[StateAdapter], settings: dict[str, Any], where: str, source: str
) -> StateAdapter:
    try:
        return cls(**settings)
    except TypeError as e:
        raise ConfigError(
            f"{source}: {where}.config: {cls.__name__} rejected its config: {e}"
        ) from e


def _change_log(node: Any, where: str, source: str) -> ChangeLogSettings | None:
    """``change_log``: omitted or ``true`` for the defaults, ``false`` for none, or a
    mapping of :class:`~state_tasks.core.changes.ChangeLogSettings`."""
    if isinstance(node, str) and node.strip().lower() in ("true", "false"):
        node = node.strip().lower() == "true"  # from ${VARIABLE:...}: every string expands
    if node is True or node is None:
        return ChangeLogSettings()
    if node is False:
        return None
    if not isinstance(node, dict):
        raise ConfigError(
            f"{source}: {where}.change_log: expected false, true or a mapping such as "
            f"{{max_entries: 100000, max_age_s: 86400}}, got {node!r}"
        )
    try:
        return ChangeLogSettings.model_validate(node)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}" for error in e.errors()
        )
        raise ConfigError(f"{source}: {where}.change_log: {problems}") from None


def parse_config(document: Any, source: str) -> StateConfig:
    """Resolve a parsed ``state.yaml`` document (already a Python object)."""
    document = _expand_env(document, "", source)
    if document is None:
        return _default_config(source)
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
        unknown = set(config) - {"adapter", "change_log"}
        if unknown:
            raise ConfigError(
                f"{source}: {where}.config: unknown keys {sorted(unknown)} "
                "(allowed: adapter, change_log)"
            )
        adapter = _mapping(config.get("adapter"), f"{where}.config.adapter", source)
        spec = _build_spec(adapter, f"{where}.config.adapter", source)
        change_log = _change_log(config.get("change_log", True), f"{where}.config", source)
        return dataclasses.replace(spec, change_log=change_log)
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
                return _default_config()
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
