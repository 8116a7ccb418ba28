"""The console's way to the deployment: state functions sent through the broker.

Exactly what the CLI does (the :class:`~state_tasks.facade.III` facade, a worker
answers), so the console sees whatever adapter the workers use. Celery's calls block:
they run in a pool of threads, each with a deadline, and every failure becomes a
:class:`ConsoleError` with a code and a message that names no password.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from state_tasks.core.errors import CallTimeout, StateError
from state_tasks.core.urls import redact_url
from state_tasks.facade import III

#: Seconds a call may take before the page is told that no worker answered.
DEFAULT_CALL_TIMEOUT_S = 10.0
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

    :param facade: the iii facade on the deployment's Celery app.
    :param timeout_s: how long one call may take.
    """

    def __init__(
        self,
        facade: III,
        timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.facade = facade
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="console-call")

    def redact(self, text: str) -> str:
        """``text`` with the broker's and the result backend's passwords replaced by ``***``."""
        for url in {str(self.facade.app.conf.broker_url), str(self.facade.app.conf.result_backend)}:
            if url and url != "None":
                text = text.replace(url, redact_url(url))
        return text

    def where(self) -> str:
        """The broker (and result backend, if another) as they may be shown."""
        broker = redact_url(str(self.facade.app.conf.broker_url))
        backend = redact_url(str(self.facade.app.conf.result_backend))
        return broker if broker == backend else f"{broker} (results: {backend})"

    async def call(self, function_id: str, payload: dict[str, Any]) -> Any:
        """Run one state function through the broker and return its result."""
        timeout_ms = max(1, int(self.timeout_s * 1000))
        request = {"function_id": function_id, "payload": payload, "timeout_ms": timeout_ms}
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
        except (OperationalError, OSError, RuntimeError, RedisError) as e:
            # Celery raises RuntimeError when its result backend cannot reconnect.
            detail = self.redact(" ".join(str(e).split()))
            raise ConsoleError(
                "BROKER_UNREACHABLE", f"cannot reach the broker at {self.where()}: {detail}"
            ) from None
