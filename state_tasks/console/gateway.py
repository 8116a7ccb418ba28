"""The console's way to the deployment: state functions sent through the broker.

Exactly what the CLI does (the :class:`~state_tasks.facade.III` facade, a worker
answers), so the console sees whatever adapter the workers use. Celery's calls block:
they run in a pool of threads, each with a deadline, and every failure becomes a
:class:`ConsoleError` with a code and a message that names no password.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from state_tasks import broker_errors
from state_tasks.broker_errors import UNREACHABLE_ERRORS, describe_unreachable
from state_tasks.console import DEFAULT_CALL_TIMEOUT_S
from state_tasks.core.errors import CallTimeout, StateError
from state_tasks.facade import III

#: Broker calls in flight at once (each holds a thread while it waits for its result).
DEFAULT_THREADS = 8
#: Seconds the console waits for a call beyond the call's own timeout (which then reports
#: itself) before it gives up on it: a broker that does not answer can hold a call longer.
DEADLINE_MARGIN_S = 2.0
#: HTTP status of each error code (the state functions' codes and the console's own).
STATUS_OF = {
    "VALIDATION_ERROR": 400,
    "UPDATE_OP_ERROR": 400,
    "VALUE_TOO_LARGE": 413,
    "NOT_FOUND": 404,
    "WRITES_DISABLED": 403,
    "FORBIDDEN": 403,
    "UNAUTHORIZED": 401,
    "TIMEOUT": 504,
    "BROKER_UNREACHABLE": 503,
    "ADAPTER_ERROR": 502,
    "ADAPTER_UNAVAILABLE": 503,
    # state::changes: the log no longer holds the position asked for; the log is off
    "COMPACTED": 410,
    "CONFIG_ERROR": 501,
    # if_version did not match: the page shows theirs and yours
    "VERSION_CONFLICT": 409,
    # request bodies (see state_tasks.console.guard.body_refusal)
    "BODY_TOO_LARGE": 413,
    "LENGTH_REQUIRED": 411,
    "TOO_MANY_ATTEMPTS": 429,
}


class ConsoleError(Exception):
    """A failure to show on the page: a machine-readable code and a sentence, and the state
    function's ``details`` when it gave some (``COMPACTED``: ``{"oldest": cursor}``)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        """The HTTP status that carries this error."""
        return STATUS_OF.get(self.code, 400)

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            shown["details"] = self.details
        return shown


class StateGateway:
    """State functions and trigger calls for the console, off the event loop.

    :param facade: the iii facade on the deployment's Celery app (not changed: the gateway
        calls through a copy of it whose own timeout is ``timeout_s``).
    :param timeout_s: how long one call may take, state functions and trigger calls alike.
    """

    def __init__(
        self,
        facade: III,
        timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.timeout_s = timeout_s
        self.timeout_ms = max(1, int(timeout_s * 1000))
        # The trigger calls (list, register, unregister) take no timeout of their own but the
        # facade's: it must be ours, or a pool thread waits on after the page was told
        # TIMEOUT, and a few such calls with no worker up hold every thread of the pool.
        self.facade = copy.copy(facade)
        self.facade.timeout_ms = self.timeout_ms
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="console-call")
        # The live feed's calls: a thread of their own, one call at a time.
        self._feed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-feed-call")
        self._feed_call: Future[Any] | None = None

    def redact(self, text: str) -> str:
        """``text`` with the passwords of the app's URLs (broker, results) replaced by ``***``."""
        return broker_errors.redact(self.facade.app, text)

    def where(self) -> str:
        """The broker (and result backend, if another) as they may be shown."""
        return broker_errors.where(self.facade.app)

    async def call(self, function_id: str, payload: dict[str, Any]) -> Any:
        """Run one state function through the broker and return its result."""
        request = {"function_id": function_id, "payload": payload, "timeout_ms": self.timeout_ms}
        return await self._run(functools.partial(self.facade.trigger, request), function_id)

    def call_blocking(self, function_id: str, payload: dict[str, Any]) -> Any:
        """:meth:`call` for a thread of the console's own (the live feed's poller), waiting:
        the same deadline, the same errors. One at a time: while a call given up on still
        runs (held by a broker that does not answer), the next one is refused at once."""
        if self._feed_call is not None and not self._feed_call.done():
            raise ConsoleError(
                "TIMEOUT",
                f"{function_id}: the previous call has not returned yet; can the broker at "
                f"{self.where()} be reached?",
            )
        request = {"function_id": function_id, "payload": payload, "timeout_ms": self.timeout_ms}
        self._feed_call = future = self._feed_pool.submit(self.facade.trigger, request)
        try:
            return future.result(self.timeout_s + DEADLINE_MARGIN_S)
        except Exception as e:
            if not future.done():
                raise self._deadline_passed(function_id) from None
            translated = self._console_error(e, function_id)
            if translated is None:
                raise
            raise translated from None

    async def list_triggers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._run(self.facade.list_triggers, "triggers::list")
        return result

    async def register_trigger(self, spec: dict[str, Any]) -> str:
        """Register a trigger; return its id."""
        handle = await self._run(
            functools.partial(self.facade.register_trigger, spec), "triggers::register"
        )
        return str(handle.id)

    async def unregister_trigger(self, trigger_id: str) -> bool:
        return bool(
            await self._run(
                functools.partial(self.facade.unregister_trigger, trigger_id),
                "triggers::unregister",
            )
        )

    async def registered_tasks(
        self, timeout_s: float, expected: int | None = None
    ) -> dict[str, list[str]]:
        """Celery's ``inspect registered``, asked of every worker on the broker: each worker
        that answered within ``timeout_s`` (or once ``expected`` have), with its task names.
        No worker answering is ``{}``."""
        inspect = self.facade.app.control.inspect(timeout=timeout_s, limit=expected or None)
        answers = await self._run(inspect.registered, "inspect registered")
        return {
            str(worker): [str(name).split(" ", 1)[0] for name in names or ()]
            for worker, names in (answers or {}).items()
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._feed_pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[[], Any], what: str) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, work)
        try:
            # A little longer than the call's own timeout, which then reports itself.
            return await asyncio.wait_for(future, self.timeout_s + DEADLINE_MARGIN_S)
        except TimeoutError:
            raise self._deadline_passed(what) from None
        except Exception as e:
            translated = self._console_error(e, what)
            if translated is None:
                raise
            raise translated from None

    def _deadline_passed(self, what: str) -> ConsoleError:
        return ConsoleError(
            "TIMEOUT",
            f"{what} did not answer within {self.timeout_s:g} s; is a worker running on "
            f"{self.where()}?",
        )

    def _console_error(self, error: Exception, what: str) -> ConsoleError | None:
        """The :class:`ConsoleError` a call's failure reads as (passwords redacted); ``None``
        for a failure that is none of the known ones (it is raised as it is)."""
        if isinstance(error, CallTimeout):
            return ConsoleError("TIMEOUT", error.message)
        if isinstance(error, StateError):
            return ConsoleError(error.code, self.redact(error.message), error.details)
        if isinstance(error, RecursionError):  # a RuntimeError, but no broker failure
            return ConsoleError(
                "VALIDATION_ERROR", f"{what}: a value is nested too deeply to send or read"
            )
        if isinstance(error, UNREACHABLE_ERRORS):
            return ConsoleError("BROKER_UNREACHABLE", describe_unreachable(self.facade.app, error))
        return None
