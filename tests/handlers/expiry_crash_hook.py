"""A fault for the expiry tests, loaded by a worker with ``-I expiry_crash_hook``.

The first time the worker is about to send an expiry event (``reason: "expired"``) of
scope ``$CRASH_EXPIRY_SCOPE``, after the key was removed, the process kills itself with
SIGKILL (once: the file named by ``$CRASH_MARKER`` records it). Run the worker with
``--pool solo`` so that nothing of it outlives the kill. It wraps the dispatcher from the
test side, so production code carries no hook.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

from faults import first_time

from state_tasks.triggers.dispatch import Dispatcher

logger = logging.getLogger(__name__)

SCOPE = os.environ["CRASH_EXPIRY_SCOPE"]
_send_all = Dispatcher.send_all
_call = Dispatcher.__call__


def _crash_on_expiry(events: Sequence[dict[str, Any]]) -> None:
    if not any(e["scope"] == SCOPE and e.get("reason") == "expired" for e in events):
        return
    if not first_time():
        return
    logger.critical("test fault hook: SIGKILL between removing an expired key and its event")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _send_all_or_crash(self: Dispatcher, events: Sequence[dict[str, Any]], **options: Any) -> None:
    _crash_on_expiry(events)
    _send_all(self, events, **options)


def _call_or_crash(self: Dispatcher, event: dict[str, Any], **options: Any) -> None:
    _crash_on_expiry([event])
    _call(self, event, **options)


Dispatcher.send_all = _send_all_or_crash  # type: ignore[method-assign]
Dispatcher.__call__ = _call_or_crash  # type: ignore[method-assign]
