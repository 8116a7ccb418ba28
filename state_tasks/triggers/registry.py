"""Persisted trigger registrations and the index that matches changes to them.

No Celery here. Triggers are stored in the adapter's reserved trigger space,
so they persist where the adapter persists and every process sharing the
adapter sees them. Each process keeps a :class:`MatchIndex` and rebuilds it
when the adapter's trigger version moves.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from state_tasks.adapters.base import StateAdapter
from state_tasks.core.filters import Predicate, compile_filter
from state_tasks.core.models import TriggerSpec, parse


@dataclass(frozen=True)
class Trigger:
    """One ``state`` trigger. ``None`` filters match everything; ``when`` is a declarative
    filter (:mod:`state_tasks.core.filters`) as JSON, checked when it was registered."""

    id: str
    function_id: str
    scope: str | None = None
    key: str | None = None
    condition_function_id: str | None = None
    when: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The trigger in the registration shape, plus its id."""
        return {"id": self.id, **self.registration()}

    def registration(self) -> dict[str, Any]:
        """The trigger as ``register_trigger`` takes it (no id: the id is derived)."""
        config = {
            name: value
            for name, value in (
                ("scope", self.scope),
                ("key", self.key),
                ("condition_function_id", self.condition_function_id),
                ("when", self.when),
            )
            if value is not None
        }
        return {"type": "state", "function_id": self.function_id, "config": config}

    @functools.cached_property
    def _passes(self) -> Predicate | None:
        return None if self.when is None else compile_filter(self.when)

    def passes(self, event: Mapping[str, Any]) -> bool:
        """Whether the change passes the trigger's ``when`` (no filter: always)."""
        check = self._passes
        return check is None or check(event)


def trigger_from_spec(spec: Mapping[str, Any] | TriggerSpec) -> Trigger:
    """Validate a registration and give it its id.

    The id is derived from the function and the config, so registering the same
    trigger again (from any process) names the same trigger and keeps one.
    """
    if not isinstance(spec, TriggerSpec):
        spec = parse(TriggerSpec, spec, "register_trigger")
    when = None if spec.config.when is None else spec.config.when.to_json()
    parts: list[Any] = [
        spec.function_id,
        spec.config.scope,
        spec.config.key,
        spec.config.condition_function_id,
    ]
    if when is not None:  # (the ids of triggers without one stay what they were)
        parts.append(when)
    identity = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return Trigger(
        id=f"trg_{digest}",
        function_id=spec.function_id,
        scope=spec.config.scope,
        key=spec.config.key,
        condition_function_id=spec.config.condition_function_id,
        when=when,
    )


class MatchIndex:
    """Triggers bucketed by ``(scope, key)`` with ``None`` as the wildcard.

    A change is matched with four dictionary look-ups, whatever the number of
    triggers that cannot match it.
    """

    def __init__(self, triggers: Iterable[Trigger] = ()) -> None:
        buckets: dict[tuple[str | None, str | None], list[Trigger]] = defaultdict(list)
        for trigger in sorted(triggers, key=lambda t: t.id):
            buckets[(trigger.scope, trigger.key)].append(trigger)
        self._buckets = dict(buckets)

    def match(self, scope: str, key: str) -> builtins.list[Trigger]:
        """Every trigger whose filters accept a change of ``(scope, key)``."""
        found: list[Trigger] = []
        for bucket in ((scope, key), (scope, None), (None, key), (None, None)):
            found.extend(self._buckets.get(bucket, ()))
        return found


class TriggerRegistry:
    """Register, list, unregister and match triggers stored in ``adapter``."""

    def __init__(self, adapter: StateAdapter) -> None:
        self.adapter = adapter
        self._index = MatchIndex()
        self._version: int | None = None
        self._reload_lock = threading.Lock()

    def register(self, spec: Mapping[str, Any] | TriggerSpec | Trigger) -> Trigger:
        """Store a trigger (idempotent) and return it with its id."""
        trigger = spec if isinstance(spec, Trigger) else trigger_from_spec(spec)
        record = {k: v for k, v in asdict(trigger).items() if v is not None}
        self.adapter.triggers_put(trigger.id, json.dumps(record, ensure_ascii=False))
        return trigger

    def unregister(self, trigger_id: str) -> bool:
        """Remove a trigger; ``False`` if there was none with that id."""
        return self.adapter.triggers_delete(trigger_id)

    def list(self) -> builtins.list[Trigger]:
        """Every stored trigger, ordered by id."""
        return sorted(self._load(), key=lambda t: t.id)

    def match(self, scope: str, key: str) -> builtins.list[Trigger]:
        """Triggers for a change of ``(scope, key)``, from an index that follows the store."""
        return self.match_index().match(scope, key)

    def match_index(self, version: int | None = None) -> MatchIndex:
        """The index of the stored triggers as they are now: at ``version`` when the caller
        has it (an adapter may read it with the change), else after one read of it (a
        caller matching many changes at once reads it once for all of them)."""
        if version is None:
            version = self.adapter.triggers_version()
        if version != self._version:
            with self._reload_lock:
                if version != self._version:
                    self._index = MatchIndex(self._load())
                    self._version = version
        return self._index

    def _load(self) -> builtins.list[Trigger]:
        return [Trigger(**json.loads(text)) for text in self.adapter.triggers_load().values()]
