"""The command line's failures that are not the broker's: each says what it is."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from test_cli import run


def test_json_nested_too_deeply_is_a_usage_error_not_an_unreachable_broker(
    kv_deployment: Any,
) -> None:
    done = run(kv_deployment, "set", "s", "k", "[" * 100_000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("state-tasks: JSON is nested too deeply"), done.stderr
    assert "broker" not in done.stderr and "recursion" not in done.stderr
    done = run(kv_deployment, "update", "s", "k", "[" * 100_000)
    assert done.returncode == 2 and "OPS_JSON is nested too deeply" in done.stderr


def test_the_console_defaults_need_no_console_extra() -> None:
    # starlette and uvicorn made unimportable: the CLI still loads and shows its defaults
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from state_tasks import console\n"
        "from state_tasks.cli import build_parser\n"
        "args = build_parser().parse_args(['console'])\n"
        "assert (args.host, args.port, args.call_timeout) == "
        "(console.DEFAULT_HOST, console.DEFAULT_PORT, console.DEFAULT_CALL_TIMEOUT_S), args\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
