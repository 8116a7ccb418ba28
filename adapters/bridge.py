"""Bridge: forward every state operation to a remote deployment of state_tasks.

The adapter knows nothing of Celery: it is handed a ``remote`` callable that runs one
remote state function (``remote("state::get", {"scope": ..., "key": ...})``) and returns
its JSON result or raises a :class:`~state_tasks.core.errors.StateError`. The Celery client
behind it lives in :mod:`state_tasks.remote`.

Each operation costs one round trip to the remote. The remote fires its own triggers;
this side fires the local ones from the old and new values the remote returned. Local
triggers are kept in this process (the remote's trigger registry is the remote's), so a
worker using the Bridge registers them at start-up like any KvStore worker.

One limit of forwarding: the remote answers ``old_value: null`` both for a new key and for
a key that held JSON ``null``, so a change of a key that held ``null`` fires
``state:created`` locally.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters.base import DEFAULT_MAX_VALUE_BYTES, StateAdapter
from adapters.kv_store import KvStore
from state_tasks.core.codec import decode, dumps
from state_tasks.core.ops import Op

#: Runs one remote state function: ``(function_id, payload, op_id or None) -> result``.
RemoteCall = Callable[[str, Mapping[str, Any], str | None], Any]


def _text(value: Any) -> str | None:
    return None if value is None else dumps(value)


class Bridge(StateAdapter):
    """State kept by a remote deployment, reached through its broker.

    :param remote: runs one remote state function and returns its result.
    :param remote_name: how errors name the remote (no password).
    """

    process_local = True  # the local trigger space lives in this process
    knows_null_from_missing = False

    def __init__(
        self,
        *,
        remote: RemoteCall,
        remote_name: str = "the remote deployment",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.max_value_bytes = max_value_bytes
        self.remote = remote
        self._on_close = on_close
        self.remote_name = remote_name
        self._local_triggers = KvStore()

    def __repr__(self) -> str:
        return f"Bridge(remote={self.remote_name!r})"

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    # An operation id travels to the remote as the id of the remote task (derived, so that
    # the two deployments' results never share a key): the remote's own record of applied
    # operations then makes a redelivered local task harmless there too.

    def get(self, scope: str, key: str) -> str | None:
        return _text(self.remote("state::get", {"scope": scope, "key": key}, None))

    def set(self, scope: str, key: str, value_json: str, op_id: str | None = None) -> str | None:
        payload = {"scope": scope, "key": key, "value": decode(value_json)}
        return _text(self.remote("state::set", payload, op_id)["old_value"])

    def delete(self, scope: str, key: str, op_id: str | None = None) -> str | None:
        return _text(self.remote("state::delete", {"scope": scope, "key": key}, op_id))

    def update(
        self, scope: str, key: str, ops: Sequence[Op], op_id: str | None = None
    ) -> tuple[str | None, str]:
        payload = {"scope": scope, "key": key, "ops": [op.to_engine_form() for op in ops]}
        result = self.remote("state::update", payload, op_id)
        return _text(result["old_value"]), dumps(result["new_value"])

    def list(self, scope: str) -> builtins.list[str]:
        values = self.remote("state::list", {"scope": scope}, None)
        return [dumps(value) for value in values]

    def list_groups(self) -> builtins.list[str]:
        return builtins.list(self.remote("state::list_groups", {}, None)["groups"])

    def triggers_load(self) -> dict[str, str]:
        return self._local_triggers.triggers_load()

    def triggers_put(self, trigger_id: str, trigger_json: str) -> bool:
        return self._local_triggers.triggers_put(trigger_id, trigger_json)

    def triggers_delete(self, trigger_id: str) -> bool:
        return self._local_triggers.triggers_delete(trigger_id)

    def triggers_version(self) -> int:
        return self._local_triggers.triggers_version()
