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


def test_json_deeper_than_workers_accept_is_refused_before_it_is_sent(kv_deployment: Any) -> None:
    # 300 levels read fine, but the worker would refuse the message (256 levels at most,
    # two of them the message's own) and the CLI would wait for an answer that never comes
    done = run(kv_deployment, "set", "s", "k", "[" * 300 + "]" * 300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "state-tasks: JSON is nested too deeply to send: deeper than 254 levels, and workers "
        "refuse a message nested deeper than 256 (state_tasks.security.DEFAULT_MAX_JSON_DEPTH)\n"
    )
    done = run(kv_deployment, "batch", "s", "[" * 255 + "]" * 255)
    assert done.returncode == 2 and "OPERATIONS_JSON is nested too deeply" in done.stderr
    # 254 levels reach the worker, which answers (values nest at most 200 levels: exit 1)
    done = run(kv_deployment, "set", "s", "k", "[" * 254 + "]" * 254)
    assert done.returncode == 1 and "VALIDATION_ERROR" in done.stderr, done.stderr


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
