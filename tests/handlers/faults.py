"""What the test fault hooks share: a fault that strikes once per test.

The hooks (``crash_hook``, ``expiry_crash_hook``, ``gate_fault_hook``) are loaded into
worker processes with ``-I``; the file named by ``$CRASH_MARKER`` records that the fault
struck, across every process of the worker and its restarts.
"""

from __future__ import annotations

import os

MARKER = os.environ["CRASH_MARKER"]


def first_time() -> bool:
    """True once: for the first caller, in any process, to reach the fault."""
    try:
        fd = os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:
        return False  # struck already
    os.close(fd)
    return True
