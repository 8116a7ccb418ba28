"""The CLI's --if-version, --ttl-ms and get --with-version, through a real worker."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from test_cli import run


def test_versions_compare_and_set_and_ttl_from_the_command_line(kv_deployment: Any) -> None:
    scope = f"cli-v-{uuid.uuid4().hex[:6]}"
    created = run(kv_deployment, "set", scope, "k", '{"n": 1}', "--if-version", "0")
    assert created.returncode == 0, created.stderr
    version = json.loads(created.stdout)["version"]
    shown = json.loads(run(kv_deployment, "get", scope, "k", "--with-version").stdout)
    assert shown == {"value": {"n": 1}, "version": version, "expires_in_ms": None}
    # A stale version: exit 1, one line naming both versions, nothing written
    stale = run(kv_deployment, "update", scope, "k", '[{"set": 2}]', "--if-version", "0")
    assert stale.returncode == 1
    assert stale.stderr.startswith("state-tasks: VERSION_CONFLICT: ")
    assert f"version {version}" in stale.stderr and "Traceback" not in stale.stderr
    updated = run(kv_deployment, "update", scope, "k", '[{"set": 2}]', "--if-version", str(version))
    assert json.loads(updated.stdout)["version"] > version
    # A ttl: hidden once due; a bad one is a usage or validation error
    run(kv_deployment, "set", scope, "short", "1", "--ttl-ms", "4000")
    left = json.loads(run(kv_deployment, "get", scope, "short", "--with-version").stdout)
    assert left["value"] == 1 and 0 < left["expires_in_ms"] <= 4000
    time.sleep(left["expires_in_ms"] / 1000 + 0.2)
    assert json.loads(run(kv_deployment, "get", scope, "short").stdout) is None
    bad = run(kv_deployment, "set", scope, "k", "1", "--ttl-ms", "0")
    assert bad.returncode == 1 and "VALIDATION_ERROR" in bad.stderr and "ttl_ms" in bad.stderr
    assert run(kv_deployment, "set", scope, "k", "1", "--ttl-ms", "1.5").returncode == 2
    deleted = run(kv_deployment, "delete", scope, "k", "--if-version", "1")
    assert deleted.returncode == 1 and "VERSION_CONFLICT" in deleted.stderr
