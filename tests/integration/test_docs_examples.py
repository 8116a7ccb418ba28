"""The documentation's examples, run: every ```python block of README.md and docs/*.md.

A page's runnable blocks run in order in one interpreter, as a reader pastes them, against
a real worker on the embedded default (``celery -A state_tasks worker`` with nothing set, in
a folder of the test's own). A block that should not run says so in an HTML comment on the
line before it (docs/contributing.md, "The documentation"):

- ``<!-- docs-test: skip (why) -->``: not run; the reason is required and :data:`SKIPPED`
  counts the skipped blocks per page, so none is skipped silently;
- ``<!-- docs-test: excerpt examples/x.py -->``: its lines appear in that file, in order;
- ``<!-- docs-test: worker -->``: a handler module, which the worker loads with ``-I``.

The YAML blocks that are a ``state.yaml`` (or an ``adapter:`` fragment of one) must pass the
config loader and build their adapter. The strict site build (``mkdocs build --strict``,
in scripts/test) checks the links.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import OUR_VARIABLES, REPO, Worker

from state_tasks.config import STATE_MODULE_CLASS, parse_config

# The worker picks its own broker (the embedded default): no second run on RabbitMQ.
pytestmark = pytest.mark.own_broker

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Skipped ```python blocks per page; a new skip must be added here on purpose.
SKIPPED = {"docs/guarantees.md": 1, "docs/operations.md": 1, "docs/triggers.md": 2}
README_MAX_LINES = 300

_MARKER = re.compile(r"^\s*<!-- docs-test: (?P<kind>skip|excerpt|worker)(?: (?P<arg>.*?))? -->$")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # the line number of its first line of code
    lang: str
    code: str
    #: "run", or the marker before it: "skip", "excerpt", "worker".
    kind: str = "run"
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, each with the marker on the line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("<!-- docs-test:"):
            following = lines[index + 1] if index + 1 < len(lines) else ""
            assert _MARKER.match(line) and _FENCE.match(following), (
                f"{page.relative_to(REPO)}:{index + 1}: {line!r} must be a known marker "
                "on the line just before a fenced block"
            )
        opening = _FENCE.match(line)
        if opening is None:
            index += 1
            continue
        closing = f"{opening['indent']}```"
        end = next(i for i in range(index + 1, len(lines)) if lines[i].rstrip() == closing)
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        found.append(
            Block(
                page,
                index + 2,
                opening["lang"],
                textwrap.dedent("\n".join(lines[index + 1 : end])) + "\n",
                marker["kind"] if marker else "run",
                (marker["arg"] or "") if marker else "",
            )
        )
        index = end + 1
    return found


def all_blocks(lang: str) -> list[Block]:
    return [block for page in PAGES for block in read_blocks(page) if block.lang == lang]


def test_every_python_block_compiles_and_every_marker_says_why() -> None:
    for block in all_blocks("python"):
        compile(block.code, block.where, "exec")
        if block.kind == "skip":
            assert re.fullmatch(r"\(.+\)", block.arg), f"{block.where}: skip needs a (reason)"
    for page in PAGES:
        for block in read_blocks(page):
            assert block.kind == "run" or block.lang == "python", (
                f"{block.where}: a docs-test marker stands before a ```python block only"
            )


def test_skipped_blocks_are_the_counted_ones() -> None:
    skipped = [block for block in all_blocks("python") if block.kind == "skip"]
    per_page = Counter(str(block.page.relative_to(REPO)) for block in skipped)
    assert dict(per_page) == SKIPPED, "\n".join(f"{b.where} {b.arg}" for b in skipped)


def test_excerpts_match_their_files() -> None:
    excerpts = [block for block in all_blocks("python") if block.kind == "excerpt"]
    assert excerpts
    for block in excerpts:
        source = iter((REPO / block.arg).read_text(encoding="utf-8").splitlines())
        for line in filter(str.strip, block.code.splitlines()):
            # each line of the excerpt, in order, is a line of the file
            assert any(candidate == line for candidate in source), (
                f"{block.where}: {line!r} is not in {block.arg} (in this order)"
            )


def test_state_yaml_blocks_pass_the_config_loader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    checked = 0
    for block in all_blocks("yaml"):
        for name in re.findall(r"\$\{(\w+)\}", block.code):
            monkeypatch.setenv(name, "secret")  # a variable the reader sets
        document = yaml.safe_load(block.code)
        if isinstance(document, dict) and set(document) == {"adapter"}:
            document = {"modules": [{"class": STATE_MODULE_CLASS, "config": document}]}
        elif not (isinstance(document, dict) and "modules" in document):
            continue
        parse_config(document, block.where).build_adapter()
        checked += 1
    assert checked >= 8, checked


def test_the_readme_stays_short() -> None:
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


@pytest.fixture(scope="module")
def docs_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker on the embedded default that loads the docs' worker blocks."""
    workdir = tmp_path_factory.mktemp("docs")
    modules = workdir / "modules"
    modules.mkdir()
    names = []
    for number, block in enumerate(b for b in all_blocks("python") if b.kind == "worker"):
        name = f"docs_worker_block_{number}"
        (modules / f"{name}.py").write_text(f"# {block.where}\n{block.code}")
        names.append(name)
    worker = Worker(workdir, {}, includes=tuple(names), pythonpath=[modules])
    worker.start()
    yield worker
    worker.stop()


RUNNABLE_PAGES = [
    page for page in PAGES if any(b.kind == "run" and b.lang == "python" for b in read_blocks(page))
]

#: Runs a page's blocks in order in one namespace; tracebacks name the page and its line.
RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for path, line, code in json.load(open(sys.argv[1])):
    exec(compile("\\n" * (line - 1) + code, path, "exec"), namespace)
"""


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_the_page_examples_run_against_a_worker(page: Path, docs_worker: Worker) -> None:
    runnable = [b for b in read_blocks(page) if b.kind == "run" and b.lang == "python"]
    blocks_file = docs_worker.workdir / f"{page.stem}.blocks.json"
    blocks_file.write_text(json.dumps([[str(b.page), b.line, b.code] for b in runnable]))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(blocks_file)],
        cwd=docs_worker.workdir,  # the client finds the worker's embedded broker there
        env={k: v for k, v in os.environ.items() if k not in OUR_VARIABLES},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nworker log:\n{docs_worker.tail()}"
