"""state_tasks: scoped key-value state with reactive triggers, built on Celery.

``celery -A state_tasks worker`` finds :data:`app` here; services use the
``state::*`` tasks by name (``app.send_task("state::get", kwargs=...)``), the
task objects in :mod:`state_tasks.tasks`, or the iii-style facade :data:`iii`.

The flow, one folder each::

    state_tasks/core/       the contract: errors, ops, codec, models, config, service (no Celery)
    state_tasks/adapters/   where state is kept (imports only state_tasks.core)
    state_tasks/triggers/   what reacts: registry (no Celery), dispatch, gate, decorator
    state_tasks/            the Celery transport: app, tasks, worker, facade, cli, remote

Everything is one package: nothing is installed under a generic top-level name that a
project's own ``triggers.py`` or ``adapters/`` would shadow.

Importing this package, or anything under :mod:`state_tasks.core`, loads no Celery:
the Celery-bound names (``app``, ``iii``, ...) are imported on first use
(PEP 562), so a pure function such as :func:`state_tasks.core.ops.apply_ops` costs
no app and no broker configuration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from state_tasks.core.changes import ChangeLogSettings, Compacted
from state_tasks.core.coordination import ArriveAnswer, LockAnswer, ThenSpec
from state_tasks.core.errors import (
    AdapterError,
    AdapterUnavailable,
    CallTimeout,
    ConfigError,
    StateError,
    UpdateOpError,
    ValidationError,
    ValueTooLarge,
    VersionConflict,
)
from state_tasks.core.filters import All, AnyOf, Changed, Compare, EventTypes, Not, TriggerFilter
from state_tasks.core.models import (
    AppendOp,
    BatchDeleteOperation,
    BatchSetOperation,
    BatchUpdateOperation,
    ChangeEntry,
    ChangesAnswer,
    DecrementOp,
    IncrementOp,
    ListPage,
    MergeOp,
    RemoveOp,
    SetOp,
    StateEvent,
    UpdateOp,
    VersionedValue,
    batch_json,
    ops_json,
)

if TYPE_CHECKING:
    from celery import Celery

    from state_tasks.celery_app import create_app
    from state_tasks.coordination import FanIn, Lock, NotAcquired, fan_in, lock, once
    from state_tasks.facade import III
    from state_tasks.triggers.declarations import state_trigger
    from state_tasks.watching import Watcher, watch

    app: Celery
    iii: III

#: Names imported on first use, and their modules: the Celery layer, and the trigger
#: decorator (whose package imports this one's core; eager, it would be a cycle).
_LAZY = {
    "app": "state_tasks.celery_app",
    "create_app": "state_tasks.celery_app",
    "FanIn": "state_tasks.coordination",
    "Lock": "state_tasks.coordination",
    "NotAcquired": "state_tasks.coordination",
    "fan_in": "state_tasks.coordination",
    "lock": "state_tasks.coordination",
    "once": "state_tasks.coordination",
    "III": "state_tasks.facade",
    "iii": "state_tasks.facade",
    "state_trigger": "state_tasks.triggers.declarations",
    "watch": "state_tasks.watching",
    "Watcher": "state_tasks.watching",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'state_tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "III",
    "AdapterError",
    "AdapterUnavailable",
    "All",
    "AnyOf",
    "AppendOp",
    "ArriveAnswer",
    "BatchDeleteOperation",
    "BatchSetOperation",
    "BatchUpdateOperation",
    "CallTimeout",
    "ChangeEntry",
    "ChangeLogSettings",
    "Changed",
    "ChangesAnswer",
    "Compacted",
    "Compare",
    "ConfigError",
    "DecrementOp",
    "EventTypes",
    "FanIn",
    "IncrementOp",
    "ListPage",
    "Lock",
    "LockAnswer",
    "MergeOp",
    "Not",
    "NotAcquired",
    "RemoveOp",
    "SetOp",
    "StateError",
    "StateEvent",
    "ThenSpec",
    "TriggerFilter",
    "UpdateOp",
    "UpdateOpError",
    "ValidationError",
    "ValueTooLarge",
    "VersionConflict",
    "VersionedValue",
    "Watcher",
    "app",
    "batch_json",
    "create_app",
    "fan_in",
    "iii",
    "lock",
    "once",
    "ops_json",
    "state_trigger",
    "watch",
]
