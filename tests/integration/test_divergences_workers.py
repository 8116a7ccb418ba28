"""Divergences 1, 2 and 5 of issue 21 through real workers (the rest, and the same against
every adapter in one process: tests/conformance/test_divergences.py). A redelivery is the
same task sent again under the same task id, which is what Celery does when a worker dies
before acknowledging it.

1. A redelivered ``update`` or ``batch`` is answered from its operation record, whatever
   the key holds now.
2. A redelivered delete of an absent key deletes nothing set since, even after the file
   store's worker was killed -9.
5. A stale ``if_version`` is a ``VERSION_CONFLICT`` even when the ops no longer fit the
   value (and the operation record comes before both).
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import Deployment
from test_file_store_worker import file_yaml

from state_tasks import StateError

INCREMENT = [{"increment": {"field": "n", "by": 1}}]
#: Makes a value too big for a Redis worker to remember it (RECENT_VALUE_MAX_CHARS, 16 KB):
#: whichever worker process runs a redelivery reads what the key holds now, the string.
PAD = "x" * 20_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def delivered(deployment: Deployment, function_id: str, task_id: str, **kwargs: Any) -> Any:
    """Run a task under ``task_id`` and return its result, which is then forgotten (so that
    a delivery under the same id again waits for its own result)."""
    result = deployment.client.app.send_task(function_id, kwargs=kwargs, task_id=task_id)
    try:
        return result.get(timeout=20, interval=0.02)
    finally:
        result.forget()


def settled_update(version: int) -> dict[str, Any]:
    """What a repeat answers once the first delivery's record is settled."""
    return {"old_value": None, "new_value": None, "version": version, "replayed": True}


# -- 1. a redelivered update or batch answers from its record ---------------------------------


def test_a_redelivered_update_answers_from_its_record_whatever_the_key_holds(
    deployment: Deployment,
) -> None:
    # Given an update applied by a task, then the key set to a string by another client
    scope, task_id = unique("redelivered-update"), str(uuid.uuid4())
    deployment.call("state::set", scope=scope, key="c", value={"n": 1, "pad": PAD})
    first = delivered(deployment, "state::update", task_id, scope=scope, key="c", ops=INCREMENT)
    deployment.call("state::set", scope=scope, key="c", value="oops")
    # When the task is delivered again (same task id)
    again = delivered(deployment, "state::update", task_id, scope=scope, key="c", ops=INCREMENT)
    # Then it answers from its record (whole: the first answer; settled: the replayed
    # one), not with an op error, and the string stays
    assert first["old_value"] == {"n": 1, "pad": PAD}
    assert first["new_value"] == {"n": 2, "pad": PAD}
    assert again in (first, settled_update(first["version"]))
    assert deployment.call("state::get", scope=scope, key="c") == "oops"


def test_a_redelivered_batch_answers_from_its_record_whatever_the_key_holds(
    deployment: Deployment,
) -> None:
    scope, task_id = unique("redelivered-batch"), str(uuid.uuid4())
    operations = [
        {"op": "set", "key": "a", "value": 1},
        {"op": "update", "key": "c", "ops": INCREMENT},
    ]
    deployment.call("state::set", scope=scope, key="c", value={"n": 1, "pad": PAD})
    first = delivered(deployment, "state::batch", task_id, scope=scope, operations=operations)
    deployment.call("state::set", scope=scope, key="c", value="oops")
    again = delivered(deployment, "state::batch", task_id, scope=scope, operations=operations)
    set_version, update_version = (result["version"] for result in first["results"])
    settled = {
        "results": [
            {"old_value": None, "new_value": 1, "version": set_version},
            {"old_value": None, "new_value": None, "version": update_version},
        ],
        "replayed": True,
    }
    assert first["results"][1]["new_value"] == {"n": 2, "pad": PAD}
    assert again in (first, settled)
    assert deployment.call("state::get_many", scope=scope, keys=["a", "c"]) == [1, "oops"]


# -- 2. a redelivered delete of an absent key, after a kill -9 of the file store's worker ------


def test_a_redelivered_delete_of_an_absent_key_deletes_nothing_set_after_a_kill_9(
    deployment_factory: Any, tmp_path: Path
) -> None:
    # Given a worker on the file store that deleted an absent key, and wrote nothing after
    deployment = deployment_factory(file_yaml(tmp_path / "store"))
    worker = deployment.worker()
    task_id = str(uuid.uuid4())
    assert delivered(deployment, "state::delete", task_id, scope="s", key="k") is None
    # When it is killed -9, a new worker takes the folder over, a client sets the key,
    # and the delete is delivered again (same task id)
    worker.stop(signal.SIGKILL)
    deployment.worker()
    deployment.call("state::set", scope="s", key="k", value=1)
    assert delivered(deployment, "state::delete", task_id, scope="s", key="k") is None
    # Then the key keeps the value set after the delete
    assert deployment.call("state::get", scope="s", key="k") == 1


# -- 5. a stale if_version is a conflict, whatever the ops would do ----------------------------


def test_a_stale_if_version_is_a_version_conflict_even_when_the_ops_no_longer_fit(
    deployment: Deployment,
) -> None:
    # Given a key read at one version, then set to a string by another client
    scope = unique("stale")
    read = deployment.call("state::set", scope=scope, key="c", value={"n": 1})["version"]
    current = deployment.call("state::set", scope=scope, key="c", value="oops")["version"]
    # When an update of a field is sent with the version read, alone or in a batch
    with pytest.raises(StateError) as single:
        deployment.call("state::update", scope=scope, key="c", ops=INCREMENT, if_version=read)
    operations = [{"op": "update", "key": "c", "ops": INCREMENT, "if_version": read}]
    with pytest.raises(StateError) as batched:
        deployment.call("state::batch", scope=scope, operations=operations)
    # Then both answer the conflict, naming both versions (and the batch's operation)
    assert single.value.code == "VERSION_CONFLICT"
    assert single.value.details == {"expected": read, "current": current}
    assert batched.value.code == "VERSION_CONFLICT"
    assert batched.value.details == {"expected": read, "current": current, "operation_index": 0}
    assert deployment.call("state::get", scope=scope, key="c") == "oops"


def test_a_redelivered_update_with_if_version_answers_from_its_record_before_checking_it(
    deployment: Deployment,
) -> None:
    # Given an update applied by a task at the version it named (which it moved on), then
    # the key set to a string by another client
    scope, task_id = unique("record-first"), str(uuid.uuid4())
    value = {"n": 1, "pad": PAD}
    read = deployment.call("state::set", scope=scope, key="c", value=value)["version"]
    conditional = {"scope": scope, "key": "c", "ops": INCREMENT, "if_version": read}
    first = delivered(deployment, "state::update", task_id, **conditional)
    deployment.call("state::set", scope=scope, key="c", value="oops")
    # When the task is delivered again, Then its record answers: no conflict, no op error
    again = delivered(deployment, "state::update", task_id, **conditional)
    assert again in (first, settled_update(first["version"]))
    assert deployment.call("state::get", scope=scope, key="c") == "oops"
