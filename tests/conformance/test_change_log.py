"""The change log (issue 23) on every adapter, through the StateService: ``state::changes``.

Every change an adapter applies is in its log, once, as the change's trigger event plus a
``cursor``: a set (created/updated), an update, a delete, each operation of a batch, an
expiry, with exact values. A change that failed is not. A consumer that reads, stops and
resumes from its cursor gets every change exactly once, each key's versions in order; a
cursor behind what the log keeps is ``COMPACTED`` (with ``details["oldest"]`` to go on
from), never a silent gap; cursors are bound to the read that gave them.

On the Bridge the log is the remote's (read through it): a test that needs a log that
keeps little (``max_entries``, ``max_age_s``) reads it from a remote deployment whose
``state.yaml`` says so (``use_change_log`` on the Bridge cannot bound the remote's log).

The same through real workers (``send_task``, ``watch()``, the CLI, a handler's changes):
tests/integration/test_change_log_workers.py.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Recorder, build
from helpers import Deployment, RedisServer, own_db, redis_state_yaml
from test_file_store import crash

from state_tasks import Compacted, watch
from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.bridge import Bridge
from state_tasks.adapters.file_store import FileKvStore
from state_tasks.adapters.kv_store import KvStore
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.core.batch import encode_cursor
from state_tasks.core.changes import ChangeLogSettings
from state_tasks.core.errors import StateError
from state_tasks.core.service import StateService
from state_tasks.remote import BRIDGE_NAMESPACE, RemoteDeployment

#: A log that keeps little: a cursor taken a few hundred changes ago is behind it.
SMALL_LOG = ChangeLogSettings(max_entries=50)
#: A log that keeps a change one second.
SHORT_LOG = ChangeLogSettings(max_age_s=1)

#: How many changes the consumer test makes: 5,000 (about a second) on every adapter but the
#: Bridge, whose every write is a round trip through a remote worker (several ms): 1,000
#: there (about 6 s); 5,000 would take half a minute and show nothing the smaller run does
#: not (the remote's log is a RedisAdapter's, tested with 5,000 as "redis").
BULK_CHANGES = {
    "kv_memory": 5000,
    "kv_file": 5000,
    "redis": 5000,
    "redis_sentinel": 5000,
    "redis_cluster": 5000,
    "bridge": 1000,
}

#: What an entry says about its change (its event_id, timestamp and cursor aside).
CHANGE_FIELDS = ("event_type", "scope", "key", "old_value", "new_value", "version")

INCREMENT = [{"increment": {"field": "n", "by": 1}}]


# -- the adapters ----------------------------------------------------------------------------


@pytest.fixture
def kind(request: pytest.FixtureRequest, make_adapter: Any) -> str:
    """The adapter under test (``make_adapter``'s parameter)."""
    return str(request.node.callspec.params["make_adapter"])


@pytest.fixture(scope="module")
def bridge_remotes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[ChangeLogSettings, tuple[Deployment, int]]]:
    """Remote deployments for the Bridge whose change log keeps what a test asks, made on
    first use (one worker each): ``{settings: (deployment, its state's Redis db)}``."""
    made: dict[ChangeLogSettings, tuple[Deployment, int]] = {}
    yield made
    with ThreadPoolExecutor() as pool:  # a worker takes seconds to stop: all at once
        list(pool.map(Deployment.close, [deployment for deployment, _ in made.values()]))


def _bridge_with_log(
    request: pytest.FixtureRequest, settings: ChangeLogSettings, **adapter_settings: Any
) -> Bridge:
    remotes: dict[ChangeLogSettings, tuple[Deployment, int]] = request.getfixturevalue(
        "bridge_remotes"
    )
    server: RedisServer = request.getfixturevalue("redis_server")
    if settings not in remotes:
        db = own_db()
        state_yaml = redis_state_yaml(server.url(db), "remote-log", max_value_bytes=100_000)
        state_yaml += (
            f"      change_log: {{max_entries: {settings.max_entries}, "
            f"max_age_s: {settings.max_age_s}}}\n"
        )
        workdir = request.getfixturevalue("tmp_path_factory").mktemp("bridge-log-remote")
        deployment = Deployment(server, workdir, state_yaml)
        deployment.worker("--concurrency", "2")
        remotes[settings] = (deployment, db)
    deployment, db = remotes[settings]
    redis.Redis.from_url(server.url(db)).flushdb()  # a fresh store (and log) per test
    remote = RemoteDeployment(
        broker_url=deployment.broker_url,
        result_backend=deployment.backend_url,
        timeout_ms=20_000,
        queue_type=deployment.queue_type,
    )
    return Bridge(remote=remote.call, on_close=remote.close, **adapter_settings)


@pytest.fixture
def open_logged(request: pytest.FixtureRequest, kind: str) -> Iterator[Callable[..., StateAdapter]]:
    """Opens an adapter of the kind under test whose change log keeps ``log`` (``None``:
    no log), told before it is opened, as ``build_adapter()`` does."""
    opened: list[StateAdapter] = []

    def make(log: ChangeLogSettings | None = None, **settings: Any) -> StateAdapter:
        if kind == "bridge" and log is not None and log != ChangeLogSettings():
            adapter: StateAdapter = _bridge_with_log(request, log, **settings)
        else:
            adapter = build(kind, request, **settings)
        adapter.use_change_log(log)
        adapter.open()
        opened.append(adapter)
        return adapter

    yield make
    for adapter in opened:
        adapter.close()


# -- helpers ---------------------------------------------------------------------------------


def call(service: StateService, function_id: str, op_id: str | None = None, **payload: Any) -> Any:
    return service.call(function_id, payload, op_id)


def changes(service: StateService, after: str | None = None, **payload: Any) -> dict[str, Any]:
    """One ``state::changes`` answer."""
    if after is not None:
        payload["after"] = after
    return service.call("state::changes", payload)  # type: ignore[no-any-return]


