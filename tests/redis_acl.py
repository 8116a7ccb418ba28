"""Restricted Redis users made with the documentation's own ``ACL SETUSER`` line."""

from __future__ import annotations

import re
import uuid

import redis
from helpers import REPO

from state_tasks.contrib.servers import RedisServer

#: The page that holds the line (Security, "Least privilege on Redis").
ACL_DOC = REPO / "docs" / "security.md"


def readme_acl_line(functions: bool = False) -> str:
    """One of the two ``ACL SETUSER`` lines of :data:`ACL_DOC`: the scripts' (``EVALSHA``),
    or with ``functions`` the one for ``use_functions: true`` (``FCALL``)."""
    lines = re.findall(r"^ACL SETUSER .+$", ACL_DOC.read_text(), re.MULTILINE)
    assert len(lines) == 2, lines
    (line,) = [line for line in lines if ("+fcall " in line) == functions]
    return line


def make_restricted_user(server: RedisServer, prefix: str, functions: bool = False) -> str:
    """Run a documented line on ``server`` for ``prefix``; return a URL as that user (db 0)."""
    user, password = f"state-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    line = (
        readme_acl_line(functions)
        .replace("state-adapter", user)
        .replace("<password>", password)
        .replace("~state:*", f"~{prefix}:*")
    )
    admin = redis.Redis(port=server.port, password=server.password)
    admin.execute_command(*line.split())  # type: ignore[no-untyped-call]
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
