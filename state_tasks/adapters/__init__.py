"""Storage adapters for state_tasks: the contract and its implementations.

Adapters never import Celery or a task module; they take plain keyword
arguments and speak JSON text (``str``) so that values are encoded once, by the
core, and stored exactly as encoded.
"""

from state_tasks.adapters.base import DEFAULT_MAX_VALUE_BYTES, StateAdapter

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "StateAdapter"]
