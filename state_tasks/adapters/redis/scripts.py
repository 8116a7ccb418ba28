"""The Lua scripts of the Redis adapter, read from the ``.lua`` files beside this module.

Each file opens with a comment naming its KEYS, ARGV and what it returns, then names
them as locals. A line ``--!include NAME`` is replaced by ``NAME.lua``: the libraries
(``lib_*.lua``) hold what several scripts share (settling a record, the clock, the steps
of a change), written once. Every script gets the reply codes first
(:func:`state_tasks.adapters.redis.replies.lua_prelude`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from state_tasks.adapters.redis.replies import lua_prelude

_INCLUDE = re.compile(r"^--!include (\w+)$", re.MULTILINE)


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _expand(name: str, seen: tuple[str, ...] = ()) -> str:
    if name in seen:
        raise ValueError(f"Lua include cycle: {' -> '.join((*seen, name))}")
    return _INCLUDE.sub(lambda m: _expand(m.group(1), (*seen, name)), _read(name))


@functools.cache
def source(name: str) -> str:
    """The whole text of the script ``name`` (``set`` for ``lua/set.lua``), includes
    expanded, reply codes first."""
    return lua_prelude() + _expand(name)


#: Every script the adapter runs (not the libraries).
NAMES = (
    "set",
    "delete",
    "check_and_set",
    "batch",
    "read_for_write",
    "get",
    "get_entry",
    "get_many",
    "list",
    "page",
    "live_counts",
    "due_scopes",
    "expire",
    "settle",
    "trigger_put",
    "trigger_delete",
    "raise_version",
    "pending_claim",
    "pending_release",
    "expiries_sent",
    "changes",
)


class LuaScript(Script):
    """A registered script whose direct call is one ``EVALSHA`` and nothing more (redis-py's
    ``Script`` copies and checks its arguments on every call: a few microseconds of a write
    that takes about forty). In a pipeline (``client=``) it is redis-py's, which loads the
    script before the pipeline runs."""

    def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        if client is not None:
            return super().__call__(keys, args, client)
        keys, args = keys or (), args or ()
        run: Any = self.registered_client.execute_command
        try:
            return run("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a server that restarted, or a failover: load it again
            self.sha = self.registered_client.script_load(self.script)
            return run("EVALSHA", self.sha, len(keys), *keys, *args)
