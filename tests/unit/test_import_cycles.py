"""Dependencies point one way: no import cycle anywhere in the package, imports inside
functions and under ``TYPE_CHECKING`` included, and the core imports no adapter and no
Celery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import state_tasks

PACKAGE = Path(state_tasks.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module of the package that ``path`` imports, wherever the import is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports that module; `from module import name`
            # the module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for target in targets:
            while target and target not in modules:  # the module, or the package holding it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_no_adapter_and_no_celery() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("state_tasks.core"):
            outside = {t for t in targets if not t.startswith("state_tasks.core")}
            # the adapters' contract and record protocol are the core's to use, no adapter
            assert outside <= {"state_tasks.adapters.base", "state_tasks.adapters.records"}, (
                module,
                outside,
            )


def test_a_kvstore_deployment_is_configured_without_redis_py_or_celery() -> None:
    # Given an interpreter where redis-py and Celery cannot be imported
    script = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "sys.modules['celery'] = None\n"
        "from state_tasks.config import parse_config\n"
        "document = {'modules': [{'class': 'modules::state::StateModule', 'config': {\n"
        "    'adapter': {'class': 'kv', 'config': {'store_method': 'in_memory'}}}}]}\n"
        "adapter = parse_config(document, 'state.yaml').build_adapter()\n"
        "print(type(adapter).__name__)\n"
    )
    # When a KvStore state.yaml is read and its adapter built
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    # Then neither was needed
    assert done.returncode == 0, done.stderr
    assert done.stdout == "KvStore\n"
