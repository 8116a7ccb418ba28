"""The expiry sweeper: every worker removes the keys whose ``ttl_ms`` ran out and fires
their ``state:deleted`` events (``"reason": "expired"``).

A daemon thread of the worker's main process, started when the worker is ready (like the
data folder's cleaner in :mod:`state_tasks.worker`) and stopped at its shutdown. It calls
:meth:`state_tasks.core.service.StateService.sweep_expired` on the process's runtime: the
adapter claims due keys atomically (a lock in the KvStore; one Lua script per scope on
Redis, which several workers may run at once without firing an expiry twice), and the
events go through the same trigger dispatch as every change, all of a sweep's at once
(:meth:`state_tasks.triggers.dispatch.Dispatcher.send_all`: one round trip to a Redis broker
instead of two per message). Between sweeps it sleeps until the next due time, at most
:data:`DEFAULT_MAX_SLEEP_S` and at least :data:`DEFAULT_MIN_SLEEP_S`, plus a random part of
up to half that (so the sweepers of several workers do not wake together): expiries that
fall due close together are swept together, at a few dozen sweeps a second rather than
hundreds, and an expiry fires well within a second of its due time. A worker that starts
after a due time fires it at its first sweep.

A key is removed before its event is sent, and the removal leaves a pending record (in the
same atomic step on Redis) that the sending drops; an event a sweep could not send (the
broker was away, or the worker was killed in between: on Redis and the file store, which
outlive the worker) is sent again by a later sweep of any worker, with the same
``event_id``, once it is :data:`~state_tasks.core.service.DEFAULT_EXPIRY_RESEND_AFTER_MS`
old. A failed sweep is logged as a warning.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from state_tasks.core.service import StateService

logger = logging.getLogger(__name__)

#: The longest sleep between two sweeps (an expiry set meanwhile waits at most this long).
DEFAULT_MAX_SLEEP_S = 0.2
#: The shortest: keys falling due meanwhile wait for the next sweep, which takes them
#: together (each sweep costs the same few storage round trips however many it takes).
DEFAULT_MIN_SLEEP_S = 0.05
#: How long to wait after a failed sweep (the storage is away) before the next.
FAILURE_SLEEP_S = 1.0
#: Most keys one sweep claims: small, so that the workers of a deployment share a burst of
#: expiries (each claims a few, fires them, claims again) instead of one claiming it all
#: and firing it alone.
DEFAULT_CLAIM_LIMIT = 50


class ExpirySweeper:
    """A daemon thread that sweeps expired keys through ``service()`` until stopped.

    :param service: returns the service to sweep with (the process's runtime's), or
        ``None`` while there is none.
    """

    def __init__(
        self,
        service: Callable[[], StateService | None],
        max_sleep_s: float = DEFAULT_MAX_SLEEP_S,
        limit: int = DEFAULT_CLAIM_LIMIT,
        min_sleep_s: float = DEFAULT_MIN_SLEEP_S,
    ) -> None:
        self.service = service
        self.max_sleep_s = max_sleep_s
        self.min_sleep_s = min(min_sleep_s, max_sleep_s)
        self.limit = limit
        self.fired = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state_tasks-expiry", daemon=True)

    def start(self) -> ExpirySweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def sweep_once(self) -> float:
        """One sweep; return how long to sleep before the next, in seconds."""
        service = self.service()
        if service is None:
            return self.max_sleep_s
        fired, next_due_ms = service.sweep_expired(self.limit)
        self.fired += fired
        if fired >= self.limit:
            return 0.0  # more are due: go on at once
        if next_due_ms is None:
            sleep_s = self.max_sleep_s
        else:
            sleep_s = max(self.min_sleep_s, min(self.max_sleep_s, next_due_ms / 1000))
        return sleep_s + random.uniform(0, self.min_sleep_s / 2)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                sleep_s = self.sweep_once()
            except Exception as e:  # never let a sweep end the thread, or the worker
                logger.warning("state_tasks: the sweep of expired keys failed: %s", e)
                sleep_s = FAILURE_SLEEP_S
            if sleep_s and self._stopped.wait(sleep_s):
                return
