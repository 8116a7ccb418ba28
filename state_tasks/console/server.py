"""Start the console: the gateway, the live feed, the workers' events, the guard, and
uvicorn serving them, over HTTPS with ``certfile`` and ``keyfile``.

Called by ``state-tasks console``. Everything it prints or logs goes through
:class:`RedactingFilter`, so the broker's and the result backend's passwords never show.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import sys
from typing import Any

import uvicorn

from state_tasks.adapters.base import DEFAULT_MAX_VALUE_BYTES
from state_tasks.console import DEFAULT_CALL_TIMEOUT_S, DEFAULT_HOST, DEFAULT_PORT
from state_tasks.console.app import create_console, max_body_bytes
from state_tasks.console.changes import ChangeFeed, CursorFile
from state_tasks.console.gateway import StateGateway
from state_tasks.console.guard import (
    UNAUTHENTICATED_BODY_MAX_BYTES,
    ConsoleGuard,
    is_loopback,
    new_token,
)
from state_tasks.console.workers import WorkerWatch
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


def check_certificate(certfile: str, keyfile: str) -> str | None:
    """Why the certificate and key cannot serve HTTPS (``None``: they can)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        return f"cannot use --certfile {certfile} with --keyfile {keyfile}: {e}"
    return None


def serve(
    facade: III,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_writes: bool = False,
    token: str | None = None,
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    certfile: str | None = None,
    keyfile: str | None = None,
    behind_tls_proxy: bool = False,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> int:
    """Serve the console until interrupted; return the exit code.

    ``certfile``/``keyfile``: serve HTTPS (PEM files; the key may sit in the certificate
    file). ``behind_tls_proxy``: a reverse proxy terminates TLS in front of it (cookies
    ``Secure``, a token required). ``max_value_bytes``: the deployment's largest value
    (``max_value_bytes`` in state.yaml), which sets the body cap of a signed-in request.
    """
    if certfile is not None and (problem := check_certificate(certfile, keyfile or certfile)):
        sys.stderr.write(f"state-tasks: {problem}\n")
        return 2
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    made_token = token is None and (behind_tls_proxy or not is_loopback(host))
    if made_token:
        token = new_token()
    guard = ConsoleGuard(
        host, port, token=token, allow_writes=allow_writes, behind_tls_proxy=behind_tls_proxy
    )
    gateway = StateGateway(facade, timeout_s=call_timeout_s)
    _log_to_stderr(gateway.redact)
    cursor_file = CursorFile.for_deployment(gateway.where())
    feed = ChangeFeed(
        functools.partial(gateway.call_blocking, "state::changes"), cursor_file=cursor_file
    )
    workers = WorkerWatch(gateway.facade.app, redact=gateway.redact)
    app = create_console(gateway, feed, guard, workers, max_value_bytes=max_value_bytes)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # a login link's one-time code must not land in a log
        timeout_graceful_shutdown=2,
        lifespan="on",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = uvicorn.Server(config)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{'https' if certfile else 'http'}://{shown_host}:{port}"
    lines = [
        f"state-tasks console on {url}",
        f"  broker: {gateway.where()}",
        f"  live feed: the change log, read on from the position kept in {cursor_file.path}",
        f"  request bodies: at most {max_body_bytes(max_value_bytes):,} bytes signed in, "
        f"{UNAUTHENTICATED_BODY_MAX_BYTES:,} without the token",
    ]
    if behind_tls_proxy:
        lines.append("  behind a TLS proxy: cookies Secure, the page's origin https://<Host>")
    lines.append(
        "  writes: allowed (same-origin only)"
        if allow_writes
        else "  writes: off (start with --allow-writes to edit)"
    )
    if token is not None:
        link = "https://<the proxy's address>" if behind_tls_proxy else url
        lines.append(f"  sign in once with: {link}/login?code={guard.login_code()}")
        if made_token:
            lines.append(f"  token (Authorization: Bearer ...): {token}")
    print("\n".join(lines), flush=True)
    feed.start()
    workers.start()
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits when it cannot bind
        sys.stderr.write(f"state-tasks: cannot listen on {host}:{port} ({e})\n")
        return 2
    finally:
        feed.stop()
        workers.stop()
    return 0 if server.started else 2
