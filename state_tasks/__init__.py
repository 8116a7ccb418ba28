"""state_tasks: scoped key-value state with reactive triggers, built on Celery.

``celery -A state_tasks worker`` finds :data:`app` here; services use the six
``state::*`` tasks by name (``app.send_task("state::get", kwargs=...)``), the
task objects in :mod:`state_tasks.tasks`, or the iii-style facade :data:`iii`.
"""

from state_tasks.celery_app import app, create_app
from state_tasks.errors import (
    AdapterError,
    AdapterUnavailable,
    CallTimeout,
    ConfigError,
    StateError,
    UpdateOpError,
    ValidationError,
    ValueTooLarge,
)
from state_tasks.facade import III, state_trigger
from state_tasks.models import (
    DecrementOp,
    IncrementOp,
    MergeOp,
    RemoveOp,
    SetOp,
    StateEvent,
    UpdateOp,
    ops_json,
)

iii = III(app)

__all__ = [
    "III",
    "AdapterError",
    "AdapterUnavailable",
    "CallTimeout",
    "ConfigError",
    "DecrementOp",
    "IncrementOp",
    "MergeOp",
    "RemoveOp",
    "SetOp",
    "StateError",
    "StateEvent",
    "UpdateOp",
    "UpdateOpError",
    "ValidationError",
    "ValueTooLarge",
    "app",
    "create_app",
    "iii",
    "ops_json",
    "state_trigger",
]
