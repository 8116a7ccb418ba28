"""The adapter contract every storage backend implements.

Values cross this boundary as JSON text (``str``), already validated and
size-checked by the core; ``None`` means "no such key" (the JSON value null is
the text ``"null"``). Every method may raise
:class:`~state_tasks.core.errors.AdapterError` when the storage fails; no other
exception may escape an adapter.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state_tasks.core.ops import Op

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
#: How long an applied operation id is remembered: longer than a broker takes to redeliver
#: the task of a lost worker (Celery's Redis visibility timeout defaults to one hour).
DEFAULT_OP_TTL_S = 2 * 3600


class StateAdapter(ABC):
    """Scoped key-value storage plus a reserved space for trigger registrations.

    Implementations must make each method atomic on its own: a concurrent
    ``set`` never loses an ``update`` and ``set`` returns exactly the value it
    replaced. Triggers live in a space of their own that ``list_groups`` never
    shows and that no scope name can reach.
    """

    #: Largest JSON text of one value, in bytes of UTF-8.
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    #: True when ``list`` returns values in the order their keys were first set.
    ordered_list: bool = False

    #: False when ``set``/``update`` cannot tell a key holding JSON null from a missing key
    #: (the Bridge: the remote answers ``old_value: null`` for both).
    knows_null_from_missing: bool = True

    #: True when the data lives inside this process only (one process may own it).
    process_local: bool = False

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (locks, background savers). Called once before first use."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release everything; the adapter is not used afterwards."""

    @abstractmethod
    def get(self, scope: str, key: str) -> str | None:
        """Return the JSON text stored under ``(scope, key)``, or ``None`` if absent."""

    @abstractmethod
    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        """Store ``value_json``; return the JSON text it replaced, or ``None`` if new.

        ``op_id`` (here and in ``delete`` and ``update``) names the operation: Celery's task
        id, which a redelivered task keeps. An adapter records it atomically with the change
        for :data:`DEFAULT_OP_TTL_S` at least, and a second call with the same id changes
        nothing and returns what the first returned. ``None``: no record, no deduplication.
        """

    @abstractmethod
    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        """Remove the key; return the JSON text it held, or ``None`` if it was absent."""

    @abstractmethod
    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        """Apply parsed update ops atomically; return ``(old_json or None, new_json)``.

        Implementations compute the new value with
        :func:`state_tasks.core.codec.apply_ops_json` so every adapter shares one
        definition of the ops. It raises
        :class:`~state_tasks.core.errors.UpdateOpError` or
        :class:`~state_tasks.core.errors.ValueTooLarge`; then nothing is written.
        """

    @abstractmethod
    def list(self, scope: str) -> builtins.list[str]:
        """Return the JSON texts of every value in ``scope`` (empty scope: ``[]``)."""

    @abstractmethod
    def list_groups(self) -> builtins.list[str]:
        """Return the scopes holding at least one key, sorted and unique."""

    # -- the reserved trigger space -------------------------------------------------

    @abstractmethod
    def triggers_load(self) -> dict[str, str]:
        """Return every stored trigger as ``{trigger_id: json_text}``."""

    @abstractmethod
    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        """Store a trigger; return ``True`` if it was new. Bumps the version."""

    @abstractmethod
    def triggers_delete(self, trigger_id: str) -> bool:
        """Remove a trigger; return ``True`` if it existed. Bumps the version."""

    @abstractmethod
    def triggers_version(self) -> int:
        """A number that changes whenever the stored triggers change (cheap to read)."""
