"""Adapter settings: one pydantic model per adapter, used by ``state.yaml`` and by the
adapter's constructor alike, so each option is declared, defaulted and checked once.

Each model names its adapter (:attr:`AdapterSettings.kind`), says whether the adapter
keeps its data in the process that opens it (:attr:`AdapterSettings.process_local`), and
builds it (:meth:`AdapterSettings.build`). :mod:`state_tasks.adapters.registry` finds a
model by the adapter's name in ``state.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from state_tasks.adapters.base import DEFAULT_MAX_VALUE_BYTES, StateAdapter
from state_tasks.adapters.records import default_op_window_s
from state_tasks.core.errors import ConfigError


class AdapterSettings(BaseModel):
    """What every built-in adapter takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The adapter's name, as errors and the worker's banner say it.
    kind: ClassVar[str] = "adapter"
    #: True when the data (or the triggers) live in the one process that opens the adapter.
    process_local: ClassVar[bool] = True
    #: ``module:Class`` of the adapter these settings build (its constructor takes
    #: ``settings=``), imported on first use; a model that builds otherwise overrides
    #: :meth:`build`.
    adapter: ClassVar[str] = ""

    #: The largest JSON text of one value, in bytes of UTF-8.
    max_value_bytes: int = Field(DEFAULT_MAX_VALUE_BYTES, gt=0)
    #: How long an applied operation id is remembered (default: the broker's redelivery
    #: window, :func:`state_tasks.adapters.records.default_op_window_s`).
    op_window_s: float = Field(default_factory=default_op_window_s, gt=0)

    @pydantic.field_validator("op_window_s", mode="before")
    @classmethod
    def _default_window(cls, value: Any) -> Any:
        return default_op_window_s() if value is None else value  # None: the default

    @classmethod
    def given(cls, settings: Self | None, options: Mapping[str, Any]) -> Self:
        """What an adapter's constructor was given: ``settings`` already checked, or its
        keyword ``options`` checked now (not both)."""
        if settings is None:
            return cls.validated(options)
        if options:
            raise ConfigError(
                f"{cls.kind}: give settings or options, not both (got {sorted(options)})"
            )
        return settings

    @classmethod
    def validated(cls, options: Mapping[str, Any], where: str | None = None) -> Self:
        """The settings of ``options``; :class:`ConfigError` naming the first field that is
        wrong, after ``where`` (default: the adapter's name)."""
        try:
            return cls.model_validate(dict(options))
        except pydantic.ValidationError as e:
            raise ConfigError(
                describe(cls, e, f"{cls.kind}: " if where is None else where)
            ) from None

    def build(self) -> StateAdapter:
        """The adapter these settings describe (not yet opened)."""
        module, _, name = self.adapter.partition(":")
        adapter: StateAdapter = getattr(importlib.import_module(module), name)(settings=self)
        return adapter


def describe(model: type[BaseModel], error: pydantic.ValidationError, where: str) -> str:
    """A pydantic error as one sentence naming the field: ``<where><field>: <what>``."""
    err = error.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in err["loc"])
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        name = getattr(model, "kind", model.__name__)
        message = f"unknown field for {name} (allowed: {allowed})"
    elif err["type"] == "value_error":
        message = str(err["ctx"]["error"])
    elif "input" in err and err["type"] != "missing":
        message = f"{message} (got {err['input']!r})"
    return f"{where}{loc}: {message}" if loc else f"{where.rstrip(': .')}: {message}"
