"""The command line's batch, get-many and paging options, against a real worker."""

from __future__ import annotations

import json
import uuid
from typing import Any

from helpers import plain
from test_cli import run


def test_batch_get_many_and_pages(kv_deployment: Any) -> None:
    scope = f"cli-batch-{uuid.uuid4().hex[:6]}"
    operations = [{"op": "set", "key": f"k{i}", "value": i} for i in range(5)]
    operations.append({"op": "update", "key": "k0", "ops": [{"increment": {"field": "n"}}]})
    done = run(kv_deployment, "batch", scope, json.dumps(operations))
    assert done.returncode == 1 and "operation 5 (update of key 'k0')" in done.stderr
    done = run(kv_deployment, "batch", scope, json.dumps(operations[:5]))
    assert done.returncode == 0, done.stderr
    assert plain(json.loads(done.stdout)["results"][4]) == {"old_value": None, "new_value": 4}
    got = run(kv_deployment, "get-many", scope, "k4", "nope", "k0")
    assert json.loads(got.stdout) == [4, None, 0]
    first = json.loads(run(kv_deployment, "list", scope, "--limit", "3", "--keys").stdout)
    assert [item["key"] for item in first["items"]] == ["k0", "k1", "k2"]
    rest = run(kv_deployment, "list", scope, "--limit", "3", "--cursor", first["cursor"])
    assert json.loads(rest.stdout) == {"items": [3, 4], "cursor": None}
    assert json.loads(run(kv_deployment, "list", scope, "--prefix", "k4").stdout) == {
        "items": [4],
        "cursor": None,
    }
    groups = json.loads(run(kv_deployment, "groups", "--prefix", scope, "--counts").stdout)
    assert groups == {"items": [{"scope": scope, "count": 5}], "cursor": None}


def test_bad_batch_and_paging_input_exit_with_one_line(kv_deployment: Any) -> None:
    scope = f"cli-bad-{uuid.uuid4().hex[:6]}"
    empty = run(kv_deployment, "batch", scope, "[]")
    assert empty.returncode == 1
    assert empty.stderr.startswith("state-tasks: VALIDATION_ERROR: state::batch: 'operations'")
    assert run(kv_deployment, "batch", scope, "[{").returncode == 2
    zero = run(kv_deployment, "list", scope, "--limit", "0")
    assert zero.returncode == 1 and "'limit'" in zero.stderr
    forged = run(kv_deployment, "list", scope, "--cursor", "Zm9yZ2Vk")
    assert forged.returncode == 1 and "cursor" in forged.stderr
    assert len(forged.stderr.strip().splitlines()) == 1
