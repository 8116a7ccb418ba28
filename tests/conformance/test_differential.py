"""A differential, stateful fuzzer: one reference model of the contract, every adapter
driven through the same rules and compared with it after each step.

Hypothesis's :class:`RuleBasedStateMachine` draws a sequence of state functions (set,
update in both op spellings, delete, batch, get, get_many, list, pages walked while
writing, list_groups, repeats of an operation id before and after it settles, expiry on a
clock of the test's own, sweeps, and for the file store a save, a close and reopen and a
``kill -9``) and runs each through a :class:`StateService` over one adapter and through
:class:`Model`, a small pure-Python model of the README's contract. After every step the
answers (codes and details included) and the events (type, version, reason, event id)
must agree, and after every step (an invariant) the whole state: every scope's keys and
values and ``list_groups``. A failing example prints the shortest sequence of steps that
reproduces it.

Versions differ between adapters (the KvStore takes them from one counter for the store,
Redis from one per scope), so they are compared through an order-preserving map: each
change's version must be greater than every version the adapter gave in that scope before,
and is mapped to the model's version when the change is made; versions seen later (get
``with_version``, events, ``VERSION_CONFLICT`` details, replayed answers) are translated
through that map. ``if_version`` is drawn symbolically (the key's version, a stale one,
``0``, one never given) and resolved per adapter from its own versions.

Clocks: the KvStores (in memory and file-based) expire on the test's clock, which the
``advance_clock`` rule moves. Redis expires on its server's clock: there every ttl is long
(never reached during an example) except in ``set_then_expire``, which sets a key with a
ttl of 1 ms and sleeps past it, so no step depends on the timing of a real clock.

Bounds: :data:`DEFAULT_EXAMPLES` examples of :data:`DEFAULT_STEPS` steps per adapter, every
adapter (derandomized: CI runs the same examples every time). ``STATE_TASKS_FUZZ_EXAMPLES``
sets the number of examples for every adapter, ``STATE_TASKS_FUZZ_STEPS`` the steps,
``STATE_TASKS_FUZZ_RANDOM=1`` draws new examples on every run, ``STATE_TASKS_FUZZ_ADAPTERS``
runs only the adapters it names (comma-separated).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Recorder, build
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_file_store import crash

from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.changes import ChangeLogSettings, change_event_id
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService, expiry_event_id

#: Examples per adapter, unless the environment asks for more: the adapters that reach a
#: server through replicas or a remote deployment (a WAIT per write, a Celery round trip
#: per call) run fewer. Steps per example.
DEFAULT_EXAMPLES = {
    "kv_memory": 100,
    "kv_file": 100,
    "redis": 100,
    "redis_sentinel": 10,
    "redis_cluster": 10,
    "bridge": 5,
}
DEFAULT_STEPS = 40
STEPS = int(os.environ.get("STATE_TASKS_FUZZ_STEPS", DEFAULT_STEPS))
RANDOM = os.environ.get("STATE_TASKS_FUZZ_RANDOM", "") == "1"
#: ``STATE_TASKS_FUZZ_ADAPTERS``: only these (comma-separated); every adapter by default.
ADAPTERS = [
    name.strip()
    for name in os.environ.get("STATE_TASKS_FUZZ_ADAPTERS", ",".join(DEFAULT_EXAMPLES)).split(",")
    if name.strip() in DEFAULT_EXAMPLES
]


def examples_for(kind: str) -> int:
    """``STATE_TASKS_FUZZ_EXAMPLES`` for every adapter, else the adapter's default."""
    return int(os.environ.get("STATE_TASKS_FUZZ_EXAMPLES", DEFAULT_EXAMPLES[kind]))


#: The test clock's start (wall-clock ms, as the KvStore's clock is).
CLOCK_START_MS = 1_800_000_000_000
#: An ``if_version`` that no adapter ever gives.
NEVER_GIVEN = 999_999_999
#: A version an adapter gave inside a batch that failed (a conflict's ``current``).
UNCOMMITTED = "<uncommitted>"
#: Ttls by name: on the test clock, and on a real clock (long: never reached in a run).
FAKE_TTLS_MS = {"short": 50, "mid": 1_000, "long": 600_000}
REAL_TTLS_MS = {"short": 600_000, "mid": 700_000, "long": 800_000}
#: How far an adapter on a real clock may be below the model's ``expires_in_ms``.
REAL_CLOCK_SLACK_MS = 120_000
#: The deepest a stored value may nest (state_tasks.core.codec.MAX_STORED_DEPTH).
MAX_STORED_DEPTH = 200

SCOPES = ("s", "t", "ü/ß", "a:b")
KEYS = ("k", "k1", "k2", "ka", "é", "{x}")
KEY_PREFIXES = ("", "k", "k1", "é", "z")
GROUP_PREFIXES = ("", "s", "a", "ü", "z")
FIELDS = ("a", "b", "n")

Json = Any
Event = dict[str, Any]
#: ``{"answer": ...}`` or ``{"error": code, "details": ...}``.
Outcome = dict[str, Any]


# -- values and ops that cannot be printed short ----------------------------------------------


class Unstorable:
    """A value whose repr would fill a screen: shown by name, built when the call is made."""

    def __init__(self, name: str, make: Callable[[], Json]) -> None:
        self.name = name
        self.make = make

    def __repr__(self) -> str:
        return self.name


DEEP = Unstorable("DEEP", lambda: _nested(MAX_STORED_DEPTH + 1))
HUGE_INT = Unstorable("HUGE_INT", lambda: 10**4400)
LONE_SURROGATE = Unstorable("LONE_SURROGATE", lambda: "\ud800")


def _nested(depth: int) -> Json:
    value: Json = 0
    for _ in range(depth):
        value = [value]
    return value


def materialize(value: Json) -> Json:
    """``value`` with every :class:`Unstorable` built."""
    if isinstance(value, Unstorable):
        return value.make()
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    return value


def same(a: Json, b: Json) -> bool:
    """Equal as JSON: ``1``, ``1.0`` and ``true`` differ; object key order does not matter."""
    return canonical(a) == canonical(b)


def canonical(value: Json) -> str:
    return json.dumps(printable(value), sort_keys=True, ensure_ascii=False, default=repr)


def printable(value: Json) -> Json:
    """``value`` with integers too long to print named instead."""
    if isinstance(value, int) and value.bit_length() > 10_000:
        return repr(HUGE_INT)
    if isinstance(value, (dict, list)) and depth(value) > MAX_STORED_DEPTH:
        return repr(DEEP)
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


# -- strategies ------------------------------------------------------------------------------

fields = st.sampled_from(FIELDS)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**64, -(2**80), 0.5, -0.0, 1e308, ""])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(fields, inner, max_size=3),
    max_leaves=6,
)
objects = st.dictionaries(fields, values, max_size=3)
amounts = st.integers(min_value=-1000, max_value=1000) | st.sampled_from(
    [2**64, -(2**70), 0.5, -2.5, 1e308]
)
paths = st.sampled_from([(), ("a",), ("n",), ("a", "b"), ("a", "n"), ("a", "b", "n")])
if_versions = st.sampled_from([None, None, "current", "stale", 0, NEVER_GIVEN])
ttls = st.sampled_from([None, None, "short", "mid", "long"])
op_ids = st.sampled_from(["none", "id", "id+redeliver"])


