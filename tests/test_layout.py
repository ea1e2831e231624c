"""The package's shape: one list of public names, and imports that point one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import django_relay

PACKAGE = Path(django_relay.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """django_relay modules that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in known}
    # The package itself is the lazy public facade: importing it runs nothing.
    return found - {name, "django_relay"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_imports_point_one_way():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_public_names_are_listed_once_and_all_resolve():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    assert typed == set(django_relay._EXPORTS)
    for name in django_relay.__all__:
        assert getattr(django_relay, name) is not None


#: Importable from anywhere: they import no other django_relay module but each other.
LEAVES = {
    "django_relay.conf",
    "django_relay.codec",
    "django_relay.exceptions",
    "django_relay.signals",
    "django_relay.context",
    "django_relay.pg",
    "django_relay.logs",
    "django_relay.stats",
}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_queries_and_models_import_only_each_other_and_leaves():
    graph = _graph()
    lower = {name for name in graph if name.startswith("django_relay.queries")}
    lower.add("django_relay.models")
    for name in lower:
        above = graph[name] - lower - LEAVES
        assert not above, f"{name} imports from a layer above it: {sorted(above)}"


def test_engine_and_listener_never_import_the_admin():
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith(("django_relay.engine", "django_relay.listener")):
            admin = {i for i in imported if i.startswith("django_relay.admin")}
            assert not admin, f"{name} imports {sorted(admin)}"


def test_the_listener_never_imports_the_engine():
    # The engine runs on top of the listener (its wake-ups), never the other way round.
    graph = _graph()
    for name, imported in graph.items():
        if name.startswith("django_relay.listener"):
            engine = {i for i in imported if i.startswith("django_relay.engine")}
            assert not engine, f"{name} imports {sorted(engine)}"


def test_state_changing_sql_lives_in_queries():
    # relaybench's raw floor is the documented exception (its docstring says why).
    allowed = ("queries", "migrations", "management/commands/relaybench.py")
    statement = re.compile(r"\b(UPDATE\s+django_relay_|INSERT\s+INTO\s|DELETE\s+FROM\s)")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if not str(path.relative_to(PACKAGE)).startswith(allowed)
        and statement.search(path.read_text())
    ]
    assert offenders == []
