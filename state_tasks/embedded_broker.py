"""The embedded broker: kombu's filesystem transport, with messages kept in order.

kombu names each message file by the millisecond it was written plus a random
uuid, so two messages sent within one millisecond (a ``void`` set followed by a
get) can be read in either order. This transport names files by nanosecond,
made strictly increasing within a process, and writes each one under a
temporary name first, so a reader never sees half a message.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

#: The URL scheme of this transport, registered with kombu on import.
SCHEME = "statefs"

_last_stamp = 0
_stamp_lock = threading.Lock()


def _next_stamp() -> int:
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(_last_stamp + 1, time.time_ns())
        return _last_stamp


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{_next_stamp():020d}_{uuid.uuid4().hex}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The temporary name does not end in ".<queue>.msg", so no reader picks it up.
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4().hex}.tmp")
        try:
            with open(partial, "wb") as handle:
                handle.write(str(dumps(payload)).encode("utf-8"))  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
