"""A fault for the reliability tests, loaded by a worker with ``-I gate_fault_hook``.

The first time the condition gate (``triggers::gate``) sends the handler
``$GATE_FAULT_FUNCTION``, the broker refuses the message: the send raises kombu's
``OperationalError``, as it does when the broker connection drops (once: the file named by
``$CRASH_MARKER`` records it). It wraps the gate's Celery app from the test side, so
production code carries no hook.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from faults import first_time
from kombu.exceptions import OperationalError

from state_tasks.celery_app import app

logger = logging.getLogger(__name__)

FUNCTION = os.environ["GATE_FAULT_FUNCTION"]
_send_task = app.send_task


def _send_or_fail(name: str, *args: Any, **kwargs: Any) -> Any:
    if name == FUNCTION and first_time():
        logger.warning("test fault hook: the broker refuses the handler's message")
        raise OperationalError("test fault hook: connection to the broker lost")
    return _send_task(name, *args, **kwargs)


app.send_task = _send_or_fail  # type: ignore[method-assign]
