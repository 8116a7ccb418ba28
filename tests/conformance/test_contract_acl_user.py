"""The adapter contract on Redis as the least-privileged user of docs/security.md's Security
section: only the adapter's key prefix, only the commands it sends.

Every test of ``test_contract.py`` and ``test_batch_paging.py`` runs again here, once, with the RedisAdapter connected
as a user made by docs/security.md's exact ``ACL SETUSER`` line; a command or key the line
forgot fails the test with ``NOPERM``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_acl import make_restricted_user, readme_acl_line
from test_batch_paging import *  # noqa: F403  (batches, get_many, pages: the same)
from test_contract import *  # noqa: F403  (the contract's tests, collected again here)

import state_tasks.adapters.redis as redis_package
from state_tasks.adapters.base import StateAdapter
from state_tasks.adapters.redis import RedisAdapter
from state_tasks.adapters.redis.admin import install_functions
from state_tasks.adapters.redis.scripts import FunctionScript, library_name
from state_tasks.contrib.servers import RedisServer
from state_tasks.core.errors import AdapterError


@pytest.fixture(scope="module")
def installed_functions(redis_server: RedisServer) -> None:
    """This release's function library, loaded as an administrator would."""
    install_functions(redis_server.url(0))


@pytest.fixture(params=["scripts", "functions"])
def make_adapter(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Any]:
    """The adapter as a user of the scripts' line (EVALSHA), or of the functions' line
    (FCALL only) with ``use_functions: true``: the same contract, both ways."""
    opened: list[StateAdapter] = []
    functions = request.param == "functions"
    if functions:
        request.getfixturevalue("installed_functions")

    def make(**settings: Any) -> StateAdapter:
        prefix = f"acl-{uuid.uuid4().hex[:10]}"
        url = make_restricted_user(redis_server, prefix, functions)
        if functions:
            settings = {"use_functions": True, **settings}
        adapter = RedisAdapter(redis_url=url, key_prefix=prefix, **settings)
        adapter.open()
        opened.append(adapter)
        return adapter

    yield make
    for adapter in opened:
        adapter.close()


def test_the_restricted_user_cannot_touch_keys_outside_its_prefix(
    redis_server: RedisServer,
) -> None:
    # Given a key of someone else's on the same Redis, and a user for the prefix "mine"
    admin = redis.Redis(port=redis_server.port, password=redis_server.password)
    admin.set("other:secret", "42")
    admin.hset("other:s:{scope}", "k", "1")
    url = make_restricted_user(redis_server, "mine")
    as_user = redis.Redis.from_url(url)
    # Then the user can neither read nor write it, nor list the keyspace or reconfigure
    for command in (
        ("GET", "other:secret"),
        ("HGET", "other:s:{scope}", "k"),
        ("SET", "other:secret", "0"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "other:secret"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_user.execute_command(*command)  # type: ignore[no-untyped-call]
    # And an adapter built with another prefix on this user's URL fails with ADAPTER_ERROR
    wrong = RedisAdapter(redis_url=url, key_prefix="other")
    with pytest.raises(AdapterError, match=r"no permissions"):
        wrong.get("scope", "k")
    assert admin.get("other:secret") == b"42"


def test_the_readme_line_allows_every_command_the_adapter_sends() -> None:
    """A guard for changes to the adapter: a new command must be added to docs/security.md's
    line (and the contract above then shows that the line suffices)."""
    folder = Path(redis_package.__file__).parent
    files = [*folder.glob("*.py"), *folder.glob("lua/*.lua")]
    assert len(files) > 10, files
    source = "\n".join(path.read_text() for path in files)
    calls = re.findall(r"redis\.call\('([A-Z]+)'(?:, '([A-Z]+)')?", source)
    # a container command is granted by subcommand (XINFO STREAM -> xinfo|stream)
    in_scripts = {f"{name}|{sub}" if name in ("XINFO",) else name for name, sub in calls}
    called = re.findall(r"(?:self\.client|pipe)\.([a-z]+)\(", source)
    from_python = {name.upper() for name in called if name not in ("pipeline", "execute")}
    sent = in_scripts | from_python | {"EVALSHA", "SCRIPT|LOAD", "PING"}
    allowed = {word[1:].upper() for word in readme_acl_line().split() if word.startswith("+")}
    assert sent - allowed == set(), "add these to the ACL SETUSER line of docs/security.md"
    # The functions' line: the same, FCALL for EVALSHA and SCRIPT LOAD
    sent = (sent - {"EVALSHA", "SCRIPT|LOAD"}) | {"FCALL"}
    line = readme_acl_line(functions=True)
    allowed = {word[1:].upper() for word in line.split() if word.startswith("+")}
    assert sent - allowed == set(), "add these to the second ACL SETUSER line"
    assert not {"EVAL", "EVALSHA", "SCRIPT", "SCRIPT|LOAD", "FUNCTION"} & allowed, line


def test_the_functions_user_cannot_load_or_run_code_of_its_own(
    redis_server: RedisServer, installed_functions: None
) -> None:
    # Given a user of the functions' line
    as_user = redis.Redis.from_url(make_restricted_user(redis_server, "fn", functions=True))
    # Then it can run none of its own code: no script, no function of its own
    for command in (
        ("EVAL", "return 1", "0"),
        ("SCRIPT", "LOAD", "while true do end"),
        ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
        ("FUNCTION", "LOAD", "#!lua name=mine\nredis.register_function('f', function() end)"),
        ("FUNCTION", "DELETE", library_name()),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_user.execute_command(*command)  # type: ignore[no-untyped-call]


def test_without_the_library_a_functions_adapter_names_the_install_command(
    redis_server: RedisServer,
) -> None:
    # Given an adapter with use_functions on a db of a server... whose library is another
    # release's (a library name no release has)
    admin = redis.Redis(port=redis_server.port, password=redis_server.password)
    adapter = RedisAdapter(redis_url=redis_server.url(0), key_prefix="nofn", use_functions=True)
    adapter._scripts["get"] = FunctionScript(adapter.client, "get")
    adapter._scripts["get"].function = "state_tasks_0000000000000000_get"
    try:
        # When it reads, Then the error names the command to run
        with pytest.raises(AdapterError, match="state-tasks redis install-functions"):
            adapter.get("s", "k")
    finally:
        adapter.close()
    assert admin.ping()
