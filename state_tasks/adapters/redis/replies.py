"""The reply codes of the Redis scripts: one enum, which Python reads and Lua is given.

Every script that can answer more than one way returns ``{code, ...}``; the scripts see
these names as Lua locals (:func:`lua_prelude`), so a code means the same in every
script and in the adapter.
"""

from __future__ import annotations

from enum import IntEnum


class Reply(IntEnum):
    """What a script did (its reply's first element)."""

    #: The change was made.
    WRITTEN = 1
    #: The operation was applied before; its record is whole (the reply holds its result).
    APPLIED = 2
    #: The operation was applied before and its record is settled (the reply holds the
    #: marker).
    SETTLED = 3
    #: An ``if_version`` did not match; nothing was written.
    VERSION_CONFLICT = 4
    #: A key no longer holds the text the new value was computed from; nothing was written
    #: (the reply holds what it holds now: compute again).
    MOVED_ON = 5
    #: A read: the texts and versions asked for.
    FOUND = 6
    #: A read of the change log from a position whose next entries were trimmed (the reply
    #: holds the position before the oldest entry kept).
    COMPACTED = 7


def lua_prelude() -> str:
    """The codes as Lua locals, put before every script."""
    names = ", ".join(reply.name for reply in Reply)
    values = ", ".join(str(int(reply)) for reply in Reply)
    return f"local {names} = {values}\n"
