"""``state-tasks``: the state functions and triggers from a shell, through the configured broker.

::

    state-tasks set users u1 '{"name": "Alice"}'
    state-tasks set sessions s1 '{"user": "u1"}' --ttl-ms 60000    # expires in a minute
    state-tasks get users u1
    state-tasks get users u1 --with-version                    # {"value", "version", ...}
    state-tasks set users u1 '{"name": "Bob"}' --if-version 7  # only if still at version 7
    state-tasks update counters visits '[{"increment": {"field": "n", "by": 1}}]'
    state-tasks delete users u1
    state-tasks list users
    state-tasks list users --limit 100 --prefix user: --keys     # one page; then --cursor C
    state-tasks batch users '[{"op": "set", "key": "u1", "value": 1}]'
    state-tasks get-many users u1 u2
    state-tasks groups
    state-tasks changes --scope users --limit 10               # one page of the change log
    state-tasks watch --prefix user                            # every change, live, as JSON lines
    state-tasks lock jobs nightly --ttl-ms 30000 --wait 10     # {"acquired", "token", ...}
    state-tasks extend jobs nightly --token 12 --ttl-ms 30000
    state-tasks unlock jobs nightly --token 12
    state-tasks triggers list
    state-tasks triggers add users::onEmail --scope users --when '{"changed": ["email"]}'
    state-tasks triggers remove trg_...
    state-tasks console --allow-writes                         # the state in the browser
    state-tasks redis install-functions --url redis://admin:...@host:6379/0  # use_functions

It reads the same environment as a worker (``CELERY_BROKER_URL``, ``REDIS_URL``, ...).
Output is JSON (indented on a terminal). Exit codes: 0 success, 1 a ``StateError``
from the state functions, or a lock not taken, released or extended (its answer printed),
2 bad usage, bad JSON or a bad configuration (CONFIG_ERROR), 3 the broker, the result
backend or the workers could not be reached in time (``--timeout`` bounds the whole call,
each attempt of ``lock --wait``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from state_tasks.broker_errors import UNREACHABLE_ERRORS, describe_unreachable, where
from state_tasks.console import DEFAULT_CALL_TIMEOUT_S, DEFAULT_HOST, DEFAULT_PORT
from state_tasks.core.errors import CallTimeout, ConfigError, StateError
from state_tasks.core.ops import deeper_than
from state_tasks.facade import III
from state_tasks.security import DEFAULT_MAX_JSON_DEPTH

EXIT_STATE_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump, exit 2
        self.exit(EXIT_USAGE, f"state-tasks: {message} (see state-tasks --help)\n")


#: How deep an argument's JSON may nest: a task message wraps it in two levels (the
#: body's list and the keyword arguments' object), and workers refuse a whole message
#: nested deeper than DEFAULT_MAX_JSON_DEPTH, without an answer.
MAX_ARGUMENT_DEPTH = DEFAULT_MAX_JSON_DEPTH - 2


def _json_argument(text: str, what: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        message = f"{what} is not valid JSON ({e.msg} at column {e.colno}): {text!r}"
        raise SystemExit(_fail(EXIT_USAGE, message)) from None
    except RecursionError:  # a RuntimeError: it must not reach the broker-failure branch
        message = f"{what} is nested too deeply to read ({len(text)} characters)"
        raise SystemExit(_fail(EXIT_USAGE, message)) from None
    if deeper_than(value, MAX_ARGUMENT_DEPTH):
        message = (
            f"{what} is nested too deeply to send: deeper than {MAX_ARGUMENT_DEPTH} levels, "
            f"and workers refuse a message nested deeper than {DEFAULT_MAX_JSON_DEPTH} "
            "(state_tasks.security.DEFAULT_MAX_JSON_DEPTH)"
        )
        raise SystemExit(_fail(EXIT_USAGE, message))
    return value


def _seconds(text: str) -> float:
    """``--wait``: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text!r}")
    return value


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"state-tasks: {message}\n")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="state-tasks", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a worker's answer (default 30)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, arguments, help_text in (
        ("get", ("scope", "key"), "print the value under SCOPE KEY (null if none)"),
        ("set", ("scope", "key", "json"), "store the JSON value; print old and new value"),
        ("update", ("scope", "key", "ops_json"), "apply a JSON array of update ops"),
        ("delete", ("scope", "key"), "delete the key; print the deleted value"),
        ("list", ("scope",), "print the scope's values as a JSON array (or one page)"),
        ("groups", (), "print the scopes that hold at least one key (or one page)"),
        ("batch", ("scope", "operations_json"), "apply a JSON array of operations, all or none"),
        ("get-many", ("scope",), "print the values of KEY... in their order (null if none)"),
        ("changes", (), "print one page of the change log: {changes, cursor}"),
        ("watch", (), "print every change as one JSON line, live (Ctrl-C stops)"),
    ):
        command = commands.add_parser(name, help=help_text)
        for argument in arguments:
            command.add_argument(argument, metavar=argument.upper())
        if name == "get-many":
            command.add_argument("keys", metavar="KEY", nargs="+")
        if name in ("set", "update", "delete"):
            command.add_argument(
                "--if-version",
                type=int,
                metavar="N",
                help="only if the key is at version N (0: only if it does not exist)",
            )
        if name in ("set", "update"):
            command.add_argument(
                "--ttl-ms", type=int, metavar="MS", help="the key expires MS ms after this write"
            )
        if name == "get":
            command.add_argument(
                "--with-version",
                action="store_true",
                help='print {"value", "version", "expires_in_ms"}',
            )
        if name in ("list", "groups"):
            command.add_argument("--limit", type=int, help="page size (1 to 10000)")
            command.add_argument("--cursor", help="the cursor printed with the previous page")
            command.add_argument("--prefix", help="only names starting with PREFIX")
        if name == "list":
            command.add_argument(
                "--keys", action="store_true", help="items as {key, value} (a page)"
            )
        if name == "groups":
            command.add_argument(
                "--counts", action="store_true", help="items as {scope, count} (a page)"
            )
        if name in ("changes", "watch"):
            command.add_argument("--scope", help="only the changes of SCOPE")
            command.add_argument("--prefix", help="only the changes of scopes starting with PREFIX")
            command.add_argument(
                "--after",
                metavar="CURSOR",
                help="start right after this cursor (a change's or a page's), or 'now' for "
                "only the changes made from now on; default: the oldest change kept",
            )
            command.add_argument(
                "--limit", type=int, help="changes per call (1 to 1000, default 100)"
            )
    for name, help_text in (
        ("lock", "take the lock SCOPE KEY: print its token (exit 1: held, the holder printed)"),
        ("unlock", "release the lock held with --token (exit 1: not held by it)"),
        ("extend", "keep the lock held with --token --ttl-ms longer (exit 1: not held by it)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("scope", metavar="SCOPE")
        command.add_argument("key", metavar="KEY")
        if name != "lock":
            command.add_argument(
                "--token", type=int, required=True, metavar="N", help="the token lock printed"
            )
        if name != "unlock":
            command.add_argument(
                "--ttl-ms",
                type=int,
                required=True,
                metavar="MS",
                help="the lock is free MS ms from now unless extended or released",
            )
        if name == "lock":
            command.add_argument(
                "--owner", help="the holder's name (default cli:HOSTNAME:PID:RANDOM, this call's)"
            )
            command.add_argument(
                "--wait",
                type=_seconds,
                default=0.0,
                metavar="SECONDS",
                help="while another holds it, try again for up to SECONDS (default 0: once)",
            )
    console = commands.add_parser(
        "console",
        help='serve the state console in the browser (pip install "state_tasks[console]")',
    )
    console.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    console.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    console.add_argument(
        "--allow-writes", action="store_true", help="allow set, update, delete, trigger changes"
    )
    console.add_argument(
        "--token", help="token to require (default: none on 127.0.0.1, a random one elsewhere)"
    )
    console.add_argument(
        "--call-timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long one console call may take (default {DEFAULT_CALL_TIMEOUT_S:g})",
    )
    console.add_argument(
        "--certfile", metavar="PEM", help="serve HTTPS with this certificate (and --keyfile)"
    )
    console.add_argument("--keyfile", metavar="PEM", help="the certificate's private key")
    console.add_argument(
        "--behind-tls-proxy",
        action="store_true",
        help="a reverse proxy terminates TLS in front of the console: Secure cookies, "
        "https origin, a token required",
    )
    console.add_argument(
        "--max-value-bytes",
        type=int,
        metavar="BYTES",
        help="the deployment's largest value (state.yaml max_value_bytes, default 1 MiB); "
        "a signed-in request body may be twice that plus 64 KiB",
    )
    redis_admin = commands.add_parser("redis", help="administer the state's Redis")
    redis_actions = redis_admin.add_subparsers(dest="action", required=True, parser_class=_Parser)
    install = redis_actions.add_parser(
        "install-functions",
        help="load this release's scripts as a Redis function library (use_functions: true)",
    )
    install.add_argument(
        "--url",
        help="an administrator's URL (default: state.yaml's redis_url, else $REDIS_URL); "
        "a redis+cluster:// URL loads it on every master",
    )
    triggers = commands.add_parser("triggers", help="list, add or remove triggers")
    actions = triggers.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("list", help="print every registered trigger")
    add = actions.add_parser("add", help="register a state trigger; print it with its id")
    add.add_argument("function_id", metavar="FUNCTION", help="the handler's task name")
    add.add_argument("--scope", help="only changes of SCOPE")
    add.add_argument("--key", help="only changes of KEY")
    add.add_argument("--condition", metavar="FUNCTION", help="a condition task's name")
    add.add_argument(
        "--when",
        metavar="FILTER_JSON",
        help='a declarative filter, e.g. \'{"changed": ["email"]}\' (see docs/triggers.md)',
    )
    remove = actions.add_parser("remove", help="remove a trigger by id")
    remove.add_argument("trigger_id", metavar="ID")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """--if-version, --ttl-ms and --with-version, where given."""
    given = {
        "if_version": getattr(args, "if_version", None),
        "ttl_ms": getattr(args, "ttl_ms", None),
        "with_version": getattr(args, "with_version", False) or None,
    }
    return {name: value for name, value in given.items() if value is not None}


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "set":
        return "state::set", {
            "scope": args.scope,
            "key": args.key,
            "value": _json_argument(args.json, "JSON"),
        } | _options(args)
    if args.command == "update":
        return "state::update", {
            "scope": args.scope,
            "key": args.key,
            "ops": _json_argument(args.ops_json, "OPS_JSON"),
        } | _options(args)
    if args.command in ("get", "delete"):
        return f"state::{args.command}", {"scope": args.scope, "key": args.key} | _options(args)
    if args.command == "batch":
        return "state::batch", {
            "scope": args.scope,
            "operations": _json_argument(args.operations_json, "OPERATIONS_JSON"),
        }
    if args.command == "get-many":
        return "state::get_many", {"scope": args.scope, "keys": args.keys}
    if args.command == "lock":
        owner = _default_owner() if args.owner is None else args.owner
        return "state::lock", {
            "scope": args.scope,
            "key": args.key,
            "owner": owner,
            "ttl_ms": args.ttl_ms,
        }
    if args.command in ("unlock", "extend"):
        return f"state::{args.command}", {
            "scope": args.scope,
            "key": args.key,
            "token": args.token,
        } | ({"ttl_ms": args.ttl_ms} if args.command == "extend" else {})
    if args.command == "changes":
        return "state::changes", _log_filter(args) | (
            {"limit": args.limit} if args.limit is not None else {}
        )
    paging = {
        name: value
        for name, value in (("limit", args.limit), ("cursor", args.cursor), ("prefix", args.prefix))
        if value is not None
    }
    if args.command == "list":
        return "state::list", {"scope": args.scope, **paging} | (
            {"with_keys": True} if args.keys else {}
        )
    return "state::list_groups", paging | ({"with_counts": True} if args.counts else {})


def _default_owner() -> str:
    """``lock``'s owner unless ``--owner``: this call, ``cli:<hostname>:<pid>:<random>``
    (a hostname and a pid alone repeat: containers, pid reuse)."""
    return f"cli:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _trigger_spec(args: argparse.Namespace) -> dict[str, Any]:
    """``triggers add``'s registration."""
    config: dict[str, Any] = {
        name: value
        for name, value in (
            ("scope", args.scope),
            ("key", args.key),
            ("condition_function_id", args.condition),
        )
        if value is not None
    }
    if args.when is not None:
        config["when"] = _json_argument(args.when, "--when")
    return {"type": "state", "function_id": args.function_id, "config": config}


def _log_filter(args: argparse.Namespace) -> dict[str, Any]:
    given = (("scope", args.scope), ("prefix", args.prefix), ("after", args.after))
    return {name: value for name, value in given if value is not None}


def _watch(args: argparse.Namespace, facade: III) -> int:
    """One JSON line per change until interrupted (exit 0), or an error."""
    from state_tasks.watching import watch

    limit = 100 if args.limit is None else args.limit
    if not 1 <= limit <= 1000:
        return _fail(EXIT_USAGE, f"--limit must be 1 to 1000, got {limit}")
    watcher = watch(
        args.scope,
        args.prefix,
        args.after,
        limit=limit,
        app=facade.app,
        call_timeout_s=facade.timeout_ms / 1000,
    )
    try:
        for change in watcher:
            sys.stdout.write(json.dumps(change, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except StateError as e:
        where = ""
        if e.code == "COMPACTED":
            where = f" (go on with what is kept: --after {(e.details or {}).get('oldest')})"
        return _fail(EXIT_STATE_ERROR, f"{e.code}: {e.message}{where}")
    except BrokenPipeError:  # | head
        return 0
    return 0


#: Seconds a call may take beyond --timeout (the wait for the answer starts once the task
#: is sent) before the command gives up on it.
DEADLINE_GRACE_S = 1.0
#: How a call retries a connection that failed: publishing once more, the result backend
#: not at all (Celery retries it 20 times, a second apart, by default), so that a failing
#: broker or result backend is reported, with its cause, well within --timeout.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}
RESULTS_RETRY_POLICY = {"max_retries": 0}


def bound_connections(app: Any, timeout_s: float) -> None:
    """Fit the app's connection attempts (TLS handshakes included) and their retries into
    ``timeout_s``: each attempt gets at most half of it."""
    connect_s = min(float(app.conf.broker_connection_timeout or timeout_s), timeout_s / 2)
    results = dict(app.conf.result_backend_transport_options or {})
    results["retry_policy"] = RESULTS_RETRY_POLICY
    broker = dict(app.conf.broker_transport_options or {})
    if "socket_connect_timeout" in broker:
        broker["socket_connect_timeout"] = min(broker["socket_connect_timeout"], connect_s)
    app.conf.update(
        broker_connection_timeout=connect_s,
        broker_transport_options=broker,
        redis_socket_connect_timeout=connect_s,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        result_backend_transport_options=results,
    )


def _within(timeout_s: float, app: Any, call: Callable[[], Any]) -> Any:
    """``call()``, given up on after ``timeout_s`` (and :data:`DEADLINE_GRACE_S`): whatever
    it waits on (a connection, a retry, an answer), the command ends in time. The thread
    left behind ends with the process (:func:`main` exits without waiting for it)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the caller, whatever it is
            outcome["error"] = e

    thread = threading.Thread(target=target, name="state-tasks-call", daemon=True)
    thread.start()
    thread.join(timeout_s + DEADLINE_GRACE_S)
    if thread.is_alive():
        raise CallTimeout(
            f"no answer within {timeout_s:g} s (--timeout) through {where(app)}: the broker "
            "or the result backend did not answer, or no worker runs on this broker"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def run(argv: Sequence[str] | None = None, facade: III | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "redis":
        return _install_functions(args.url)
    if facade is None:
        from state_tasks import iii

        facade = iii
    timeout_ms = max(1, int(args.timeout * 1000))
    facade.timeout_ms = timeout_ms
    try:
        bound_connections(facade.app, args.timeout)
    except ConfigError as e:  # (the settings are read here first)
        return _fail(EXIT_USAGE, f"{e.code}: {e.message}")
    if args.command == "console":
        return _console(args, facade)
    if args.command == "watch":
        return _watch(args, facade)
    request = _request(args) if args.command != "triggers" else None

    def call() -> Any:
        if request is None:
            if args.action == "list":
                return facade.list_triggers()
            if args.action == "add":
                return facade.register_trigger(_trigger_spec(args)).trigger.to_dict()
            return (
                {"removed": args.trigger_id} if facade.unregister_trigger(args.trigger_id) else None
            )
        function_id, payload = request
        return facade.trigger(
            {"function_id": function_id, "payload": payload, "timeout_ms": timeout_ms}
        )

    if args.command in COORDINATION_OUTCOMES:
        return _coordinate(args, facade, call)
    result, failed = _reported(args.timeout, facade, call)
    if failed is not None:
        return failed
    if result is None and args.command == "triggers" and args.action == "remove":
        return _fail(EXIT_STATE_ERROR, f"no trigger with id {args.trigger_id!r}")
    _print(result)
    return 0


def _reported(timeout_s: float, facade: III, call: Callable[[], Any]) -> tuple[Any, int | None]:
    """``(call()'s result, None)`` within ``timeout_s``, or ``(None, exit code)`` once its
    failure is reported on stderr."""
    try:
        return _within(timeout_s, facade.app, call), None
    except CallTimeout as e:
        return None, _fail(EXIT_UNREACHABLE, e.message)
    except ConfigError as e:  # the environment's settings: fix them, as bad usage
        return None, _fail(EXIT_USAGE, f"{e.code}: {e.message}")
    except StateError as e:
        return None, _fail(EXIT_STATE_ERROR, f"{e.code}: {e.message}")
    except RecursionError:  # a RuntimeError, but no broker failure
        return None, _fail(EXIT_USAGE, "a value is nested too deeply to send or read")
    except UNREACHABLE_ERRORS as e:
        return None, _fail(EXIT_UNREACHABLE, describe_unreachable(facade.app, e))


def _print(result: Any) -> None:
    indent = 2 if sys.stdout.isatty() else None
    print(json.dumps(result, indent=indent, ensure_ascii=False))


#: The field of a coordination command's answer that says it did what was asked (exit 0;
#: else the answer is printed all the same, and the exit code is 1).
COORDINATION_OUTCOMES = {"lock": "acquired", "unlock": "released", "extend": "extended"}
#: ``lock --wait``: the first pause between attempts, doubled after each up to the last.
WAIT_FIRST_S = 0.02
WAIT_MAX_S = 0.5


def _coordinate(args: argparse.Namespace, facade: III, call: Callable[[], Any]) -> int:
    """``lock``, ``unlock``, ``extend``: print the answer; exit 0 if it did what was asked,
    1 if not. ``lock --wait`` tries again while another holds the lock, pausing 20 ms, then
    twice as long each time up to 500 ms, until the wait is over (a last attempt then)."""
    deadline = time.monotonic() + getattr(args, "wait", 0.0)
    pause = WAIT_FIRST_S
    while True:
        answer, failed = _reported(args.timeout, facade, call)
        if failed is not None:
            return failed
        done = isinstance(answer, dict) and answer.get(COORDINATION_OUTCOMES[args.command]) is True
        left = deadline - time.monotonic()
        if done or left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, WAIT_MAX_S)
    _print(answer)
    return 0 if done else EXIT_STATE_ERROR


def _install_functions(url: str | None) -> int:
    """``state-tasks redis install-functions``: load this release's library (idempotent)."""
    from state_tasks.adapters.redis.admin import install_functions

    try:
        print(json.dumps(install_functions(url)))
    except StateError as e:
        code = EXIT_USAGE if isinstance(e, ConfigError) else EXIT_UNREACHABLE
        return _fail(code, f"{e.code}: {e.message}")
    return 0


def _console(args: argparse.Namespace, facade: III) -> int:
    try:
        from state_tasks.console.server import serve
    except ImportError as e:
        return _fail(
            EXIT_USAGE, f'the console needs its extra: pip install "state_tasks[console]" ({e})'
        )
    if args.keyfile and not args.certfile:
        return _fail(EXIT_USAGE, "--keyfile needs --certfile (the certificate it goes with)")
    if args.max_value_bytes is not None and args.max_value_bytes < 1:
        return _fail(EXIT_USAGE, f"--max-value-bytes must be positive, got {args.max_value_bytes}")
    extra = {} if args.max_value_bytes is None else {"max_value_bytes": args.max_value_bytes}
    return serve(
        facade,
        host=args.host,
        port=args.port,
        allow_writes=args.allow_writes,
        token=args.token,
        call_timeout_s=args.call_timeout,
        certfile=args.certfile,
        keyfile=args.keyfile,
        behind_tls_proxy=args.behind_tls_proxy,
        **extra,
    )


def main() -> None:
    """Console-script entry point."""
    # Errors are reported once, by us; Celery's and kombu's own log lines would repeat them.
    logging.disable(logging.CRITICAL)
    code = run()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: pending results' destructors would try to reach a
    # broker that may be gone and print tracebacks after our one-line message.
    os._exit(code)


if __name__ == "__main__":
    main()
