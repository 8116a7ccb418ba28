"""KvStore: the embedded store, held in the memory of the one process that owns it."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence

from adapters.base import DEFAULT_MAX_VALUE_BYTES, StateAdapter
from state_tasks.codec import apply_ops_json
from state_tasks.ops import Op


class KvStore(StateAdapter):
    """Scopes as dicts of JSON text, guarded by one lock.

    Lives in one process: a worker using it must run a threads or solo pool
    (the default configuration does), never several prefork children, each of
    which would otherwise hold a separate store.
    """

    ordered_list = True
    process_local = True

    def __init__(self, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self.max_value_bytes = max_value_bytes
        self._scopes: dict[str, dict[str, str]] = {}
        self._triggers: dict[str, str] = {}
        self._triggers_version = 0
        # Re-entrant so that subclasses may call back into these methods under it.
        self._lock = threading.RLock()

    def get(self, scope: str, key: str) -> str | None:
        entries = self._scopes.get(scope)
        return None if entries is None else entries.get(key)

    def set(self, scope: str, key: str, value_json: str) -> str | None:
        with self._lock:
            old = self.get(scope, key)
            self._changed(scope, key, value_json)
            self._scopes.setdefault(scope, {})[key] = value_json
            return old

    def delete(self, scope: str, key: str) -> str | None:
        with self._lock:
            entries = self._scopes.get(scope)
            if entries is None or key not in entries:
                return None
            self._changed(scope, key, None)
            old = entries.pop(key)
            if not entries:
                del self._scopes[scope]
            return old

    def update(self, scope: str, key: str, ops: Sequence[Op]) -> tuple[str | None, str]:
        with self._lock:
            old = self.get(scope, key)
            new = apply_ops_json(old, ops, self.max_value_bytes)
            self._changed(scope, key, new)
            self._scopes.setdefault(scope, {})[key] = new
            return old, new

    def list(self, scope: str) -> builtins.list[str]:
        with self._lock:
            return list(self._scopes.get(scope, {}).values())

    def list_groups(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self._scopes)

    def triggers_load(self) -> dict[str, str]:
        with self._lock:
            return dict(self._triggers)

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        with self._lock:
            is_new = trigger_id not in self._triggers
            self._triggers_changed(trigger_id, trigger_json)
            self._triggers[trigger_id] = trigger_json
            self._triggers_version += 1
            return is_new

    def triggers_delete(self, trigger_id: str) -> bool:
        with self._lock:
            existed = trigger_id in self._triggers
            if existed:
                self._triggers_changed(trigger_id, None)
                del self._triggers[trigger_id]
            self._triggers_version += 1
            return existed

    def triggers_version(self) -> int:
        return self._triggers_version

    # -- hooks for a persistent store: called under the lock before each change -------
    # If a hook raises, the change is not made.

    def _changed(self, scope: str, key: str, value_json: str | None) -> None:
        """A key is about to be set (``value_json``) or deleted (``None``)."""

    def _triggers_changed(self, trigger_id: str, trigger_json: str | None) -> None:
        """A trigger is about to be stored (``trigger_json``) or removed (``None``)."""
