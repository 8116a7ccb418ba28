"""A handler that records what it received in a file, for tests without Redis.

Loaded by workers with ``-I file_record_handlers``; ``test::recordToFile`` appends each
event as one JSON line to the file named by ``$RECORD_FILE`` (one ``write()`` in append
mode, so lines from several threads or processes never interleave).
"""

from __future__ import annotations

import json
import os
from typing import Any

from state_tasks import iii

RECORD_FILE = os.environ["RECORD_FILE"]


def record_to_file(event: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps(event, sort_keys=True) + "\n"
    fd = os.open(RECORD_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
    return {}


iii.register_function({"id": "test::recordToFile"}, record_to_file)
