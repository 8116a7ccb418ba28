"""state::batch, state::get_many and pages through real workers, on the KvStore and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError
from helpers import Deployment, RedisServer, own_db, plain, redis_state_yaml
from test_triggers import SENTINEL, Recorded

from state_tasks import (
    BatchDeleteOperation,
    BatchSetOperation,
    BatchUpdateOperation,
    IncrementOp,
    StateError,
    batch_json,
    ops_json,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=["kv", "redis"])
def triggered(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: Any
) -> Iterator[tuple[Deployment, Recorded]]:
    """One worker (one thread or child: tasks run in queue order) loading the test handlers."""
    state_yaml = None
    if request.param == "redis":
        state_yaml = redis_state_yaml(redis_server.url(own_db()), "batch")
    deployment = Deployment(redis_server, tmp_path_factory.mktemp(request.param), state_yaml)
    record_url = redis_server.url(own_db())
    deployment.worker(
        "--concurrency", "1", includes=("trigger_handlers",), RECORD_REDIS_URL=record_url
    )
    recorded = Recorded(record_url)
    yield deployment, recorded
    deployment.close()


@pytest.fixture
def setup(triggered: tuple[Deployment, Recorded]) -> tuple[Deployment, Recorded]:
    triggered[1].clear()
    return triggered


def test_a_batch_through_a_worker_fires_one_event_per_change(
    setup: tuple[Deployment, Recorded],
) -> None:
    deployment, recorded = setup
    scope = unique("batch")
    handle = deployment.client.iii.register_trigger(
        {"type": "state", "function_id": "test::onScope", "config": {"scope": scope}}
    )
    try:
        deployment.call("state::set", scope=scope, key="old", value="x")
        result = deployment.client.iii.trigger(
            {
                "function_id": "state::batch",
                "payload": {
                    "scope": scope,
                    "operations": batch_json(
                        BatchSetOperation(key="a", value={"n": 1}),
                        BatchUpdateOperation(key="a", ops=ops_json(IncrementOp(field="n"))),
                        BatchDeleteOperation(key="old"),
                        BatchDeleteOperation(key="never"),
                    ),
                },
            }
        )
        assert plain(result) == {
            "results": [
                {"old_value": None, "new_value": {"n": 1}},
                {"old_value": {"n": 1}, "new_value": {"n": 2}},
                "x",
                None,
            ]
        }
        # A failing batch after it fires nothing and writes nothing
        with pytest.raises(StateError) as info:
            deployment.call(
                "state::batch",
                scope=scope,
                operations=[
                    {"op": "set", "key": "ghost", "value": 1},
                    {"op": "update", "key": "a", "ops": [{"append": {"field": "n", "value": 1}}]},
                ],
            )
        assert info.value.code == "UPDATE_OP_ERROR"
        assert "operation 1 (update of key 'a')" in info.value.message
        deployment.call("state::set", scope=scope, key=SENTINEL, value=0)
        events = recorded.wait_for_sentinel("scope")
    finally:
        handle.unregister()
    changes = [(e["event_type"], e["key"]) for e in events]
    assert changes == [
        ("state:created", "old"),
        ("state:created", "a"),
        ("state:updated", "a"),
        ("state:deleted", "old"),
    ]
    assert len({e["event_id"] for e in events}) == 4
    assert deployment.call("state::get_many", scope=scope, keys=["a", "ghost", "old"]) == [
        {"n": 2},
        None,
        None,
    ]


def test_a_redelivered_batch_applies_once(setup: tuple[Deployment, Recorded]) -> None:
    deployment, recorded = setup
    scope = unique("redelivered")
    handle = deployment.client.iii.register_trigger(
        {"type": "state", "function_id": "test::onScope", "config": {"scope": scope}}
    )
    task_id = str(uuid.uuid4())
    kwargs = {
        "scope": scope,
        "operations": [{"op": "update", "key": "c", "ops": [{"increment": {"field": "n"}}]}] * 3,
    }
    try:
        # Given a batch applied by a task, and the same task delivered again (same task id:
        # what Celery does when a worker dies before acknowledging it)
        first = deployment.client.app.send_task("state::batch", kwargs=kwargs, task_id=task_id)
        first_result = first.get(timeout=20)
        assert first_result["results"][-1]["new_value"] == {"n": 3}
        first.forget()
        again = deployment.client.app.send_task("state::batch", kwargs=kwargs, task_id=task_id)
        try:
            repeat = again.get(timeout=20)
        except CeleryTimeoutError:  # pragma: no cover - a clearer failure than a timeout
            pytest.fail("the repeated batch did not answer")
        deployment.call("state::set", scope=scope, key=SENTINEL, value=0)
        events = recorded.wait_for_sentinel("scope")
    finally:
        handle.unregister()
    # Then the count moved once, and the repeat answered as a repeat
    assert deployment.call("state::get", scope=scope, key="c") == {"n": 3}
    # (whole record: the first result again; settled: the replayed answer)
    assert repeat == first_result or repeat["replayed"] is True
    event_ids = sorted({e["event_id"] for e in events})
    assert event_ids == [f"{task_id}:{i}" for i in range(3)]


def test_pages_and_group_pages_through_a_worker(setup: tuple[Deployment, Recorded]) -> None:
    deployment, _ = setup
    scope = unique("paged")
    keys = [f"item:{i:04d}" for i in range(1500)]
    for start in range(0, len(keys), 1000):
        deployment.call(
            "state::batch",
            scope=scope,
            operations=[{"op": "set", "key": k, "value": k} for k in keys[start : start + 1000]],
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = deployment.call(
            "state::list",
            scope=scope,
            limit=400,
            prefix="item:",
            with_keys=True,
            **({"cursor": cursor} if cursor else {}),
        )
        seen += [item["key"] for item in page["items"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == keys
    assert len(deployment.call("state::list", scope=scope)) == 1500  # bare list: unchanged
    groups = deployment.call("state::list_groups", prefix=scope, with_counts=True)
    assert groups == {"items": [{"scope": scope, "count": 1500}], "cursor": None}
    with pytest.raises(StateError, match="belongs to another scope"):
        deployment.call("state::list", scope="other", limit=10, cursor=page_cursor(deployment))


def page_cursor(deployment: Deployment) -> str:
    scope = unique("cursor")
    deployment.call(
        "state::batch",
        scope=scope,
        operations=[{"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "b", "value": 2}],
    )
    cursor: str = deployment.call("state::list", scope=scope, limit=1)["cursor"]
    return cursor