def engine_path(path: tuple[str, ...], as_list: bool) -> Json:
    if len(path) > 1 or as_list:
        return list(path)
    return "".join(path)


@st.composite
def update_ops(draw: st.DrawFn) -> dict[str, Json]:
    """One update op, in the seed or the engine spelling."""
    kind = draw(st.sampled_from(["set", "merge", "increment", "decrement", "append", "remove"]))
    if draw(st.integers(0, 12)) == 0:
        return draw(
            st.sampled_from(
                [
                    {"set": DEEP},
                    {"type": "set", "path": ["a"], "value": LONE_SURROGATE},
                    {"increment": {"field": "n", "by": HUGE_INT}},
                ]
            )
        )
    if draw(st.booleans()):  # the seed form
        if kind == "set":
            return {"set": draw(values)}
        if kind == "merge":
            return {"merge": draw(objects | values)}
        if kind == "remove":
            return {"remove": draw(fields)}
        if kind == "append":
            return {"append": {"field": draw(fields), "value": draw(values)}}
        arg: dict[str, Json] = {"field": draw(fields)}
        if draw(st.booleans()):
            arg["by"] = draw(amounts)
        return {kind: arg}
    path = engine_path(draw(paths), draw(st.booleans()))
    if kind in ("set", "append"):
        return {"type": kind, "path": path, "value": draw(values)}
    if kind == "merge":
        return {"type": "merge", "path": path, "value": draw(objects | values)}
    if kind == "remove":
        return {"type": "remove", "path": path}
    op: dict[str, Json] = {"type": kind, "path": path}
    if draw(st.booleans()):
        op["by"] = draw(amounts)
    return op


op_lists = st.lists(update_ops(), min_size=1, max_size=3)


@st.composite
def batch_operation(draw: st.DrawFn) -> tuple[Any, ...]:
    """One operation of a batch: (op, key, value or ops, if_version, ttl)."""
    kind = draw(st.sampled_from(["set", "update", "delete"]))
    key = draw(st.sampled_from(KEYS))
    if kind == "delete":
        return (kind, key, None, draw(if_versions), None)
    operand = draw(values) if kind == "set" else draw(op_lists)
    return (kind, key, operand, draw(if_versions), draw(ttls))


batch_operations = st.lists(batch_operation(), min_size=1, max_size=4)


# -- the model of update ops --------------------------------------------------------------------


