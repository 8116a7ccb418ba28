"""One table of the environment variables: every variable the package reads is in
state_tasks.core.environment.VARIABLES, and docs/configuration.md shows exactly that table."""

from __future__ import annotations

import re
from pathlib import Path

import state_tasks
from state_tasks.core.environment import VARIABLES, table

PACKAGE = Path(state_tasks.__file__).parent
DOCS = PACKAGE.parent / "docs" / "configuration.md"
#: How the package names a variable: a string constant of our prefixes.
NAMED = re.compile(r"[\"']((?:CELERY|STATE_TASKS|STATE|REDIS)_[A-Z_]+)[\"']")
#: Strings of that shape that are not environment variables.
NOT_VARIABLES = {"STATE_ERROR"}  # StateError's code


def test_every_variable_the_package_reads_is_in_the_table() -> None:
    named = {
        match
        for path in PACKAGE.rglob("*.py")
        if path.name != "environment.py"
        for match in NAMED.findall(path.read_text())
    }
    assert len(named) > 15  # the scan found them
    assert named - NOT_VARIABLES - {variable.name for variable in VARIABLES} == set()


def test_the_documented_table_is_the_table() -> None:
    text = DOCS.read_text()
    start = text.index("| variable | meaning | default |")
    documented = text[start : text.index("\n\n", start) + 1]
    assert documented == table(), "regenerate it: print(state_tasks.core.environment.table())"


def test_each_variable_is_listed_once() -> None:
    names = [variable.name for variable in VARIABLES]
    assert len(names) == len(set(names))
