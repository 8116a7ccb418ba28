"""``state_tasks.watch()``: the change log as a live Python iterator.

::

    from state_tasks import watch

    changes = watch(scope="orders")          # from the oldest change kept
    for change in changes:                   # waits for new ones; never ends by itself
        index(change["key"], change["new_value"])
        save_somewhere(change["cursor"])     # a restart resumes with watch(after=...)

How it waits: it *polls* ``state::changes``. Through the workers by default (a Celery call
per poll, as any client makes; in a worker process the call runs in-process), or, with
``direct=True``, by reading the configured store itself (``state.yaml``, as a worker reads
it), which needs a store shared between processes (Redis, Sentinel, Cluster) and saves the
round trip through the broker. A poll that returns changes, or that moved past other
scopes' changes (a filtered read looks at a bounded number of entries), polls again at
once; only one that found nothing new waits ``poll_interval_s`` (so a change reaches the
consumer within about that long, plus a call). ``after="now"`` starts at the end of the log:
only changes made from then on.

Each change is yielded once, in the log's order (within a scope, the order the changes
were applied); ``watcher.cursor`` is the position right after the last change yielded, the
same as that change's ``cursor``. A consumer that stops and calls ``watch(after=cursor)``
again misses nothing and sees nothing twice. When the log was trimmed past the cursor (the
consumer was away longer than the log keeps), iterating raises
:class:`~state_tasks.core.changes.Compacted` (code ``COMPACTED``) with
``details["oldest"]``: it never skips silently. A worker or broker that cannot be reached
is waited for (with a warning, backing off up to :data:`MAX_BACKOFF_S`); any other error
is raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from state_tasks.broker_errors import UNREACHABLE_ERRORS
from state_tasks.core.changes import AT_END, DEFAULT_CHANGES_LIMIT
from state_tasks.core.errors import AdapterUnavailable, CallTimeout, StateError

if TYPE_CHECKING:
    from celery import Celery

    from state_tasks.core.service import StateService

logger = logging.getLogger(__name__)

#: How long an idle watcher waits between polls, by default.
DEFAULT_POLL_INTERVAL_S = 0.1
#: The longest wait between attempts while the workers or the store cannot be reached.
MAX_BACKOFF_S = 5.0
#: How long one poll through the workers may take.
DEFAULT_CALL_TIMEOUT_S = 30.0

Fetch = Callable[[dict[str, Any]], dict[str, Any]]


class Watcher:
    """An iterator over the change log (see the module docs); made by :func:`watch`."""

    def __init__(
        self,
        fetch: Fetch,
        scope: str | None,
        prefix: str | None,
        after: str | None,
        limit: int,
        poll_interval_s: float,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._filter = {
            name: value for name, value in (("scope", scope), ("prefix", prefix)) if value
        }
        #: The position right after the last change yielded (``None``: nothing read yet,
        #: the oldest change kept comes first).
        self.cursor = after
        self.limit = limit
        self.poll_interval_s = poll_interval_s
        self._stopped = threading.Event()
        self._on_close = on_close
        self._page: list[dict[str, Any]] = []
        # A poll in progress holds it: close() from another thread then leaves releasing
        # the store to the poll (not under it).
        self._polling = threading.Lock()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        while not self._page:
            if self._stopped.is_set():
                raise StopIteration
            moved = self._poll()
            if not self._page and not moved:
                self._stopped.wait(self.poll_interval_s)
        change = self._page.pop(0)
        self.cursor = change["cursor"]
        return change

    def poll(self) -> list[dict[str, Any]]:
        """The changes after :attr:`cursor` available now (possibly none), without waiting;
        the cursor moves past them."""
        if not self._page:
            self._poll()
        page, self._page = self._page, []
        if page:
            self.cursor = page[-1]["cursor"]
        return page

    def close(self) -> None:
        """Stop: a waiting ``next()`` ends the iteration (from any thread); a poll under
        way finishes first (a direct watcher's store is closed after it)."""
        self._stopped.set()
        if self._polling.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._polling.release()

    def _release(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _poll(self) -> bool:
        """One read after the cursor (retried while unreachable); whether it moved on (found
        changes, or passed over other scopes' changes)."""
        with self._polling:
            try:
                if self._stopped.is_set():
                    return False
                return self._read()
            finally:
                if self._stopped.is_set():  # closed meanwhile: release the store now
                    self._release()

    def _read(self) -> bool:
        payload: dict[str, Any] = dict(self._filter, limit=self.limit)
        backoff = self.poll_interval_s or 0.05
        while True:
            if self.cursor is not None:
                payload["after"] = self.cursor
            try:
                answer = self._fetch(payload)
                break
            except (CallTimeout, AdapterUnavailable) as e:
                self._unreachable(e, backoff)
            except StateError:
                raise
            except UNREACHABLE_ERRORS as e:  # the broker: kombu's and the drivers' errors
                self._unreachable(e, backoff)
            if self._stopped.is_set():
                return False
            backoff = min(MAX_BACKOFF_S, backoff * 2)
        self._page = list(answer["changes"])
        if self._page:
            return True
        # a filtered read may move past changes of other scopes
        moved: bool = answer["cursor"] != self.cursor
        self.cursor = answer["cursor"]
        return moved

    def _unreachable(self, error: BaseException, backoff: float) -> None:
        logger.warning(
            "watch: cannot read the change log now (%s: %s); trying again in %.1f s",
            type(error).__name__,
            error,
            backoff,
        )
        self._stopped.wait(backoff)


def watch(
    scope: str | None = None,
    prefix: str | None = None,
    after: str | None = None,
    *,
    limit: int = DEFAULT_CHANGES_LIMIT,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    direct: bool = False,
    app: Celery | None = None,
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    service: StateService | None = None,
) -> Watcher:
    """Iterate over the changes of ``scope`` (or of the scopes starting with ``prefix``, or
    of all) after the cursor ``after`` (``None``: from the oldest change kept; ``"now"``:
    from the changes made after this call), waiting for new ones. See the module docs for
    how it waits and resumes.

    :param limit: changes read per poll (1 to 1,000).
    :param poll_interval_s: how long an idle watcher waits between polls.
    :param direct: read the configured store itself instead of calling the workers (a
        store shared between processes only: Redis, Sentinel, Cluster).
    :param app: the Celery app to call through (default: ``state_tasks.app``).
    :param call_timeout_s: how long one poll through the workers may take.
    :param service: read this :class:`~state_tasks.core.service.StateService` directly
        (in-process: tests, or a worker's own runtime).
    """
    on_close: Callable[[], None] | None = None
    if service is None and direct:
        service, on_close = _direct_service()
    if service is not None:
        reader = service

        def fetch(payload: dict[str, Any]) -> dict[str, Any]:
            return reader.call("state::changes", payload)  # type: ignore[no-any-return]

    else:
        from state_tasks.facade import III

        if app is None:
            from state_tasks.celery_app import app as default_app

            app = default_app
        facade = III(app, timeout_ms=max(1, int(call_timeout_s * 1000)))

        def fetch(payload: dict[str, Any]) -> dict[str, Any]:
            request = {"function_id": "state::changes", "payload": payload}
            return facade.trigger(request)  # type: ignore[no-any-return]

    watcher = Watcher(fetch, scope, prefix, after, limit, poll_interval_s, on_close)
    if after == AT_END:
        watcher.poll()  # the end as it is now: the changes made from this call on
    return watcher


def _direct_service() -> tuple[StateService, Callable[[], None]]:
    """A service over the configured store, for ``direct=True``."""
    from state_tasks.config import load_config
    from state_tasks.core.errors import ConfigError
    from state_tasks.core.service import StateService

    config = load_config()
    if config.process_local:
        raise ConfigError(
            f"watch(direct=True): the configured store ({config.adapter_name}, from "
            f"{config.source}) lives inside one worker process; watch through the workers "
            "(direct=False) instead"
        )
    adapter = config.build_adapter()
    adapter.open()
    return StateService(adapter), adapter.close
