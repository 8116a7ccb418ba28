"""Start the console: the gateway, the live feed, the guard, and uvicorn serving them.

Called by ``state-tasks console``. Everything it prints or logs goes through
:class:`RedactingFilter`, so the broker's and the result backend's passwords never show.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

import uvicorn

from state_tasks.console import DEFAULT_CALL_TIMEOUT_S, DEFAULT_HOST, DEFAULT_PORT
from state_tasks.console.app import create_console
from state_tasks.console.changes import ChangeFeed, CursorFile
from state_tasks.console.gateway import StateGateway
from state_tasks.console.guard import ConsoleGuard, is_loopback, new_token
from state_tasks.facade import III

#: Where a token can come from besides ``--token`` (kept out of the process list).
TOKEN_VARIABLE = "STATE_TASKS_CONSOLE_TOKEN"


class RedactingFilter(logging.Filter):
    """Replaces the password in every log line that names the broker or the result backend."""

    def __init__(self, redact: Any) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _log_to_stderr(redact: Any) -> None:
    logging.disable(logging.NOTSET)  # the CLI silences logging for its one-shot commands
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def serve(
    facade: III,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_writes: bool = False,
    token: str | None = None,
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
) -> int:
    """Serve the console until interrupted; return the exit code."""
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    made_token = token is None and not is_loopback(host)
    if made_token:
        token = new_token()
    guard = ConsoleGuard(host, port, token=token, allow_writes=allow_writes)
    gateway = StateGateway(facade, timeout_s=call_timeout_s)
    _log_to_stderr(gateway.redact)
    cursor_file = CursorFile.for_deployment(gateway.where())
    feed = ChangeFeed(
        functools.partial(gateway.call_blocking, "state::changes"), cursor_file=cursor_file
    )
    app = create_console(gateway, feed, guard)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # a login link's one-time code must not land in a log
        timeout_graceful_shutdown=2,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    lines = [
        f"state-tasks console on {url}",
        f"  broker: {gateway.where()}",
        f"  live feed: the change log, read on from the position kept in {cursor_file.path}",
    ]
    lines.append(
        "  writes: allowed (same-origin only)"
        if allow_writes
        else "  writes: off (start with --allow-writes to edit)"
    )
    if token is not None:
        lines.append(f"  sign in once with: {url}/login?code={guard.login_code()}")
        if made_token:
            lines.append(f"  token (Authorization: Bearer ...): {token}")
    print("\n".join(lines), flush=True)
    feed.start()
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits when it cannot bind
        sys.stderr.write(f"state-tasks: cannot listen on {host}:{port} ({e})\n")
        return 2
    finally:
        feed.stop()
    return 0 if server.started else 2