class OpFailed(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason


MISSING: Any = object()


def parse_model_op(raw: dict[str, Json]) -> tuple[str, tuple[str, ...], Json, Json]:
    """(kind, path, value, by) of an op in either spelling (the strategies make valid ones)."""
    if "type" in raw:
        path = raw.get("path", "")
        segments = tuple(path) if isinstance(path, list) else ((path,) if path else ())
        return raw["type"], segments, raw.get("value"), raw.get("by", 1)
    ((kind, arg),) = raw.items()
    if kind in ("set", "merge"):
        return kind, (), arg, 1
    if kind == "remove":
        return kind, (arg,), None, 1
    if kind == "append":
        return kind, (arg["field"],), arg["value"], 1
    return kind, (arg["field"],), None, arg.get("by", 1)


def is_number(value: Json) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def model_apply_ops(current: Json, exists: bool, raw_ops: list[dict[str, Json]]) -> Json:
    """The README's update ops, all or nothing; raises :class:`OpFailed`."""
    value: Json = current if exists else {}
    for index, raw in enumerate(raw_ops):
        value = model_apply_op(index, raw, value, missing=not exists and index == 0)
    return value


def model_apply_op(index: int, raw: dict[str, Json], current: Json, *, missing: bool) -> Json:
    kind, path, operand, by = parse_model_op(raw)

    def fail(reason: str) -> OpFailed:
        return OpFailed(index, reason)

    def step(present: Json) -> Json:
        if not is_number(present):
            raise fail(f"{kind}.not_number")
        try:
            result = present + by if kind == "increment" else present - by
        except OverflowError:
            result = math.inf
        if isinstance(result, float) and not math.isfinite(result):
            raise fail(f"{kind}.not_number")
        return result

    def append_to(target: Json) -> Json:
        if isinstance(target, list):
            return [*target, operand]
        if isinstance(target, str):
            if not isinstance(operand, str):
                raise fail("append.type_mismatch")
            return target + operand
        if target is None:
            return operand if isinstance(operand, str) else [operand]
        raise fail("append.type_mismatch")

    if kind == "set" and not path:
        return operand
    if kind == "merge" and not isinstance(operand, dict):
        raise fail("merge.value.not_an_object")
    if kind == "remove" and not path:
        return None
    if kind == "append" and not path:
        return append_to(None if missing else current)
    if kind in ("increment", "decrement") and not path:
        return step(0 if missing else current)
    if not isinstance(current, dict):
        raise fail(f"{kind}.target_not_object")
    if kind == "merge" and not path:
        return {**current, **operand}
    root = node = dict(current)
    for segment in path[:-1]:
        child = node.get(segment, MISSING)
        if child is MISSING:
            if kind == "remove":
                return current
            child = {}
        elif not isinstance(child, dict):
            raise fail(f"{kind}.target_not_object")
        node[segment] = node = dict(child)
    leaf = path[-1]
    if kind == "set":
        node[leaf] = operand
    elif kind == "merge":
        inner = node.get(leaf, {})
        if not isinstance(inner, dict):
            raise fail("merge.target_not_object")
        node[leaf] = {**inner, **operand}
    elif kind == "remove":
        node.pop(leaf, None)
    elif kind == "append":
        if leaf in node:
            node[leaf] = append_to(node[leaf])
        else:
            node[leaf] = (
                (operand if isinstance(operand, str) else [operand])
                if len(path) == 1
                else [operand]
            )
    else:
        node[leaf] = step(node.get(leaf, 0))
    return root


def unstorable_reason(value: Json) -> str | None:
    """Why a value cannot be stored (the README's ``value.*`` reasons), or ``None``."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return "value.integer_too_long"
    if depth(value) > MAX_STORED_DEPTH:
        return "value.too_deep"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "value.invalid_unicode"
    return None


def depth(value: Json) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend(
                (child, level + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def model_update(current: Json, exists: bool, raw_ops: list[dict[str, Json]]) -> Json:
    """The updated value; raises :class:`OpFailed` (an op failed, or the result cannot be
    stored: then the first op after which it could not be)."""
    new = model_apply_ops(current, exists, raw_ops)
    reason = unstorable_reason(new)
    if reason is None:
        return new
    for index in range(len(raw_ops) - 1):
        if unstorable_reason(model_apply_ops(current, exists, raw_ops[: index + 1])):
            raise OpFailed(index, reason)
    raise OpFailed(len(raw_ops) - 1, reason)


def bridge_unsendable(raw_ops: list[dict[str, Json]]) -> OpFailed | None:
    """What a Bridge answers for ops that passed every check but hold what JSON cannot carry
    (only from Python): the first such op cannot be sent to the remote, even when a later op
    would overwrite what it makes (the README's Bridge limits)."""
    for index, op in enumerate(raw_ops):
        reason = unstorable_reason(materialize(op))
        if reason is not None:
            return OpFailed(index, reason)
    return None


# -- the model of the contract ------------------------------------------------------------------


@dataclass
class Stored:
    value: Json
    version: int
    due_ms: int | None


@dataclass
class Record:
    """An applied operation: its first answer and change events, what a settled repeat
    answers, and its state: ``whole``, ``settled``, or ``either`` (after a crash of the file
    store: a settle journaled with no later record may be lost, the safe direction)."""

    answer: Json
    events: list[Event]
    settled_answer: Json
    state: str = "whole"
    at_once: bool = False  # settled when applied (a delete of an absent key)


@dataclass
class Prediction:
    """What the model expects: one of ``alternatives`` (an outcome and its events), the
    versions of the changes made (scope, model version) in order, and how to apply it."""

    alternatives: list[tuple[Outcome, list[Event]]]
    new_versions: list[tuple[str, int]] = field(default_factory=list)
    commit: Callable[[], None] = lambda: None


def change_event(
    event_type: str, scope: str, key: str, old: Json, new: Json, version: int, event_id: str
) -> Event:
    event = {
        "event_type": event_type,
        "scope": scope,
        "key": key,
        "old_value": old,
        "new_value": new,
        "version": version,
        "reason": "deleted" if event_type == "state:deleted" else None,
        "event_id": event_id,
    }
    return event


def expiry_event(scope: str, key: str, stored: Stored) -> Event:
    event = change_event("state:deleted", scope, key, stored.value, None, stored.version, "")
    return event | {"reason": "expired", "event_id": f"expired:{stored.version}"}


def ok(answer: Json) -> Outcome:
    return {"answer": answer}


def failed(code: str, details: Json) -> Outcome:
    return {"error": code, "details": details}


class Model:
    """The contract as the README states it, in memory, on the clock ``now_ms()``.

    ``bridged``: what a Bridge cannot know (its remote answers ``old_value: null`` for a
    key that held ``null``, and a delete's answer carries no version).
    """

    def __init__(self, now_ms: Callable[[], int], bridged: bool = False) -> None:
        self.now_ms = now_ms
        self.bridged = bridged
        self.scopes: dict[str, dict[str, Stored]] = {}
        self.counter = 0
        self.records: dict[str, Record] = {}
        #: Ops whose record the next call of the main service settles.
        self.to_settle: list[str] = []

    # -- reading

    def live(self, scope: str, key: str) -> Stored | None:
        stored = self.scopes.get(scope, {}).get(key)
        if stored is None or (stored.due_ms is not None and stored.due_ms <= self.now_ms()):
            return None
        return stored

    def live_keys(self, scope: str) -> dict[str, Stored]:
        return {key: s for key in self.scopes.get(scope, {}) if (s := self.live(scope, key))}

    def groups(self) -> list[str]:
        return sorted(scope for scope in self.scopes if self.live_keys(scope))

    def version_of(self, scope: str, key: str) -> int:
        stored = self.live(scope, key)
        return 0 if stored is None else stored.version

    def versions_in(self, scope: str) -> list[int]:
        return sorted(s.version for s in self.scopes.get(scope, {}).values())

    # -- records

    def main_call(self) -> None:
        """The main service's next call settles the records its last calls made."""
        for op_id in self.to_settle:
            if op_id in self.records:
                self.records[op_id].state = "settled"
        self.to_settle = []

    def crashed(self) -> None:
        for record in self.records.values():
            if not record.at_once:
                record.state = "either"

    def replay(self, op_id: str | None) -> Prediction | None:
        record = self.records.get(op_id) if op_id is not None else None
        if record is None:
            return None
        whole = (ok(record.answer), record.events)
        settled = (ok(record.settled_answer), [])
        alternatives = {"whole": [whole], "settled": [settled], "either": [settled, whole]}
        return Prediction(alternatives[record.state], [], lambda: self.to_settle.append(op_id))

    def _record(self, op_id: str | None, record: Record) -> None:
        if op_id is not None:
            self.records[op_id] = record
            if not record.at_once:
                self.to_settle.append(op_id)

    # -- writing

    def _take_expired(self, scope: str, key: str) -> list[Event]:
        """A write meets a key expired and not yet removed: remove it, fire its expiry."""
        stored = self.scopes.get(scope, {}).get(key)
        if stored is None or self.live(scope, key) is not None:
            return []
        self._remove(scope, key)
        return [expiry_event(scope, key, stored)]

    def _remove(self, scope: str, key: str) -> None:
        entries = self.scopes[scope]
        del entries[key]
        if not entries:
            del self.scopes[scope]

    def _put(self, scope: str, key: str, stored: Stored) -> None:
        self.scopes.setdefault(scope, {})[key] = stored

    def _created(self, existed: bool, old: Json) -> str:
        if not existed or (self.bridged and old is None):
            return "state:created"
        return "state:updated"

    def _checked(
        self, scope: str, key: str, if_version: int | None, op_id: str | None
    ) -> tuple[Prediction | None, Stored | None]:
        """The checks every write makes first, in order: its operation record (a repeat is
        answered from it), then ``if_version``. ``(the answer, None)`` when one decides,
        else ``(None, the key's live value)``."""
        replayed = self.replay(op_id)
        if replayed is not None:
            return replayed, None
        current = self.live(scope, key)
        version_now = 0 if current is None else current.version
        if if_version is not None and if_version != version_now:
            details = {"expected": if_version, "current": version_now}
            return Prediction([(failed("VERSION_CONFLICT", details), [])]), None
        return None, current

    def _write(
        self,
        scope: str,
        key: str,
        current: Stored | None,
        new: Json,
        due_ms: Callable[[], int | None],
        op_id: str | None,
        settled_value: Json,
    ) -> Prediction:
        """A set or an update that passed its checks: its answer, events and commit."""
        version = self.counter + 1
        old = None if current is None else current.value
        answer = {"old_value": old, "new_value": new, "version": version}
        event = change_event(
            self._created(current is not None, old),
            scope,
            key,
            old,
            new,
            version,
            op_id or "<random>",
        )
        expired_stored = self.scopes.get(scope, {}).get(key) if current is None else None
        expired = [] if expired_stored is None else [expiry_event(scope, key, expired_stored)]

        def commit() -> None:
            self._take_expired(scope, key)
            self.counter = version
            if current is None:
                self.scopes.get(scope, {}).pop(key, None)  # a re-created key goes last
            self._put(scope, key, Stored(new, version, due_ms()))
            settled = {
                "old_value": None,
                "new_value": settled_value,
                "version": version,
                "replayed": True,
            }
            self._record(op_id, Record(answer, [event], settled))

        return Prediction([(ok(answer), [*expired, event])], [(scope, version)], commit)

    def set(
        self,
        scope: str,
        key: str,
        value: Json,
        if_version: int | None,
        ttl_ms: int | None,
        op_id: str | None,
    ) -> Prediction:
        decided, current = self._checked(scope, key, if_version, op_id)
        if decided is not None:
            return decided
        return self._write(
            scope,
            key,
            current,
            value,
            lambda: None if ttl_ms is None else self.now_ms() + ttl_ms,
            op_id,
            value,
        )

    def update(
        self,
        scope: str,
        key: str,
        raw_ops: list[dict[str, Json]],
        if_version: int | None,
        ttl_ms: int | None,
        op_id: str | None,
    ) -> Prediction:
        decided, current = self._checked(scope, key, if_version, op_id)
        if decided is not None:
            return decided
        old = None if current is None else current.value
        try:
            new = model_update(old, current is not None, raw_ops)
            unsendable = bridge_unsendable(raw_ops) if self.bridged else None
            if unsendable is not None:
                raise unsendable
        except OpFailed as e:
            details = {"op_index": e.index, "reason": e.reason}
            return Prediction([(failed("UPDATE_OP_ERROR", details), [])])

        def due_ms() -> int | None:
            if ttl_ms is not None:
                return self.now_ms() + ttl_ms
            return None if current is None else current.due_ms  # an update keeps the expiry

        return self._write(scope, key, current, new, due_ms, op_id, None)

    def delete(self, scope: str, key: str, if_version: int | None, op_id: str | None) -> Prediction:
        decided, current = self._checked(scope, key, if_version, op_id)
        if decided is not None:
            return decided
        expired_stored = self.scopes.get(scope, {}).get(key) if current is None else None
        if current is None:
            expired = [] if expired_stored is None else [expiry_event(scope, key, expired_stored)]

            def commit_absent() -> None:
                self._take_expired(scope, key)
                self._record(op_id, Record(None, [], None, "settled", at_once=True))

            return Prediction([(ok(None), expired)], [], commit_absent)
        if self.bridged and current.value is None:
            # The remote answers a delete of a key that held null as of an absent one: the
            # Bridge cannot tell, so it fires nothing (the README's Bridge limit).
            def commit_null() -> None:
                self._remove(scope, key)
                self._record(op_id, Record(None, [], None))

            return Prediction([(ok(None), [])], [], commit_null)
        deleted_version = current.version if not self.bridged else (if_version or 0)
        event = change_event(
            "state:deleted", scope, key, current.value, None, deleted_version, op_id or "<random>"
        )

        def commit() -> None:
            self._remove(scope, key)
            self._record(op_id, Record(current.value, [event], None))

        return Prediction([(ok(current.value), [event])], [], commit)

    def batch(self, scope: str, operations: list[tuple[Any, ...]], op_id: str | None) -> Prediction:
        """``operations``: (op, key, value or ops, if_version, ttl_ms), resolved."""
        replayed = self.replay(op_id)
        if replayed is not None:
            return replayed
        # Each key as the operations before leave it: (exists, value, version, due).
        working: dict[str, tuple[bool, Json, int, int | None]] = {}
        for _, key, *_rest in operations:
            if key not in working:
                stored = self.live(scope, key)
                working[key] = (
                    (False, None, 0, None)
                    if stored is None
                    else (True, stored.value, stored.version, stored.due_ms)
                )
        tentative: set[int] = set()
        version = self.counter
        results: list[Json] = []
        settled: list[Json] = []
        events: list[Event] = []
        new_versions: list[tuple[str, int]] = []
        applied: list[tuple[str, Stored | None]] = []  # each operation's key after it
        for index, (kind, key, operand, if_version, ttl_ms) in enumerate(operations):
            exists, old, version_now, due = working[key]
            if if_version is not None and if_version != version_now:
                current: Json = UNCOMMITTED if version_now in tentative else version_now
                details = {"expected": if_version, "current": current, "operation_index": index}
                return Prediction([(failed("VERSION_CONFLICT", details), [])])
            event_id = "<random>" if op_id is None else f"{op_id}:{index}"
            if kind == "delete":
                results.append(old)
                settled.append(None)
                if exists and not (self.bridged and old is None):  # (a null: as above)
                    deleted_version = version_now if not self.bridged else (if_version or 0)
                    events.append(
                        change_event(
                            "state:deleted", scope, key, old, None, deleted_version, event_id
                        )
                    )
                working[key] = (False, None, 0, None)
                applied.append((key, None))
                continue
            if kind == "set":
                new = operand
            else:
                try:
                    new = model_update(old, exists, operand)
                    unsendable = bridge_unsendable(operand) if self.bridged else None
                    if unsendable is not None:
                        raise unsendable
                except OpFailed as e:
                    details = {"op_index": e.index, "reason": e.reason, "operation_index": index}
                    return Prediction([(failed("UPDATE_OP_ERROR", details), [])])
            version += 1
            tentative.add(version)
            new_versions.append((scope, version))
            results.append({"old_value": old, "new_value": new, "version": version})
            settled.append(
                {"old_value": None, "new_value": new if kind == "set" else None, "version": version}
            )
            events.append(
                change_event(self._created(exists, old), scope, key, old, new, version, event_id)
            )
            if ttl_ms is not None:
                due = self.now_ms() + ttl_ms
            elif kind == "set" or not exists:
                due = None
            working[key] = (True, new, version, due)
            applied.append((key, Stored(new, version, due)))
        expired = [
            expiry_event(scope, key, stored)
            for key in working
            if (stored := self.scopes.get(scope, {}).get(key)) is not None
            and self.live(scope, key) is None
        ]
        answer = {"results": results}
        final_version = version

        def commit() -> None:
            for key in working:
                self._take_expired(scope, key)
            self.counter = final_version
            for key, stored in applied:  # in order: a key set for the first time goes last
                if stored is not None:
                    self._put(scope, key, stored)
                elif key in self.scopes.get(scope, {}):
                    self._remove(scope, key)
            self._record(op_id, Record(answer, events, {"results": settled, "replayed": True}))

        return Prediction([(ok(answer), [*expired, *events])], new_versions, commit)

    def sweep(self) -> list[Event]:
        """Remove the keys due by now; their expiry events."""
        events = []
        for scope in list(self.scopes):
            for key in list(self.scopes.get(scope, {})):
                events += self._take_expired(scope, key)
        return events


# -- an adapter under test, with its versions mapped to the model's ----------------------------


class Subject:
    """One adapter behind its StateService, and the map from its versions to the model's."""

    def __init__(self, kind: str, open_adapter: Callable[[], StateAdapter]) -> None:
        self.kind = kind
        self.open_adapter = open_adapter
        self.recorder = Recorder()
        self.adapter = open_adapter()
        self.service = StateService(self.adapter, on_change=self.recorder)
        self.to_model: dict[str, dict[int, int]] = {}
        self.to_adapter: dict[str, dict[int, int]] = {}
        self.highest: dict[str, int] = {}

    def call(
        self,
        function_id: str,
        payload: dict[str, Json],
        op_id: str | None = None,
        fresh: bool = False,
    ) -> tuple[Outcome, list[Event]]:
        """Run one state function (``fresh``: on a new StateService, as a redelivery to
        another worker thread would); its outcome and the events it fired."""
        service = StateService(self.adapter, on_change=self.recorder) if fresh else self.service
        mark = len(self.recorder.events)
        try:
            outcome = ok(service.call(function_id, payload, op_id))
        except StateError as e:
            outcome = failed(e.code, e.details)
        return outcome, self.recorder.events[mark:]

    def learn(self, scope: str, pairs: list[tuple[Json, int]]) -> list[str]:
        """Map the versions a change gave to the model's; return what broke the rules."""
        problems = []
        mapped = self.to_model.setdefault(scope, {})
        for given, expected in pairs:
            if not isinstance(given, int) or isinstance(given, bool):
                problems.append(f"version {given!r} is not an integer")
                continue
            if given <= self.highest.get(scope, 0):
                problems.append(
                    f"version {given} in scope {scope!r} is not above every earlier one "
                    f"(highest so far {self.highest.get(scope, 0)}): reused or going back"
                )
                continue
            self.highest[scope] = given
            mapped[given] = expected
            self.to_adapter.setdefault(scope, {})[expected] = given
        return problems

    def to_model_version(self, scope: str, given: Json) -> Json:
        if given in (0, NEVER_GIVEN, None) or not isinstance(given, int):
            return given
        found = self.to_model.get(scope, {}).get(given)
        if found is not None:
            return found
        if given > self.highest.get(scope, 0):
            return UNCOMMITTED
        return f"<unknown version {given}>"

    def to_adapter_version(self, scope: str, model_version: int) -> int:
        if model_version in (0, NEVER_GIVEN):
            return model_version
        return self.to_adapter[scope][model_version]

    def translate_event(self, event: Event) -> Event:
        scope, key, given = event["scope"], event["key"], event.get("version")
        event_id = str(event.get("event_id"))
        version = self.to_model_version(scope, given)
        if event.get("reason") == "expired":
            ok_id = isinstance(given, int) and event_id == expiry_event_id(scope, key, given)
            event_id = f"expired:{version}" if ok_id else f"<bad expiry id {event_id}>"
        elif not event_id.startswith("op-"):
            # no operation id: the id derived from the change, as the change log has it
            known = isinstance(given, int) and not isinstance(given, bool) and given > 0
            if known:
                derived = event_id == change_event_id(event["event_type"], scope, key, given)
            else:  # the version is not known (a Bridge's delete): random
                derived = re.fullmatch("[0-9a-f]{32}", event_id) is not None
            event_id = "<random>" if derived else f"<bad derived id {event_id}>"
        return change_event(
            event["event_type"],
            scope,
            key,
            event["old_value"],
            event["new_value"],
            version,
            event_id,
        ) | {"reason": event.get("reason")}

    def translate_answer(self, scope: str, answer: Json) -> Json:
        """Versions in an answer (a write's, a batch's, get with_version) as the model's."""
        if isinstance(answer, dict) and isinstance(answer.get("results"), list):
            return answer | {
                "results": [self.translate_answer(scope, r) for r in answer["results"]]
            }
        if isinstance(answer, dict) and "version" in answer:
            return answer | {"version": self.to_model_version(scope, answer["version"])}
        return answer

    def translate(self, scope: str, outcome: Outcome) -> Outcome:
        if "answer" in outcome:
            return ok(self.translate_answer(scope, outcome["answer"]))
        details = outcome.get("details")
        if outcome["error"] == "VERSION_CONFLICT" and isinstance(details, dict):
            details = details | {
                name: self.to_model_version(scope, details.get(name))
                for name in ("expected", "current")
            }
        return failed(outcome["error"], details)

    def close(self) -> None:
        self.service.settle_sent()
        self.adapter.close()

    def reopen(self, crashed: bool = False) -> None:
        """Close (or, ``crashed``, drop as ``kill -9`` would) and open the store again."""
        if crashed:
            assert isinstance(self.adapter, FileKvStore)
            crash(self.adapter)
        else:
            self.close()
        self.adapter = self.open_adapter()
        self.service = StateService(self.adapter, on_change=self.recorder)


def new_versions_in(
    function_id: str, answer: Json, operations: list[tuple[Any, ...]]
) -> list[Json]:
    """The versions a write's answer gives its changes, in order."""
    if not isinstance(answer, dict) or answer.get("replayed"):
        return []
    if function_id == "state::batch":
        results = answer.get("results") or []
        return [
            result.get("version") if isinstance(result, dict) else None
            for result, op in zip(results, operations, strict=False)
            if op[0] != "delete"
        ]
    return [answer.get("version")]


# -- the machine ---------------------------------------------------------------------------------


@dataclass
class Walk:
    """Pages walked while writing: ``list`` of a scope, or ``list_groups``."""

    kind: str
    scope: str
    prefix: str
    limit: int
    flag: bool  # with_keys, or with_counts
    cursor: str | None = None
    after: str | None = None
    seen: list[str] = field(default_factory=list)
    #: Names that existed at every step since the first page: each must be returned.
    kept: set[str] = field(default_factory=set)


class Differential(RuleBasedStateMachine):
    """The model and one adapter, step by step. Subclasses name the adapter."""

    kind: ClassVar[str] = ""
    open_adapter: ClassVar[Callable[[Callable[[], int]], Callable[[], StateAdapter]]]

    def __init__(self) -> None:
        super().__init__()
        self.clock = [CLOCK_START_MS]
        self.fake_clock = self.kind in ("kv_memory", "kv_file")
        self.bridged = self.kind == "bridge"
        self.model = Model(lambda: self.clock[0], bridged=self.bridged)
        self.subject = Subject(self.kind, self.open_adapter(lambda: self.clock[0]))
        self.ttls = FAKE_TTLS_MS if self.fake_clock else REAL_TTLS_MS
        self.done: list[tuple[str, dict[str, Json], str, str, list[tuple[Any, ...]]]] = []
        self.walks: list[Walk] = []
        self.op_count = 0
        #: Expiry event ids a file store may send again after a crash (its record that the
        #: event was sent is journaled with the next record).
        self.resendable: set[str] = set()

    # -- helpers

    def resolve(self, scope: str, key: str, symbol: Json) -> tuple[int | None, int | None]:
        """A symbolic if_version as (the adapter's number, the model's)."""
        if symbol is None:
            return None, None
        if symbol == "current":
            model_version = self.model.version_of(scope, key)
        elif symbol == "stale":
            current = self.model.version_of(scope, key)
            older = [v for v in self.subject.to_adapter.get(scope, {}) if v != current]
            model_version = max(older) if older else NEVER_GIVEN
        else:
            model_version = symbol
        return self.subject.to_adapter_version(scope, model_version), model_version

    def ttl(self, symbol: str | None) -> int | None:
        return None if symbol is None else self.ttls[symbol]

    def next_op_id(self, mode: str) -> str | None:
        if mode == "none":
            return None
        self.op_count += 1
        return f"op-{self.op_count}"

    def expect(
        self,
        function_id: str,
        payload: dict[str, Json],
        op_id: str | None,
        prediction: Prediction,
        *,
        fresh: bool = False,
        operations: list[tuple[Any, ...]] | None = None,
        sort_events: str = "expiries",
    ) -> Json:
        """Run the call on the adapter, compare it with the model's prediction, apply it."""
        if not fresh:
            self.model.main_call()
        scope = payload.get("scope", "")
        outcome, raw_events = self.subject.call(function_id, payload, op_id, fresh=fresh)
        problems: list[str] = []
        if prediction.new_versions and "answer" in outcome:
            given = new_versions_in(function_id, outcome["answer"], operations or [])
            if len(given) == len(prediction.new_versions):
                problems += self.subject.learn(
                    scope,
                    [(g, v) for g, (_, v) in zip(given, prediction.new_versions, strict=True)],
                )
        got = self.subject.translate(scope, outcome)
        events = [self.subject.translate_event(e) for e in raw_events]
        if sort_events == "all":
            events = self.without_resends(events)
        matched = any(
            same(got, want)
            and same(arrange(events, sort_events), arrange(want_events, sort_events))
            for want, want_events in prediction.alternatives
        )
        if not matched or problems:
            wanted = "\n   or ".join(
                f"{canonical(want)} with events {canonical(arrange(e, sort_events))}"
                for want, e in prediction.alternatives
            )
            raise AssertionError(
                f"{self.kind}: {function_id} {canonical(payload)} op_id={op_id!r}"
                f"{' (redelivered)' if fresh else ''}\n"
                f"  model:   {wanted}\n"
                f"  adapter: {canonical(got)} with events {canonical(arrange(events, sort_events))}"
                + "".join(f"\n  {problem}" for problem in problems)
            )
        prediction.commit()
        return outcome.get("answer")

    def without_resends(self, events: list[Event]) -> list[Event]:
        kept = []
        for event in events:
            if event["event_id"] in self.resendable and event["reason"] == "expired":
                self.resendable.discard(event["event_id"])
                continue
            kept.append(event)
        return kept

    def write(
        self,
        function_id: str,
        payload: dict[str, Json],
        mode: str,
        predict: Callable[[str | None], Prediction],
        operations: list[tuple[Any, ...]] | None = None,
    ) -> None:
        op_id = self.next_op_id(mode)
        self.expect(function_id, payload, op_id, predict(op_id), operations=operations)
        if op_id is None:
            return
        self.done.append((function_id, payload, op_id, payload.get("scope", ""), operations or []))
        if mode == "id+redeliver":  # another worker gets the task before this one moved on
            self.expect(
                function_id, payload, op_id, predict(op_id), fresh=True, operations=operations
            )

    # -- the state functions

    @rule(
        scope=st.sampled_from(SCOPES),
        key=st.sampled_from(KEYS),
        value=values,
        if_version=if_versions,
        ttl=ttls,
        mode=op_ids,
    )
    def set(
        self, scope: str, key: str, value: Json, if_version: Json, ttl: str | None, mode: str
    ) -> None:
        given, model_version = self.resolve(scope, key, if_version)
        payload: dict[str, Json] = {"scope": scope, "key": key, "value": value}
        if given is not None:
            payload["if_version"] = given
        if ttl is not None:
            payload["ttl_ms"] = self.ttl(ttl)
        self.write(
            "state::set",
            payload,
            mode,
            lambda op_id: self.model.set(scope, key, value, model_version, self.ttl(ttl), op_id),
        )

    @rule(
        scope=st.sampled_from(SCOPES),
        key=st.sampled_from(KEYS),
        ops=op_lists,
        if_version=if_versions,
        ttl=ttls,
        mode=op_ids,
    )
    def update(
        self, scope: str, key: str, ops: list[Json], if_version: Json, ttl: str | None, mode: str
    ) -> None:
        given, model_version = self.resolve(scope, key, if_version)
        real_ops = materialize(ops)
        payload: dict[str, Json] = {"scope": scope, "key": key, "ops": real_ops}
        if given is not None:
            payload["if_version"] = given
        if ttl is not None:
            payload["ttl_ms"] = self.ttl(ttl)
        self.write(
            "state::update",
            payload,
            mode,
            lambda op_id: self.model.update(
                scope, key, real_ops, model_version, self.ttl(ttl), op_id
            ),
        )

    @rule(
        scope=st.sampled_from(SCOPES),
        key=st.sampled_from(KEYS),
        if_version=if_versions,
        mode=op_ids,
    )
    def delete(self, scope: str, key: str, if_version: Json, mode: str) -> None:
        given, model_version = self.resolve(scope, key, if_version)
        payload: dict[str, Json] = {"scope": scope, "key": key}
        if given is not None:
            payload["if_version"] = given
        self.write(
            "state::delete",
            payload,
            mode,
            lambda op_id: self.model.delete(scope, key, model_version, op_id),
        )

    @rule(scope=st.sampled_from(SCOPES), operations=batch_operations, mode=op_ids)
    def batch(self, scope: str, operations: list[tuple[Any, ...]], mode: str) -> None:
        wire: list[dict[str, Json]] = []
        resolved: list[tuple[Any, ...]] = []
        for kind, key, operand, if_version, ttl in operations:
            given, model_version = self.resolve(scope, key, if_version)
            real = materialize(operand)
            op: dict[str, Json] = {"op": kind, "key": key}
            if kind == "set":
                op["value"] = real
            elif kind == "update":
                op["ops"] = real
            if given is not None:
                op["if_version"] = given
            if ttl is not None:
                op["ttl_ms"] = self.ttl(ttl)
            wire.append(op)
            resolved.append((kind, key, real, model_version, self.ttl(ttl)))
        payload = {"scope": scope, "operations": wire}
        self.write(
            "state::batch",
            payload,
            mode,
            lambda op_id: self.model.batch(scope, resolved, op_id),
            operations=resolved,
        )

    @precondition(lambda self: bool(self.done))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def repeat(self, pick: int) -> None:
        """A task delivered again (same call, same task id) after its first delivery settled."""
        function_id, payload, op_id, _, operations = self.done[pick % len(self.done)]
        prediction = self._predict_again(function_id, payload, op_id, operations)
        self.expect(function_id, payload, op_id, prediction, operations=operations)

    def _predict_again(
        self,
        function_id: str,
        payload: dict[str, Json],
        op_id: str,
        operations: list[tuple[Any, ...]],
    ) -> Prediction:
        replayed = self.model.replay(op_id)
        if replayed is not None:
            return replayed
        # No record (the first delivery failed): it runs again, as new. Its if_version is
        # the number the first delivery sent, whatever that means now.
        scope = payload["scope"]
        if function_id == "state::batch":
            return self.model.batch(scope, operations, op_id)
        key = payload["key"]
        if_version = self.subject.to_model_version(scope, payload.get("if_version"))
        if not isinstance(if_version, int) and if_version is not None:
            if_version = NEVER_GIVEN  # a version no longer known: never the current one
        ttl_ms = payload.get("ttl_ms")
        if function_id == "state::set":
            return self.model.set(scope, key, payload["value"], if_version, ttl_ms, op_id)
        if function_id == "state::update":
            return self.model.update(scope, key, payload["ops"], if_version, ttl_ms, op_id)
        return self.model.delete(scope, key, if_version, op_id)

    @rule(scope=st.sampled_from(SCOPES), key=st.sampled_from(KEYS), with_version=st.booleans())
    def get(self, scope: str, key: str, with_version: bool) -> None:
        stored = self.model.live(scope, key)
        payload: dict[str, Json] = {"scope": scope, "key": key}
        if not with_version:
            expected: Json = None if stored is None else stored.value
            self.expect("state::get", payload, None, Prediction([(ok(expected), [])]))
            return
        if self.fake_clock:
            payload["with_version"] = True
            want = self.versioned(scope, key)
            self.expect("state::get", payload, None, Prediction([(ok(want), [])]))
        else:
            self.check_versioned(scope, key)

    def versioned(self, scope: str, key: str) -> Json:
        stored = self.model.live(scope, key)
        if stored is None:
            return {"value": None, "version": 0, "expires_in_ms": None}
        left = None if stored.due_ms is None else stored.due_ms - self.clock[0]
        return {"value": stored.value, "version": stored.version, "expires_in_ms": left}

    def check_versioned(self, scope: str, key: str) -> None:
        """get with_version on a real clock: expires_in_ms within the time the run took."""
        self.model.main_call()
        payload = {"scope": scope, "key": key, "with_version": True}
        outcome, _ = self.subject.call("state::get", payload)
        got = self.subject.translate(scope, outcome)
        want = self.versioned(scope, key)
        left = (
            got.get("answer", {}).get("expires_in_ms")
            if isinstance(got.get("answer"), dict)
            else None
        )
        if isinstance(left, int) and isinstance(want["expires_in_ms"], int):
            if want["expires_in_ms"] - REAL_CLOCK_SLACK_MS <= left <= want["expires_in_ms"]:
                got["answer"]["expires_in_ms"] = want["expires_in_ms"]
        assert same(got, ok(want)), (
            f"{self.kind}: state::get {canonical(payload)}\n  model:   {canonical(ok(want))}\n"
            f"  adapter: {canonical(got)}"
        )

    @rule(scope=st.sampled_from(SCOPES), keys=st.lists(st.sampled_from(KEYS), max_size=4))
    def get_many(self, scope: str, keys: list[str]) -> None:
        expected = [None if (s := self.model.live(scope, k)) is None else s.value for k in keys]
        self.expect(
            "state::get_many",
            {"scope": scope, "keys": keys},
            None,
            Prediction([(ok(expected), [])]),
        )

    @rule(scope=st.sampled_from(SCOPES))
    def list(self, scope: str) -> None:
        """state::list without paging: the KvStores in the order keys were first set."""
        self.model.main_call()
        outcome, _ = self.subject.call("state::list", {"scope": scope})
        want = [s.value for s in self.model.live_keys(scope).values()]
        got = outcome.get("answer")
        if self.kind not in ("kv_memory", "kv_file") and isinstance(got, list):
            got, want = sorted(got, key=canonical), sorted(want, key=canonical)
        assert same(got, want), (
            f"{self.kind}: state::list {scope!r}\n  model:   {canonical(want)}\n  adapter: {canonical(outcome)}"
        )

    @rule()
    def list_groups(self) -> None:
        self.expect(
            "state::list_groups", {}, None, Prediction([(ok({"groups": self.model.groups()}), [])])
        )

    # -- pages walked while writing

    @rule(
        kind=st.sampled_from(["list", "list_groups"]),
        scope=st.sampled_from(SCOPES),
        prefix_index=st.integers(min_value=0, max_value=4),
        limit=st.integers(min_value=1, max_value=3),
        flag=st.booleans(),
    )
    def start_walk(self, kind: str, scope: str, prefix_index: int, limit: int, flag: bool) -> None:
        prefix = (KEY_PREFIXES if kind == "list" else GROUP_PREFIXES)[prefix_index]
        walk = Walk(kind, scope if kind == "list" else "", prefix, limit, flag)
        walk.kept = set(self.names(walk))
        self.walks = [*self.walks[-1:], walk]
        self.page(walk)

    @precondition(lambda self: bool(self.walks))
    @rule(pick=st.integers(min_value=0, max_value=1))
    def continue_walk(self, pick: int) -> None:
        self.page(self.walks[pick % len(self.walks)])

    def names(self, walk: Walk) -> dict[str, Json]:
        """The live names a walk can return now, with what a page shows for each."""
        if walk.kind == "list":
            keys = self.model.live_keys(walk.scope)
            return {k: s.value for k, s in keys.items() if k.startswith(walk.prefix)}
        return {
            scope: len(self.model.live_keys(scope))
            for scope in self.model.groups()
            if scope.startswith(walk.prefix)
        }

    def page(self, walk: Walk) -> None:
        """One page: exactly the next live names in order; at the end, every name that
        existed throughout was returned."""
        payload: dict[str, Json] = {"prefix": walk.prefix, "limit": walk.limit}
        if walk.kind == "list":
            payload |= {"scope": walk.scope, "with_keys": walk.flag}
        else:
            payload["with_counts"] = walk.flag
        if walk.cursor is not None:
            payload["cursor"] = walk.cursor
        self.model.main_call()
        outcome, _ = self.subject.call(f"state::{walk.kind}", payload)
        name = "key" if walk.kind == "list" else "scope"
        shown = "value" if walk.kind == "list" else "count"
        after = sorted(n for n in self.names(walk) if walk.after is None or n > walk.after)
        now = self.names(walk)
        expected_items = [
            ({name: n, shown: now[n]} if walk.flag else (now[n] if walk.kind == "list" else n))
            for n in after[: walk.limit]
        ]
        answer = outcome.get("answer")
        described = (
            f"{self.kind}: state::{walk.kind} {canonical(payload)}\n  adapter: {canonical(outcome)}"
        )
        assert isinstance(answer, dict), described
        assert same(answer.get("items"), expected_items), (
            f"{described}\n  model items: {canonical(expected_items)}"
        )
        cursor = answer.get("cursor")
        returned = after[: len(expected_items)]
        if cursor is None:
            assert len(after) <= walk.limit, f"{described}\n  the cursor is null with more to come"
        else:
            assert len(expected_items) == walk.limit, f"{described}\n  a short page with a cursor"
        walk.seen += returned
        walk.after = returned[-1] if returned else walk.after
        walk.cursor = cursor
        if cursor is None:
            missing = sorted(walk.kept - set(walk.seen))
            assert not missing, f"{described}\n  never returned, though there throughout: {missing}"
            self.walks.remove(walk)

    # -- time, expiry and restarts

    @precondition(lambda self: self.fake_clock)
    @rule(ms=st.sampled_from([1, 49, 50, 51, 999, 1_000, 600_000]))
    def advance_clock(self, ms: int) -> None:
        self.clock[0] += ms

    @precondition(lambda self: not self.bridged)
    @rule(scope=st.sampled_from(SCOPES), key=st.sampled_from(KEYS), value=values)
    def set_then_expire(self, scope: str, key: str, value: Json) -> None:
        """A key set with a ttl of 1 ms, and the clock past it (no sweep yet)."""
        payload = {"scope": scope, "key": key, "value": value, "ttl_ms": 1}
        self.expect("state::set", payload, None, self.model.set(scope, key, value, None, 1, None))
        if self.fake_clock:
            self.clock[0] += 1
        else:
            time.sleep(0.02)  # past the server's due time, which was before the answer
            stored = self.model.scopes[scope][key]
            stored.due_ms = self.clock[0]

    @precondition(lambda self: not self.bridged)
    @rule()
    def sweep(self) -> None:
        self.model.main_call()
        mark = len(self.subject.recorder.events)
        count, _ = self.subject.service.sweep_expired()
        events = self.without_resends(
            [self.subject.translate_event(e) for e in self.subject.recorder.events[mark:]]
        )
        want = self.model.sweep()
        assert same(arrange(events, "all"), arrange(want, "all")), (
            f"{self.kind}: sweep_expired fired {canonical(arrange(events, 'all'))}\n"
            f"  model: {canonical(arrange(want, 'all'))}"
        )
        assert count >= len(want), f"{self.kind}: sweep_expired counted {count}, fired {len(want)}"

    @precondition(lambda self: self.kind == "kv_file")
    @rule()
    def save(self) -> None:
        assert isinstance(self.subject.adapter, FileKvStore)
        self.subject.adapter.save()

    @precondition(lambda self: self.kind in ("kv_file", "redis"))
    @rule()
    def close_and_reopen(self) -> None:
        self.model.main_call()
        self.subject.reopen()

    @precondition(lambda self: self.kind == "kv_file")
    @rule()
    def kill_and_reopen(self) -> None:
        """kill -9 of the worker, and a new one on the same folder."""
        self.subject.reopen(crashed=True)
        self.model.crashed()
        self.resendable |= {
            e["event_id"]
            for e in (self.subject.translate_event(r) for r in self.subject.recorder.events)
            if e["reason"] == "expired"
        }

    # -- the whole state, after every step

    @invariant()
    def same_state(self) -> None:
        self.model.main_call()
        outcome, _ = self.subject.call("state::list_groups", {})
        want = {"groups": self.model.groups()}
        assert same(outcome, ok(want)), (
            f"{self.kind}: list_groups\n  model:   {canonical(want)}\n  adapter: {canonical(outcome)}"
        )
        for scope in SCOPES:
            payload = {"scope": scope, "with_keys": True, "limit": 1000}
            outcome, _ = self.subject.call("state::list", payload)
            want_items = [
                {"key": k, "value": self.model.live_keys(scope)[k].value}
                for k in sorted(self.model.live_keys(scope))
            ]
            assert same(outcome, ok({"items": want_items, "cursor": None})), (
                f"{self.kind}: scope {scope!r}\n  model:   {canonical(want_items)}\n"
                f"  adapter: {canonical(outcome)}"
            )
        for walk in self.walks:
            walk.kept &= set(self.names(walk))

    def teardown(self) -> None:
        try:
            if self.fake_clock:
                for scope in SCOPES:
                    for key in KEYS:
                        self.expect(
                            "state::get",
                            {"scope": scope, "key": key, "with_version": True},
                            None,
                            Prediction([(ok(self.versioned(scope, key)), [])]),
                        )
            else:
                for scope in SCOPES:
                    for key in KEYS:
                        self.check_versioned(scope, key)
            for scope in SCOPES:
                self.list(scope)
            self.check_change_log()
        finally:
            self.subject.close()

    def check_change_log(self) -> None:
        """The change log holds every change the example made, once, in the order their
        events were fired (on a cluster, within each scope): the trigger events, each first
        one of its event id (a repeat of a whole operation or a pending expiry fires again
        with the same id). The Bridge reads the remote's log, whose event ids are the
        remote tasks' (not compared)."""
        if self.kind == "bridge":
            return
        fired: dict[str, Event] = {}
        for event in self.subject.recorder.events:
            fired.setdefault(str(event["event_id"]), event)
        logged: list[Event] = []
        cursor = None
        while True:
            payload: dict[str, Json] = {"limit": 1000}
            if cursor is not None:
                payload["after"] = cursor
            page = self.subject.service.call("state::changes", payload)
            logged += page["changes"]
            cursor = page["cursor"]
            if not page["changes"]:
                break

        def comparable(event: Event) -> Event:
            return self.subject.translate_event(event) | {"id": event["event_id"]}

        got = [comparable(entry) for entry in logged]
        want = [comparable(event) for event in fired.values()]
        if self.kind == "redis_cluster":
            # one log per bucket, read merged by entry id: the order holds within a scope
            def by_scope(events: list[Event]) -> list[Event]:
                return sorted(events, key=lambda event: str(event["scope"]))  # stable

            got, want = by_scope(got), by_scope(want)
        assert got == want, (
            f"{self.kind}: the change log\n  {canonical(got)}\n"
            f"  the events fired (first of each id):\n  {canonical(want)}"
        )


def arrange(events: list[Event], how: str) -> list[Event]:
    """Events in a comparable order: ``all`` sorted (a sweep's order is its own), ``expiries``
    with the expiries a write met first sorted among themselves, ``none`` as they came."""
    if how == "all":
        return sorted(events, key=canonical)
    if how == "expiries":
        head = [e for e in events if e.get("reason") == "expired"]
        rest = [e for e in events if e.get("reason") != "expired"]
        return sorted(head, key=canonical) + rest
    return events


# -- one test per adapter --------------------------------------------------------------------------


#: The fuzzer's logs keep everything (the test clock may run ahead by hours).
LOG_FOR_EVER = ChangeLogSettings(max_age_s=10 * 365 * 86_400)


def adapter_factory(
    kind: str, request: pytest.FixtureRequest, folder: Path
) -> Callable[[Callable[[], int]], Callable[[], StateAdapter]]:
    """For each example: a function of the test clock that opens the adapter (again, on the
    same storage, after a restart)."""

    def for_example(clock_ms: Callable[[], int]) -> Callable[[], StateAdapter]:
        if kind == "kv_memory":
            store = KvStore(clock_ms=clock_ms)
            store.use_change_log(LOG_FOR_EVER)
            return lambda: store
        if kind == "kv_file":
            path = folder / uuid.uuid4().hex[:8]

            def open_file_store() -> StateAdapter:
                store = FileKvStore(file_path=path, save_interval_ms=60_000, clock_ms=clock_ms)
                store.use_change_log(LOG_FOR_EVER)
                store.open()
                return store

            return open_file_store
        first = build(kind, request)  # a fresh key prefix (Redis) or a wiped remote (Bridge)
        first.open()
        opened = [first]

        def open_again() -> StateAdapter:
            if opened:
                return opened.pop()
            assert isinstance(first, RedisAdapter)  # only a plain Redis is reopened
            again = RedisAdapter(redis_url=first.redis_url, key_prefix=first.key_prefix)
            again.open()
            return again

        return open_again

    return for_example


@pytest.mark.parametrize("kind", ADAPTERS)
def test_every_adapter_agrees_with_the_model(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    examples = examples_for(kind)
    machine = type(
        f"Differential_{kind}",
        (Differential,),
        {"kind": kind, "open_adapter": staticmethod(adapter_factory(kind, request, tmp_path))},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=not RANDOM,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
