"""The CLI's lock, extend and unlock, through a real worker."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from test_cli import run


def test_lock_extend_unlock_and_wait_from_the_command_line(kv_deployment: Any) -> None:
    scope = f"cli-lock-{uuid.uuid4().hex[:6]}"
    taken = run(kv_deployment, "lock", scope, "job", "--ttl-ms", "30000", "--owner", "a")
    assert taken.returncode == 0, taken.stderr
    first = json.loads(taken.stdout)
    token = first["token"]
    assert first == {"acquired": True, "token": token, "owner": "a"} | {
        "expires_in_ms": first["expires_in_ms"]
    }
    assert 25_000 < first["expires_in_ms"] <= 30_000  # the time left, read after taking it
    # Held by another: exit 1, the holder printed (no error line)
    held = run(kv_deployment, "lock", scope, "job", "--ttl-ms", "1000", "--owner", "b")
    assert held.returncode == 1 and held.stderr == ""
    assert json.loads(held.stdout)["acquired"] is False
    assert json.loads(held.stdout)["owner"] == "a"
    # A wrong token does not release it: the right one still extends it (to 2.5 s)
    wrong = run(kv_deployment, "unlock", scope, "job", "--token", str(token + 1000))
    assert wrong.returncode == 1 and json.loads(wrong.stdout) == {"released": False}
    extended = run(kv_deployment, "extend", scope, "job", "--token", str(token), "--ttl-ms", "2500")
    assert extended.returncode == 0 and json.loads(extended.stdout) == {
        "extended": True,
        "expires_in_ms": 2500,
    }
    expires = time.monotonic() + 2.5
    # --wait: tries again until a's lock expired; the default owner is cli:<hostname>:<pid>:<random>
    waited = run(kv_deployment, "lock", scope, "job", "--ttl-ms", "30000", "--wait", "10")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    second = json.loads(waited.stdout)
    assert second["acquired"] and second["token"] > token and second["owner"].startswith("cli:")
    assert time.monotonic() >= expires
    released = run(kv_deployment, "unlock", scope, "job", "--token", str(second["token"]))
    assert released.returncode == 0 and json.loads(released.stdout) == {"released": True}
    # Bad input: argparse's usage error (2), or the service's VALIDATION_ERROR (1)
    assert run(kv_deployment, "unlock", scope, "job", "--token", "x").returncode == 2
    zero = run(kv_deployment, "unlock", scope, "job", "--token", "0")
    assert zero.returncode == 1 and zero.stderr.startswith("state-tasks: VALIDATION_ERROR: ")
