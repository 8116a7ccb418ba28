"""KvStore: the embedded store, held in the memory of the one process that owns it."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence

from adapters.base import DEFAULT_MAX_VALUE_BYTES, DEFAULT_OP_TTL_S, StateAdapter
from state_tasks.core.codec import apply_ops_json
from state_tasks.core.ops import Op

#: How many applied operation ids a KvStore remembers at most (the oldest go first).
DEFAULT_MAX_OPS = 100_000

#: An applied operation: (old JSON text, new JSON text or None for a delete, expiry).
OpRecord = tuple[str | None, str | None, float]


class KvStore(StateAdapter):
    """Scopes as dicts of JSON text, guarded by one lock.

    Lives in one process: a worker using it must run a threads or solo pool
    (the default configuration does), never several prefork children, each of
    which would otherwise hold a separate store.
    """

    ordered_list = True
    process_local = True

    def __init__(
        self,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        op_ttl_s: float = DEFAULT_OP_TTL_S,
        max_ops: int = DEFAULT_MAX_OPS,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.op_ttl_s = op_ttl_s
        self.max_ops = max_ops
        # op id -> (old text, new text, monotonic expiry), oldest first.
        self._ops: dict[str, OpRecord] = {}
        self._scopes: dict[str, dict[str, str]] = {}
        self._triggers: dict[str, str] = {}
        self._triggers_version = 0
        # Re-entrant so that subclasses may call back into these methods under it.
        self._lock = threading.RLock()

    def get(self, scope: str, key: str) -> str | None:
        entries = self._scopes.get(scope)
        return None if entries is None else entries.get(key)

    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        with self._lock:
            done = self._applied(op_id)
            if done is not None:
                return done[0]
            old = self.get(scope, key)
            record = self._op_record(op_id, old, value_json)
            self._changed(scope, key, value_json, op_id, record)
            self._scopes.setdefault(scope, {})[key] = value_json
            self._remember_op(op_id, record)
            return old

    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        with self._lock:
            done = self._applied(op_id)
            if done is not None:
                return done[0]
            entries = self._scopes.get(scope)
            if entries is None or key not in entries:
                return None
            record = self._op_record(op_id, entries[key], None)
            self._changed(scope, key, None, op_id, record)
            old = entries.pop(key)
            if not entries:
                del self._scopes[scope]
            self._remember_op(op_id, record)
            return old

    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        with self._lock:
            done = self._applied(op_id)
            if done is not None and done[1] is not None:
                return done[0], done[1]
            old = self.get(scope, key)
            new = apply_ops_json(old, ops, self.max_value_bytes)
            record = self._op_record(op_id, old, new)
            self._changed(scope, key, new, op_id, record)
            self._scopes.setdefault(scope, {})[key] = new
            self._remember_op(op_id, record)
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

    # -- applied operation ids ------------------------------------------------------

    def _applied(self, op_id: str | None) -> OpRecord | None:
        """The recorded result of ``op_id`` if it was applied and not yet forgotten."""
        if op_id is None:
            return None
        record = self._ops.get(op_id)
        return record if record is not None and record[2] > time.monotonic() else None

    def _op_record(self, op_id: str | None, old: str | None, new: str | None) -> OpRecord | None:
        return None if op_id is None else (old, new, time.monotonic() + self.op_ttl_s)

    def _remember_op(self, op_id: str | None, record: OpRecord | None) -> None:
        """Remember an applied operation's result (under the lock, once the change is made)."""
        if op_id is None or record is None:
            return
        now = time.monotonic()
        while self._ops:  # forget the expired, and the oldest beyond max_ops
            oldest_id, oldest = next(iter(self._ops.items()))
            if oldest[2] > now and len(self._ops) < self.max_ops:
                break
            del self._ops[oldest_id]
        self._ops[op_id] = record

    # -- hooks for a persistent store: called under the lock before each change -------
    # If a hook raises, the change is not made (the op record is dropped with it).

    def _changed(
        self,
        scope: str,
        key: str,
        value_json: str | None,
        op_id: str | None = None,
        op: OpRecord | None = None,
    ) -> None:
        """A key is about to be set (``value_json``) or deleted (``None``), by ``op_id``."""

    def _triggers_changed(self, trigger_id: str, trigger_json: str | None) -> None:
        """A trigger is about to be stored (``trigger_json``) or removed (``None``)."""
