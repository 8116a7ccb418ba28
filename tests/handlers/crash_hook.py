"""A fault for the reliability tests, loaded by a worker with ``-I crash_hook``.

The first change of scope ``$CRASH_AFTER_STORE_SCOPE`` kills the worker process after the
change is stored and before its trigger work is sent (once: the file named by
``$CRASH_MARKER`` records it). It wraps the dispatcher from the test side, so production
code carries no hook.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from faults import first_time

from state_tasks.triggers.dispatch import Dispatcher

logger = logging.getLogger(__name__)

SCOPE = os.environ["CRASH_AFTER_STORE_SCOPE"]
_dispatch = Dispatcher.__call__


def _crash_once() -> None:
    if not first_time():
        return
    logger.critical("test fault hook: dying between storing a change and sending its triggers")
    os._exit(70)


def _dispatch_or_crash(self: Dispatcher, event: dict[str, Any], **options: Any) -> None:
    if event["scope"] == SCOPE:
        _crash_once()
    _dispatch(self, event, **options)


Dispatcher.__call__ = _dispatch_or_crash  # type: ignore[method-assign]
