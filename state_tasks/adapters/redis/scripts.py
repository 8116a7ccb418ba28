"""The Lua scripts of the Redis adapter, read from the ``.lua`` files beside this module.

Each file opens with a comment naming its KEYS, ARGV and what it returns, then names
them as locals. A line ``--!include NAME`` is replaced by ``NAME.lua``: the libraries
(``lib_*.lua``) hold what several scripts share (settling a record, the clock, the steps
of a change), written once. Every script gets the reply codes first
(:func:`state_tasks.adapters.redis.replies.lua_prelude`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

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


# -- the same scripts as a Redis function library (least privilege: FCALL, no EVAL) -------

#: The library's name starts with this; a hash of the scripts follows, so each release's
#: scripts are a library of their own, and workers of two releases run side by side.
LIBRARY_PREFIX = "state_tasks_"


@functools.cache
def library_name() -> str:
    """``state_tasks_<hash of every script>``: this release's library (and the prefix of
    its functions' names, which Redis keeps in one namespace for all libraries)."""
    digest = hashlib.sha256("\0".join(source(name) for name in NAMES).encode()).hexdigest()
    return f"{LIBRARY_PREFIX}{digest[:16]}"


def function_name(name: str) -> str:
    """The Redis function that runs the script ``name``."""
    return f"{library_name()}_{name}"


@functools.cache
def library_source() -> str:
    """Every script as one Redis function library (``FUNCTION LOAD``): each script's text,
    unchanged, as the body of a Lua function of ``KEYS`` and ``ARGV``, registered under
    :func:`function_name`."""
    parts = [f"#!lua name={library_name()}\n"]
    for name in NAMES:
        parts.append(
            f"local function script_{name}(KEYS, ARGV)\n{source(name)}\nend\n"
            f"redis.register_function('{function_name(name)}', script_{name})\n"
        )
    return "".join(parts)


def install_functions(client: Any) -> bool:
    """Load this release's library with ``client`` (an administrator's): ``True`` if it was
    loaded now, ``False`` if it was there already. Idempotent; other releases' libraries are
    left alone (their workers may still run). On a Redis Cluster, give a client of every
    master (each keeps its own functions)."""
    try:
        client.execute_command("FUNCTION", "LOAD", library_source())
    except ResponseError as e:
        if "already exists" in str(e):
            return False
        raise
    return True


class MissingLibrary(Exception):
    """The server has no function library of this release."""


class FunctionScript:
    """A script run as its Redis function: ``FCALL`` (what the ``use_functions`` option
    asks for), with the interface of :class:`LuaScript` that the adapter uses."""

    def __init__(self, registered_client: Any, name: str) -> None:
        self.registered_client = registered_client
        self.name = name
        self.function = function_name(name)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The command that runs the function once (for a pipeline)."""
        return ("FCALL", self.function, len(keys), *keys, *args)

    def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        command = self.command(list(keys or ()), list(args or ()))
        if client is not None:
            return client.execute_command(*command)
        try:
            return self.registered_client.execute_command(*command)
        except ResponseError as e:
            raise missing_library(e) from e


def missing_library(error: BaseException) -> BaseException:
    """``error``, or :class:`MissingLibrary` when it says the function is not loaded."""
    if "function not found" in str(error).lower():
        return MissingLibrary(
            f"the Redis function library {library_name()} (this release's scripts) is not "
            "loaded: an administrator loads it with `state-tasks redis install-functions "
            "--url redis://admin:...@host:6379/0` (once per release, on every master of a "
            "cluster)"
        )
    return error


def script_command(script: Any, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    """The command that runs ``script`` once in a pipeline: ``EVALSHA`` or ``FCALL``."""
    if isinstance(script, FunctionScript):
        return script.command(keys, args)
    return ("EVALSHA", script.sha, len(keys), *keys, *args)