def read_all(
    service: StateService, after: str | None = None, limit: int = 1000, **filters: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """Every entry after ``after`` (of ``filters``), and the cursor after them: read until
    a read returns nothing and leaves the cursor where it was."""
    entries: list[dict[str, Any]] = []
    cursor = after
    for _ in range(10_000):
        page = changes(service, cursor, limit=limit, **filters)
        assert len(page["changes"]) <= limit
        entries += page["changes"]
        if not page["changes"] and page["cursor"] == cursor:
            return entries, cursor
        cursor = page["cursor"]
    raise AssertionError("the log never stopped giving entries")


def what(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's change: its fields but event_id, timestamp and cursor."""
    fields = {name: entry[name] for name in CHANGE_FIELDS}
    if "reason" in entry:
        fields["reason"] = entry["reason"]
    return fields


def state_error(raised: pytest.ExceptionInfo[StateError]) -> tuple[str, str]:
    return raised.value.code, raised.value.message


def assert_same_changes(
    got: list[dict[str, Any]], want: list[dict[str, Any]], *, total_order: bool
) -> None:
    """``got`` holds exactly the changes of ``want``: each once, each scope's in order, and
    with ``total_order`` all in order (one log; a Redis Cluster keeps one per bucket, whose
    entries interleave in the order of the masters' clocks)."""
    if total_order:
        assert [what(e) for e in got] == want
        return
    for scope in sorted({w["scope"] for w in want} | {e["scope"] for e in got}):
        mine = [what(e) for e in got if e["scope"] == scope]
        assert mine == [w for w in want if w["scope"] == scope], f"scope {scope}"
    assert len(got) == len(want)


def assert_versions_in_order(got: list[dict[str, Any]]) -> None:
    """Per key: every write has a greater version than the change before it; a delete (or
    an expiry) has the version it removed, the one of the write before it."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in got:
        name = (entry["scope"], entry["key"])
        before = last.get(name)
        if entry["event_type"] == "state:deleted":
            assert before is not None and before["event_type"] != "state:deleted", entry
            assert entry["version"] == before["version"], (before, entry)
        elif before is not None:
            assert entry["version"] > before["version"], (before, entry)
            if before["event_type"] == "state:deleted":
                assert entry["event_type"] == "state:created", entry
            else:
                assert entry["event_type"] == "state:updated", entry
                assert entry["old_value"] == before["new_value"], (before, entry)
        last[name] = entry


def as_logged(adapter: StateAdapter, event_id: str) -> str | None:
    """The event id the log holds for a change whose trigger event had ``event_id``: the
    same, except on the Bridge, whose log is the remote deployment's: its entries carry the
    id of the remote task the Bridge sent (derived from the local operation id; ``None``
    here: a random one, for a change made without one)."""
    if not isinstance(adapter, Bridge):
        return event_id
    if event_id.startswith("v-") or re.fullmatch("[0-9a-f]{32}", event_id):
        return None  # made without an operation id (derived, or random: version unknown)
    op_id, sep, index = event_id.partition(":")
    remote = str(uuid.uuid5(BRIDGE_NAMESPACE, op_id))
    return f"{remote}:{index}" if sep else remote


class Writer:
    """Changes state through a service and keeps, from what each write answered, the
    entries the log must hold for them, in order (``want``)."""

    def __init__(self, service: StateService) -> None:
        self.service = service
        self.want: list[dict[str, Any]] = []
        #: The live keys and their versions.
        self.live: dict[tuple[str, str], int] = {}

    def _wrote(self, scope: str, key: str, answer: dict[str, Any]) -> None:
        name = (scope, key)
        created = name not in self.live
        if created:
            assert answer["old_value"] is None
        else:
            assert answer["version"] > self.live[name]
        self.live[name] = answer["version"]
        self.want.append(
            {
                "event_type": "state:created" if created else "state:updated",
                "scope": scope,
                "key": key,
                "old_value": answer["old_value"],
                "new_value": answer["new_value"],
                "version": answer["version"],
            }
        )

    def _deleted(self, scope: str, key: str, old: Any) -> None:
        version = self.live.pop((scope, key), None)
        if version is None:
            assert old is None
            return  # nothing deleted, nothing logged
        self.want.append(
            {
                "event_type": "state:deleted",
                "scope": scope,
                "key": key,
                "old_value": old,
                "new_value": None,
                "version": version,
                "reason": "deleted",
            }
        )

    def set(self, scope: str, key: str, value: Any, op_id: str | None = None) -> dict[str, Any]:
        answer = call(self.service, "state::set", op_id, scope=scope, key=key, value=value)
        self._wrote(scope, key, answer)
        return answer  # type: ignore[no-any-return]

    def update(self, scope: str, key: str, ops: list[Any], op_id: str | None = None) -> None:
        answer = call(self.service, "state::update", op_id, scope=scope, key=key, ops=ops)
        self._wrote(scope, key, answer)

    def delete(self, scope: str, key: str, op_id: str | None = None) -> None:
        self._deleted(scope, key, call(self.service, "state::delete", op_id, scope=scope, key=key))

    def batch(self, scope: str, operations: list[dict[str, Any]], op_id: str | None = None) -> None:
        answer = call(self.service, "state::batch", op_id, scope=scope, operations=operations)
        for op, result in zip(operations, answer["results"], strict=True):
            if op["op"] == "delete":
                self._deleted(scope, op["key"], result)
            else:
                self._wrote(scope, op["key"], result)

    def random_change(self, rng: random.Random, scopes: list[str], keys: int) -> None:
        """One random set, update, delete (of a key that may be absent) or batch."""
        scope = rng.choice(scopes)
        key = f"k{rng.randrange(keys)}"
        roll = rng.random()
        if roll < 0.4:
            self.set(scope, key, {"n": rng.randrange(1000), "w": f"{scope}/{key}"})
        elif roll < 0.6:
            self.update(scope, key, INCREMENT)
        elif roll < 0.75:
            self.delete(scope, key)
        else:
            operations: list[dict[str, Any]] = []
            for _ in range(rng.randint(2, 5)):  # the same key twice in a batch, sometimes
                name, op = f"k{rng.randrange(keys)}", rng.choice(["set", "update", "delete"])
                if op == "set":
                    operations.append({"op": "set", "key": name, "value": {"n": 0, "w": "b"}})
                elif op == "update":
                    operations.append({"op": "update", "key": name, "ops": INCREMENT})
                else:
                    operations.append({"op": "delete", "key": name})
            self.batch(scope, operations)


# -- every change, as its trigger event -------------------------------------------------------


def test_every_kind_of_change_is_logged_as_its_trigger_event(
    service: StateService, events: Recorder
) -> None:
    s = "log-kinds"
    writer = Writer(service)
    started = datetime.now(UTC)
    writer.set(s, "a", {"n": 1}, op_id="op-set-1")  # created
    writer.set(s, "a", {"n": 2}, op_id="op-set-2")  # updated
    writer.update(s, "a", INCREMENT, op_id="op-update")  # updated by ops
    writer.update(s, "b", [{"set": {"n": 10}}], op_id="op-update-new")  # created by ops
    writer.delete(s, "a", op_id="op-delete")  # deleted
    writer.delete(s, "never-there", op_id="op-delete-absent")  # nothing: no entry
    writer.batch(
        s,
        [
            {"op": "set", "key": "c", "value": "x"},
            {"op": "update", "key": "b", "ops": INCREMENT},
            {"op": "delete", "key": "absent"},  # changed nothing: no entry
            {"op": "delete", "key": "c"},  # deletes what op 0 created
        ],
        op_id="op-batch",
    )
    # without an operation id (an in-process call): ids derived from the key and version
    writer.set(s, "d", [1, 2])
    writer.update(s, "d", [{"set": [3]}])
    writer.delete(s, "d")
    writer.batch(s, [{"op": "set", "key": "e", "value": True}, {"op": "delete", "key": "b"}])

    entries, _ = read_all(service)
    assert [what(e) for e in entries] == writer.want
    keys = ["a", "a", "a", "b", "a", "c", "b", "c", "d", "d", "d", "e", "b"]
    assert [e["key"] for e in entries] == keys
    assert [e["event_type"].split(":")[1] for e in entries] == [
        "created",
        "updated",
        "updated",
        "created",
        "deleted",
        "created",
        "updated",
        "deleted",
        "created",
        "updated",
        "deleted",
        "created",
        "deleted",
    ]
    ids = [e["event_id"] for e in entries]
    given = [
        "op-set-1",
        "op-set-2",
        "op-update",
        "op-update-new",
        "op-delete",
        "op-batch:0",
        "op-batch:1",
        "op-batch:3",
    ]
    assert ids[:8] == [as_logged(service.adapter, i) for i in given]
    if isinstance(service.adapter, Bridge):  # the remote's random task ids
        assert all(re.fullmatch(r"[0-9a-f-]{36}(:\d+)?", i) for i in ids[8:]), ids[8:]
    else:
        assert all(i.startswith("v-") for i in ids[8:]), ids[8:]
    assert len(set(ids)) == len(ids)
    for entry in entries:
        assert entry["type"] == "state"
        assert ("reason" in entry) == (entry["event_type"] == "state:deleted")
        at = datetime.fromisoformat(entry["timestamp"])
        assert started - timedelta(seconds=2) <= at <= datetime.now(UTC) + timedelta(seconds=2)
        assert isinstance(entry["cursor"], str) and entry["cursor"]
    assert [e["timestamp"] for e in entries] == sorted(e["timestamp"] for e in entries)


def test_the_log_and_the_trigger_events_agree(service: StateService, events: Recorder) -> None:
    """Same changes, same event ids, same order: a consumer can match an entry with the
    event its triggers got (and deduplicate on ``event_id`` across both)."""
    writer = Writer(service)
    writer.set("agree", "a", 1, op_id="agree-1")
    writer.set("agree", "a", 2)
    writer.update("agree", "b", [{"set": "x"}], op_id="agree-2")
    writer.update("agree", "b", [{"set": "y"}])
    writer.batch("agree", [{"op": "set", "key": "c", "value": 3}, {"op": "delete", "key": "a"}])
    writer.batch(
        "agree", [{"op": "delete", "key": "c"}, {"op": "set", "key": "a", "value": 4}], "agree-3"
    )
    writer.delete("agree", "b")
    writer.delete("agree", "a", op_id="agree-4")
    entries, _ = read_all(service)
    assert [what(e) for e in entries] == writer.want

    def agreed(event: dict[str, Any], event_id: str | None) -> tuple[Any, ...]:
        return (
            event["event_type"],
            event["scope"],
            event["key"],
            event["old_value"],
            event["new_value"],
            event.get("reason"),
            event_id,
        )

    fired = [agreed(e, as_logged(service.adapter, e["event_id"])) for e in events.events]
    logged = [
        agreed(e, None if want[-1] is None else e["event_id"])
        for e, want in zip(entries, fired, strict=True)
    ]
    assert logged == fired


def test_distinct_changes_have_distinct_event_ids(service: StateService, events: Recorder) -> None:
    """A key deleted, created again and deleted again, without operation ids (as a
    handler's in-process calls make them): two deletes, two event ids, in the log and in
    the trigger events (a consumer deduplicating on event_id must not drop the second)."""
    for _ in range(2):
        call(service, "state::set", scope="ids", key="k", value=1)
        call(service, "state::delete", scope="ids", key="k")
        call(
            service, "state::batch", scope="ids", operations=[{"op": "set", "key": "b", "value": 1}]
        )
        call(service, "state::batch", scope="ids", operations=[{"op": "delete", "key": "b"}])
    entries, _ = read_all(service)
    assert len(entries) == len(events.events) == 8
    assert len({e["event_id"] for e in entries}) == 8
    assert len({e["event_id"] for e in events.events}) == 8


def test_values_are_exact_whatever_their_size_and_text(service: StateService) -> None:
    writer = Writer(service)
    scope, key = "スコープ-値", "ключ-🔑"
    large = {
        "text": ("lorem ipsum dolor sit amet, ∑ é 🎉 " * 700)[:23_000],
        "list": list(range(50)),
        "quote": 'a "quoted" \\ back\\slash\n\t',
    }
    assert len(str(large)) > 23_000
    writer.set(scope, key, large)
    writer.update(scope, key, [{"set": {"n": 1}}])  # old_value: the 23 KB value, whole
    big = [2**64 + 1, -(2**70), 10**40, 0.1, 1e300, -0.0, "\u2028", "🔑" * 3]
    writer.set(scope, "big", big)
    writer.set(scope, "big", {"n": 2**63})
    writer.set(scope, "null", None)  # JSON null: created, new_value null
    writer.set(scope, "null", 0)  # updated from null
    writer.set(scope, "null", None)
    writer.delete(scope, "null")  # deleted: old_value null, reason deleted
    writer.batch(
        scope, [{"op": "set", "key": "🔑", "value": large}, {"op": "delete", "key": "big"}]
    )
    entries, _ = read_all(service)
    assert [what(e) for e in entries] == writer.want
    assert entries[0]["new_value"] == large and entries[1]["old_value"] == large
    assert entries[2]["new_value"] == big
    assert [type(v) for v in entries[2]["new_value"]] == [type(v) for v in big]
    assert entries[3]["old_value"] == big and entries[3]["new_value"] == {"n": 2**63}
    nulls = [e for e in entries if e["key"] == "null"]
    assert [(e["event_type"], e["old_value"], e["new_value"]) for e in nulls] == [
        ("state:created", None, None),
        ("state:updated", None, 0),
        ("state:updated", 0, None),
        ("state:deleted", None, None),
    ]
    assert nulls[-1]["reason"] == "deleted"
    # a scope filter of a name in any script reads it back
    only, _ = read_all(service, scope=scope, limit=3)
    assert [what(e) for e in only] == writer.want


@pytest.mark.expires_itself
def test_an_expiry_is_logged_swept_or_met_by_a_write(
    service: StateService, events: Recorder
) -> None:
    scope = "log-expiry"
    # met by a write: the expiry, then the write that found the key expired
    first = call(service, "state::set", scope=scope, key="met", value="old", ttl_ms=200)
    time.sleep(0.3)
    second = call(service, "state::set", scope=scope, key="met", value="new")
    assert second["old_value"] is None
    # swept
    swept = {}
    for key in ("s1", "s2"):
        swept[key] = call(service, "state::set", scope=scope, key=key, value=key, ttl_ms=200)
    time.sleep(0.3)
    deadline = time.monotonic() + 10
    while len([e for e in events.events if e.get("reason") == "expired"]) < 3:
        assert time.monotonic() < deadline, events.events
        service.sweep_expired()
        time.sleep(0.02)

    entries, _ = read_all(service)
    assert [what(e) for e in entries[:5]] == [
        {
            "event_type": "state:created",
            "scope": scope,
            "key": "met",
            "old_value": None,
            "new_value": "old",
            "version": first["version"],
        },
        {
            "event_type": "state:deleted",
            "scope": scope,
            "key": "met",
            "old_value": "old",
            "new_value": None,
            "version": first["version"],
            "reason": "expired",
        },
        {
            "event_type": "state:created",
            "scope": scope,
            "key": "met",
            "old_value": None,
            "new_value": "new",
            "version": second["version"],
        },
        *[
            {
                "event_type": "state:created",
                "scope": scope,
                "key": key,
                "old_value": None,
                "new_value": key,
                "version": swept[key]["version"],
            }
            for key in ("s1", "s2")
        ],
    ]
    swept_out = sorted(entries[5:], key=lambda e: e["key"])  # swept together: in any order
    assert [what(e) for e in swept_out] == [
        {
            "event_type": "state:deleted",
            "scope": scope,
            "key": key,
            "old_value": key,
            "new_value": None,
            "version": swept[key]["version"],
            "reason": "expired",
        }
        for key in ("s1", "s2")
    ]
    expiry_ids = [e["event_id"] for e in entries if e.get("reason") == "expired"]
    assert all(i.startswith("expired-") for i in expiry_ids)
    # the trigger events of the expiries had the same ids
    assert sorted(expiry_ids) == sorted(
        e["event_id"] for e in events.events if e.get("reason") == "expired"
    )
    # an expiry is logged once, however often one sweeps
    service.sweep_expired()
    assert read_all(service, entries[-1]["cursor"])[0] == []


# -- what is not a change ---------------------------------------------------------------------


def test_a_change_that_failed_is_not_logged_and_a_redelivered_one_once(
    service: StateService,
) -> None:
    s = "log-failed"
    version = call(service, "state::set", scope=s, key="k", value={"n": "text"})["version"]
    _, cursor = read_all(service)
    failures: list[tuple[str, dict[str, Any], str]] = [
        ("state::set", {"key": "k", "value": 1, "if_version": version + 7}, "VERSION_CONFLICT"),
        ("state::set", {"key": "new", "value": 1, "if_version": 3}, "VERSION_CONFLICT"),
        ("state::update", {"key": "k", "ops": INCREMENT, "if_version": 99}, "VERSION_CONFLICT"),
        ("state::delete", {"key": "k", "if_version": version + 1}, "VERSION_CONFLICT"),
        ("state::update", {"key": "k", "ops": INCREMENT}, "UPDATE_OP_ERROR"),
        (
            "state::batch",
            {
                "operations": [
                    {"op": "set", "key": "b1", "value": 1},
                    {"op": "delete", "key": "k"},
                    {"op": "update", "key": "k", "ops": INCREMENT},  # k is gone: creates n=1
                    {"op": "update", "key": "b1", "ops": INCREMENT},  # 1 is no object
                ]
            },
            "UPDATE_OP_ERROR",
        ),
        (
            "state::batch",
            {
                "operations": [
                    {"op": "set", "key": "b2", "value": 1},
                    {"op": "delete", "key": "k", "if_version": version + 3},
                ]
            },
            "VERSION_CONFLICT",
        ),
        (
            "state::batch",
            {
                "operations": [
                    {"op": "set", "key": "b3", "value": 1},
                    {"op": "rename", "key": "k"},
                ]
            },
            "VALIDATION_ERROR",
        ),
    ]
    for function_id, payload, code in failures:
        with pytest.raises(StateError) as raised:
            service.call(function_id, {"scope": s, **payload}, f"failed-{uuid.uuid4().hex}")
        assert raised.value.code == code, (function_id, payload, raised.value.message)
    assert changes(service, cursor) == {"changes": [], "cursor": cursor}
    assert call(service, "state::get", scope=s, key="k") == {"n": "text"}

    # redelivered: the same operation id applies once, and is logged once (its event id:
    # test_every_kind_of_change_is_logged_as_its_trigger_event)
    writer = Writer(service)
    writer.set(s, "r", 1, op_id="redelivered-set")
    call(service, "state::set", "redelivered-set", scope=s, key="r", value=1)
    writer.update(s, "r", [{"set": 2}], op_id="redelivered-update")
    call(service, "state::update", "redelivered-update", scope=s, key="r", ops=[{"set": 2}])
    writer.batch(s, [{"op": "set", "key": "q", "value": 0}], op_id="redelivered-batch")
    batch = [{"op": "set", "key": "q", "value": 0}]
    call(service, "state::batch", "redelivered-batch", scope=s, operations=batch)
    writer.delete(s, "r", op_id="redelivered-delete")
    call(service, "state::delete", "redelivered-delete", scope=s, key="r")
    # and once more each, after other calls settled their records
    call(service, "state::set", "redelivered-set", scope=s, key="r", value=1)
    call(service, "state::batch", "redelivered-batch", scope=s, operations=batch)
    call(service, "state::delete", "redelivered-delete", scope=s, key="r")
    entries, _ = read_all(service, cursor)
    assert [what(e) for e in entries] == writer.want
    assert len({e["event_id"] for e in entries}) == 4


# -- a consumer that reads, stops and resumes ---------------------------------------------------


class Consumer(threading.Thread):
    """Reads the log while it is written: pages of varying size; now and then it stops (a
    crash or a restart: the entries of its page it had not processed are lost to it) and
    resumes from the cursor it kept: the last processed entry's, or after a whole page
    sometimes the page's."""

    def __init__(self, service: StateService, rng: random.Random, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.rng = rng
        self.done = done
        self.got: list[dict[str, Any]] = []
        self.kept: str | None = None  # the cursor it would save somewhere
        self.stops = 0
        self.page_resumes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._consume()
        except BaseException as e:
            self.error = e

    def _consume(self) -> None:
        reads = 0
        while True:
            finished = self.done.is_set()
            limit = self.rng.choice([1, 2, 3, 7, 10, 50, 100, 250, 1000])
            page = changes(self.service, self.kept, limit=limit)
            entries = page["changes"]
            assert len(entries) <= limit
            if not entries:
                if self.kept is not None:
                    assert page["cursor"] == self.kept  # nothing new: the cursor stays put
                if finished:
                    return
                time.sleep(0.005)
                continue
            reads += 1
            if reads % 4 == 0:  # it stops part way through the page
                processed = entries[: self.rng.randrange(len(entries))]
                self.stops += 1
            else:
                processed = entries
            for entry in processed:
                self.got.append(entry)
                self.kept = entry["cursor"]
            if processed is entries and reads % 3 == 0:
                self.kept = page["cursor"]
                self.page_resumes += 1
            if self.rng.random() < 0.2:
                time.sleep(self.rng.uniform(0.001, 0.03))  # away for a while


def test_a_consumer_that_stops_and_resumes_gets_every_change_once_in_order(
    service: StateService, kind: str
) -> None:
    rng = random.Random(23)
    scopes = [f"bulk{i % 5}-{i:02d}" for i in range(50)]
    writer = Writer(service)
    done = threading.Event()
    consumer = Consumer(service, random.Random(2323), done)
    consumer.start()
    try:
        while len(writer.want) < BULK_CHANGES[kind]:
            writer.random_change(rng, scopes, keys=8)
    finally:
        done.set()
        consumer.join(120)
    assert not consumer.is_alive()
    if consumer.error is not None:
        raise consumer.error
    got = consumer.got
    assert_same_changes(got, writer.want, total_order=kind != "redis_cluster")
    assert_versions_in_order(got)
    ids = [e["event_id"] for e in got]
    assert len(set(ids)) == len(ids)
    assert len({e["scope"] for e in got}) == 50
    assert consumer.stops >= 3 and consumer.page_resumes >= 3, (
        consumer.stops,
        consumer.page_resumes,
    )


def test_a_watcher_closed_and_started_again_from_its_cursor_misses_nothing(
    service: StateService,
) -> None:
    writer = Writer(service)
    for i in range(30):
        writer.set("watched", f"k{i % 7}", i)
    seen: list[dict[str, Any]] = []
    cursor = None
    for stop_at in (1, 5, 16, 18, 30):  # mid-page (pages of 5), on a page's end, the last
        with watch(after=cursor, service=service, limit=5, poll_interval_s=0.01) as watcher:
            for change in watcher:
                seen.append(change)
                if len(seen) == stop_at:
                    break
        cursor = watcher.cursor
        assert cursor == seen[-1]["cursor"]
    assert [what(e) for e in seen] == writer.want
    # nothing new: poll() gives nothing and keeps the cursor
    again = watch(after=cursor, service=service)
    assert again.poll() == [] and again.cursor == cursor
    writer.set("watched", "late", 1)
    assert [what(e) for e in again.poll()] == writer.want[-1:]


def test_filters_give_exactly_the_changes_of_a_scope_or_a_prefix(
    service: StateService, kind: str
) -> None:
    rng = random.Random(7)
    scopes = ["fa", "fab", "fabc", "fb", "gx", "f"]
    writer = Writer(service)
    while len(writer.want) < 300:
        writer.random_change(rng, scopes, keys=4)
    everything, _ = read_all(service, limit=1000)
    total = kind != "redis_cluster"
    assert_same_changes(everything, writer.want, total_order=total)
    for scope in scopes:
        mine, cursor = read_all(service, limit=rng.choice([1, 5, 1000]), scope=scope)
        assert [what(e) for e in mine] == [w for w in writer.want if w["scope"] == scope]
        assert changes(service, cursor, scope=scope) == {"changes": [], "cursor": cursor}
        # resuming from one of its entries gives the rest of that scope's
        middle = len(mine) // 2
        rest, _ = read_all(service, mine[middle]["cursor"], limit=7, scope=scope)
        assert rest == mine[middle + 1 :]
    for prefix, wanted in (
        ("fa", {"fa", "fab", "fabc"}),
        ("fab", {"fab", "fabc"}),
        ("f", {"f", "fa", "fab", "fabc", "fb"}),
        ("g", {"gx"}),
    ):
        theirs, _ = read_all(service, limit=rng.choice([2, 10, 1000]), prefix=prefix)
        assert {e["scope"] for e in theirs} == wanted
        assert_same_changes(
            theirs, [w for w in writer.want if w["scope"] in wanted], total_order=total
        )
    none, cursor = read_all(service, prefix="zz")
    assert none == [] and isinstance(cursor, str)
    writer.set("zz-late", "k", 1)
    late, _ = read_all(service, cursor, prefix="zz")
    assert [what(e) for e in late] == writer.want[-1:]


# -- bounded: what was trimmed is COMPACTED, never skipped ----------------------------------


def test_a_cursor_behind_the_trim_is_compacted_and_oldest_reads_what_is_kept(
    open_logged: Callable[..., StateAdapter],
) -> None:
    service = StateService(open_logged(SMALL_LOG))
    writer = Writer(service)
    writer.set("trim", "k", 0)
    page = changes(service, limit=1)
    early = page["changes"][0]["cursor"]
    early_scoped = changes(service, scope="trim", limit=1)["cursor"]
    for i in range(400):  # one scope: on a Cluster, one bucket's log
        writer.set("trim", f"k{i % 10}", i)
    reads: list[tuple[str, dict[str, Any]]] = [(early, {}), (early_scoped, {"scope": "trim"})]
    for after, filters in reads:
        with pytest.raises(Compacted) as raised:
            changes(service, after, **filters)
        assert raised.value.code == "COMPACTED"
        oldest = raised.value.details["oldest"]
        kept, _ = read_all(service, oldest, limit=33, **filters)
        assert kept == read_all(service, None, **filters)[0]  # from oldest: all that is kept
        # what is kept is the newest changes, none missing, the first trimmed
        assert SMALL_LOG.max_entries <= len(kept) < len(writer.want)
        assert [what(e) for e in kept] == writer.want[-len(kept) :]
        # the oldest entry's cursor reads on
        assert changes(service, kept[0]["cursor"], limit=1, **filters)["changes"] == kept[1:2]


def test_a_consumer_behind_a_trimmed_delete_is_told_and_never_skips_it(
    open_logged: Callable[..., StateAdapter],
) -> None:
    service = StateService(open_logged(SMALL_LOG))
    writer = Writer(service)
    writer.set("orders", "victim", {"paid": False})
    writer.set("orders", "other", 1)
    entries, cursor = read_all(service, scope="orders")
    _, seen_cursor = read_all(service)
    assert [e["key"] for e in entries] == ["victim", "other"]
    writer.delete("orders", "victim")  # the consumers are behind this delete
    for i in range(300):  # ... until it is trimmed
        writer.update("orders", "other", [{"set": i}])
    kept, _ = read_all(service)
    assert all(e["key"] != "victim" for e in kept)  # the delete is gone from the log
    assert cursor is not None and seen_cursor is not None
    behind: list[tuple[str, dict[str, Any]]] = [(cursor, {"scope": "orders"}), (seen_cursor, {})]
    for after, filters in behind:
        with pytest.raises(Compacted):
            changes(service, after, limit=1000, **filters)
        with pytest.raises(Compacted):
            changes(service, after, limit=1, **filters)
        with pytest.raises(Compacted):  # a watcher raises it too: it never skips past
            next(watch(after=after, service=service, **filters))
    assert call(service, "state::get", scope="orders", key="victim") is None


def test_a_consumer_that_keeps_up_is_never_compacted(
    open_logged: Callable[..., StateAdapter], kind: str
) -> None:
    service = StateService(open_logged(SMALL_LOG))
    writer = Writer(service)
    rng = random.Random(5)
    got: list[dict[str, Any]] = []
    cursor = None
    while len(writer.want) < 300:
        for _ in range(rng.randint(1, 6)):  # at most 30 changes between two reads
            writer.random_change(rng, ["up", "up2"], keys=6)
        while True:  # read until a page is not full: caught up
            limit = rng.choice([3, 20, 1000])
            page = changes(service, cursor, limit=limit)
            got += page["changes"]
            cursor = page["cursor"]
            if len(page["changes"]) < limit:
                break
    assert_same_changes(got, writer.want, total_order=kind != "redis_cluster")


def test_entries_older_than_max_age_are_trimmed(open_logged: Callable[..., StateAdapter]) -> None:
    service = StateService(open_logged(SHORT_LOG))
    writer = Writer(service)
    for i in range(250):  # Redis trims whole blocks of a stream: several of them
        writer.set("aged", f"k{i % 5}", i)
    first = changes(service, limit=1)["changes"][0]["cursor"]
    time.sleep(1.3)
    writer.set("aged", "fresh", True)
    with pytest.raises(Compacted) as raised:
        changes(service, first)
    kept, _ = read_all(service, raised.value.details["oldest"])
    assert 1 <= len(kept) < len(writer.want)
    assert [what(e) for e in kept] == writer.want[-len(kept) :]


# -- cursors -------------------------------------------------------------------------------------


def test_cursors_are_tamper_evident_and_bound_to_their_filter(service: StateService) -> None:
    for scope in ("ca", "cb", "pa-1", "pa-2"):
        call(service, "state::set", scope=scope, key="k", value=scope)
    call(service, "state::set", scope="ca", key="k2", value=2)
    plain_cursor = changes(service, limit=2)["cursor"]
    scoped = changes(service, scope="ca", limit=1)["cursor"]
    prefixed = changes(service, prefix="pa-", limit=1)["cursor"]
    list_cursor = call(service, "state::list", scope="ca", limit=1)["cursor"]
    assert isinstance(list_cursor, str)

    def refused(after: Any, **filters: Any) -> str:
        with pytest.raises(StateError) as raised:
            service.call("state::changes", {"after": after, **filters})
        assert raised.value.code == "VALIDATION_ERROR", raised.value.message
        return str(raised.value.message)

    middle = len(plain_cursor) // 2
    flipped = "A" if plain_cursor[middle] != "A" else "B"
    tampered = plain_cursor[:middle] + flipped + plain_cursor[middle + 1 :]
    assert "altered" in refused(tampered) or "malformed" in refused(tampered)
    assert "other scopes" in refused(plain_cursor, scope="ca")
    assert "other scopes" in refused(scoped, scope="cb")
    assert "other scopes" in refused(scoped)
    assert "other scopes" in refused(scoped, prefix="ca")
    assert "other scopes" in refused(prefixed, prefix="pa")
    assert "other scopes" in refused(prefixed)
    refused(list_cursor)
    refused(list_cursor, scope="ca")
    refused("not a cursor")
    refused("")
    refused(12)
    # a cursor signed as ours (the key is public) that names no position of this log
    refused(encode_cursor("changes", "", "", "not a position"))
    refused(encode_cursor("changes", "", "", ""))
    # the right filter reads on
    assert [e["key"] for e in changes(service, scoped, scope="ca")["changes"]] == ["k2"]
    assert [e["scope"] for e in changes(service, prefixed, prefix="pa-")["changes"]] == ["pa-2"]


@pytest.mark.parametrize("limit", [0, -1, 1001, "10", 1.5, True])
def test_a_limit_out_of_1_to_1000_is_refused(service: StateService, limit: Any) -> None:
    call(service, "state::set", scope="lim", key="k", value=1)
    with pytest.raises(StateError) as raised:
        service.call("state::changes", {"limit": limit})
    assert raised.value.code == "VALIDATION_ERROR"
    assert "limit" in raised.value.message


def test_limits_1_and_1000_and_other_arguments(service: StateService) -> None:
    for i in range(3):
        call(service, "state::set", scope="lim", key=f"k{i}", value=i)
    assert len(changes(service, limit=1)["changes"]) == 1
    assert len(changes(service, limit=1000)["changes"]) == 3
    assert len(changes(service)["changes"]) == 3  # the default: 100
    for payload in ({"scope": ""}, {"prefix": 5}, {"since": "x"}, {"scope": "a" * 2000}):
        with pytest.raises(StateError) as raised:
            service.call("state::changes", payload)
        assert raised.value.code == "VALIDATION_ERROR", payload


def test_after_the_last_entry_a_read_gives_nothing_and_the_same_cursor(
    service: StateService,
) -> None:
    writer = Writer(service)
    writer.set("end", "a", 1)
    writer.set("other-end", "a", 1)
    every: list[dict[str, Any]] = [{}, {"scope": "end"}, {"prefix": "other"}]
    for filters in every:
        entries, cursor = read_all(service, **filters)
        assert cursor is not None
        assert changes(service, cursor, **filters) == {"changes": [], "cursor": cursor}
        # after the last entry of the filter: nothing (the cursor may move on past the
        # changes of other scopes it looked at), and from there the same cursor
        after_last = changes(service, entries[-1]["cursor"], **filters)
        assert after_last["changes"] == []
        again = changes(service, after_last["cursor"], **filters)
        assert again == {"changes": [], "cursor": after_last["cursor"]}
    _, cursor = read_all(service)
    writer.set("end", "b", 2)
    page = changes(service, cursor)
    assert [what(e) for e in page["changes"]] == writer.want[-1:]
    assert page["cursor"] == page["changes"][0]["cursor"]


def test_after_now_starts_at_the_end(service: StateService) -> None:
    writer = Writer(service)
    writer.set("now-a", "old", 1)
    writer.set("now-b", "old", 1)
    everything = changes(service, "now")
    scoped = changes(service, "now", scope="now-a")
    assert everything["changes"] == [] and scoped["changes"] == []
    watcher = watch(after="now", service=service)
    assert watcher.poll() == []
    writer.set("now-b", "new", 2)
    writer.set("now-a", "new", 2)
    assert [what(e) for e in read_all(service, everything["cursor"])[0]] == writer.want[2:]
    assert [what(e) for e in read_all(service, scoped["cursor"], scope="now-a")[0]] == [
        writer.want[3]
    ]
    assert [what(e) for e in watcher.poll()] == writer.want[2:]
    # "now" on an empty log is its start
    fresh = changes(service, "now", prefix="nothing-yet")
    writer.set("nothing-yet-1", "k", 0)
    assert [
        what(e) for e in changes(service, fresh["cursor"], prefix="nothing-yet")["changes"]
    ] == (writer.want[-1:])


def test_an_empty_log_reads_as_nothing(service: StateService) -> None:
    first = changes(service)
    assert first["changes"] == [] and isinstance(first["cursor"], str)
    call(service, "state::set", scope="empty", key="k", value=1)
    later = changes(service, first["cursor"])
    assert [e["key"] for e in later["changes"]] == ["k"]


# -- restarts --------------------------------------------------------------------------------


def test_the_file_store_keeps_its_log_across_a_restart_and_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "store"

    def open_store() -> tuple[FileKvStore, StateService]:
        store = FileKvStore(file_path=folder, save_interval_ms=20)
        store.open()
        return store, StateService(store)

    store, service = open_store()
    writer = Writer(service)
    rng = random.Random(3)
    for _ in range(4):
        for _ in range(25):
            writer.random_change(rng, ["fs-a", "fs-b"], keys=5)
        time.sleep(0.1)  # saves: the entries saved stay on disk as changes-<n>.log
    call(service, "state::set", scope="fs-a", key="ttl", value="gone soon", ttl_ms=50)
    time.sleep(0.1)
    assert service.sweep_expired()[0] == 1
    for _ in range(20):  # in the journal only
        writer.random_change(rng, ["fs-a", "fs-b"], keys=5)
    assert list(folder.glob("changes-*.log"))
    before, cursor = read_all(service, limit=9)
    assert len(before) == len(writer.want) + 2  # and the ttl key's creation and expiry
    store.close()

    store, service = open_store()
    writer.service = service
    after, again = read_all(service, limit=1000)
    assert after == before and again == cursor  # the same entries, cursors, timestamps
    assert read_all(service, before[39]["cursor"])[0] == before[40:]
    writer.set("fs-a", "after-restart", 1)
    new, cursor = read_all(service, cursor)
    assert [what(e) for e in new] == writer.want[-1:]
    crash(store)  # as kill -9: no save

    store, service = open_store()
    assert read_all(service)[0] == [*before, *new]
    store.close()


def test_the_file_store_trims_its_log_files_and_an_old_cursor_stays_compacted(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    store = FileKvStore(file_path=folder, save_interval_ms=10)
    store.use_change_log(SMALL_LOG)
    store.open()
    service = StateService(store)
    call(service, "state::set", scope="t", key="k", value=0)
    early = changes(service)["cursor"]
    for i in range(600):  # entries 2 to 601
        call(service, "state::set", scope="t", key="k", value=i)
        if i % 100 == 0:
            time.sleep(0.05)  # saves: segments kept as changes-<n>.log, then trimmed
    store.close()  # a last save
    # what is kept: entries 552 to 601; a file that holds none of them is deleted
    files = sorted(folder.glob("changes-*.log"))
    assert files
    for path in files:
        numbers = [int(n) for n in re.findall(rb'"lsn":(\d+)', path.read_bytes())]
        assert max(numbers) >= 552, (path.name, numbers)
    store = FileKvStore(file_path=folder, save_interval_ms=10)
    store.use_change_log(SMALL_LOG)
    store.open()
    service = StateService(store)
    with pytest.raises(Compacted) as raised:
        changes(service, early)
    kept, _ = read_all(service, raised.value.details["oldest"])
    assert len(kept) == SMALL_LOG.max_entries
    assert [e["new_value"] for e in kept] == list(range(550, 600))
    store.close()


def test_an_in_memory_store_that_restarts_makes_an_old_cursor_compacted() -> None:
    service = StateService(KvStore())
    call(service, "state::set", scope="m", key="k", value=1)
    _, cursor = read_all(service)
    restarted = StateService(KvStore())  # the worker restarted: its memory is new
    call(restarted, "state::set", scope="m", key="k", value=2)
    with pytest.raises(Compacted) as raised:
        changes(restarted, cursor)
    kept, _ = read_all(restarted, raised.value.details["oldest"])
    assert [(e["event_type"], e["new_value"]) for e in kept] == [("state:created", 2)]


def test_a_file_store_opened_with_the_log_off_starts_a_new_log(tmp_path: Path) -> None:
    """The changes made while the log was off are not in it: a cursor from before is
    COMPACTED, never read on past them."""
    folder = tmp_path / "store"

    def opened(log: ChangeLogSettings | None) -> tuple[FileKvStore, StateService]:
        store = FileKvStore(file_path=folder, save_interval_ms=20)
        store.use_change_log(log)
        store.open()
        return store, StateService(store)

    store, service = opened(ChangeLogSettings())
    call(service, "state::set", scope="gap", key="a", value=1)
    _, before = read_all(service)
    store.close()
    store, service = opened(None)
    call(service, "state::set", scope="gap", key="b", value=2)  # not logged
    store.close()
    store, service = opened(ChangeLogSettings())
    call(service, "state::set", scope="gap", key="c", value=3)
    with pytest.raises(Compacted) as raised:
        changes(service, before)
    kept, _ = read_all(service, raised.value.details["oldest"])
    assert [(e["key"], e["new_value"]) for e in kept] == [("c", 3)]
    store.close()


REDIS_KINDS = ["redis", "redis_sentinel", "redis_cluster"]


@pytest.fixture(params=REDIS_KINDS)
def two_processes(request: pytest.FixtureRequest) -> Iterator[tuple[StateService, StateService]]:
    """Two RedisAdapters on one store (two worker processes): one with the log on (the
    reader's), one with it off."""
    logged = build(request.param, request)
    logged.open()
    assert isinstance(logged, RedisAdapter)
    unlogged = RedisAdapter(logged.settings)
    unlogged.use_change_log(None)
    unlogged.open()
    yield StateService(logged), StateService(unlogged)
    unlogged.close()
    logged.close()


def test_a_redis_writer_with_the_log_off_makes_older_cursors_compacted(
    two_processes: tuple[StateService, StateService],
) -> None:
    reader, off = two_processes
    call(reader, "state::set", scope="gap", key="a", value=1)
    _, before = read_all(reader)
    _, before_scoped = read_all(reader, scope="gap")
    call(off, "state::set", scope="gap", key="b", value=2)  # not logged
    call(reader, "state::set", scope="gap", key="c", value=3)
    with pytest.raises(Compacted) as raised:
        changes(reader, before)
    kept, _ = read_all(reader, raised.value.details["oldest"])
    assert [(e["key"], e["new_value"]) for e in kept] == [("c", 3)]
    with pytest.raises(Compacted):  # the same with a filter
        changes(reader, before_scoped, scope="gap")


def test_a_redis_writer_with_the_log_off_is_never_read_past_while_it_writes(
    two_processes: tuple[StateService, StateService],
) -> None:
    """During a rolling restart that turns the log on (or off), processes with the log off
    keep writing next to those with it on: a reader whose cursor was given after the first
    unlogged change must still be told of the next ones, not read on past them."""
    reader, off = two_processes
    call(off, "state::set", scope="gap", key="a", value=1)  # not logged: the gap begins
    call(reader, "state::set", scope="gap", key="b", value=2)
    seen, cursor = read_all(reader)
    assert [e["key"] for e in seen] == ["b"]
    call(off, "state::set", scope="gap", key="a", value=3)  # not logged either
    call(reader, "state::set", scope="gap", key="c", value=4)
    with pytest.raises(Compacted):
        changes(reader, cursor)


# -- off -------------------------------------------------------------------------------------


def test_with_the_log_off_writes_work_and_changes_is_a_config_error(
    open_logged: Callable[..., StateAdapter],
) -> None:
    adapter = open_logged(None)
    assert adapter.change_log is None
    service = StateService(adapter)
    writer = Writer(service)
    writer.set("off", "a", 1)
    writer.update("off", "a", [{"set": 2}])
    writer.batch("off", [{"op": "set", "key": "b", "value": 3}, {"op": "delete", "key": "a"}])
    writer.delete("off", "b")
    assert len(writer.want) == 5
    assert call(service, "state::list", scope="off") == []
    with pytest.raises(StateError) as raised:
        changes(service)
    assert raised.value.code == "CONFIG_ERROR"
    assert "change_log" in raised.value.message
