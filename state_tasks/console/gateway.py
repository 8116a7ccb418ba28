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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from state_tasks import broker_errors
from state_tasks.broker_errors import UNREACHABLE_ERRORS, describe_unreachable
from state_tasks.console import DEFAULT_CALL_TIMEOUT_S
from state_tasks.core.errors import CallTimeout, StateError
from state_tasks.facade import III

#: Broker calls in flight at once (each holds a thread while it waits for its result).
DEFAULT_THREADS = 8
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
}


class ConsoleError(Exception):
    """A failure to show on the page: a machine-readable code and a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status that carries this error."""
        return STATUS_OF.get(self.code, 400)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[[], Any], what: str) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, work)
        try:
            # A little longer than the call's own timeout, which then reports itself.
            return await asyncio.wait_for(future, self.timeout_s + 2)
        except TimeoutError:
            raise ConsoleError(
                "TIMEOUT",
                f"{what} did not answer within {self.timeout_s:g} s; is a worker running on "
                f"{self.where()}?",
            ) from None
        except CallTimeout as e:
            raise ConsoleError("TIMEOUT", e.message) from None
        except StateError as e:
            raise ConsoleError(e.code, self.redact(e.message)) from None
        except RecursionError:  # a RuntimeError, but no broker failure
            raise ConsoleError(
                "VALIDATION_ERROR", f"{what}: a value is nested too deeply to send or read"
            ) from None
        except UNREACHABLE_ERRORS as e:
            raise ConsoleError(
                "BROKER_UNREACHABLE", describe_unreachable(self.facade.app, e)
            ) from None
