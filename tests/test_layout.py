"""The rules that keep the code's shape, checked on the source (see the README's "Code layout").

1. A transport calls the exchange and writes what it is handed: it never reads or writes a
   session's queue, held connect or sink, nor the broker's table of sessions.
2. The broker core imports nothing of the HTTP layer or the cluster code.
3. No import cycles among the broker's modules (imports for type checking included).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cometd_broker"
TRANSPORTS = sorted((PACKAGE / "http").glob("*.py"))
# What only the exchange and the broker touch.
SESSION_INTERNALS = {"queue", "parked", "sessions", "latest_connect", "drained", "unpark", "park", "take_events"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Every cometd_broker module `path` imports, anywhere in it (functions and type-checking blocks too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself.
            targets = [f"{module}.{alias.name}" if _is_module(f"{module}.{alias.name}") else module
                       for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.startswith("cometd_broker"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def test_transports_never_touch_session_internals():
    offences = []
    for path in TRANSPORTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in SESSION_INTERNALS:
                offences.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr == "sink":
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id == "ctx"):
                    offences.append(f"{path.name}:{node.lineno} .sink of something other than the request context")
    assert not offences, "transports must go through the exchange:\n" + "\n".join(offences)


def test_the_broker_core_imports_no_http_or_cluster_code():
    core = [PACKAGE / name for name in ("broker.py", "session.py", "bayeux.py", "channel.py", "exchange.py")]
    forbidden = ("cometd_broker.http", "cometd_broker.routing", "cometd_broker.forwarding",
                 "cometd_broker.app", "cometd_broker.serving", "cometd_broker.private_port")
    offences = [f"{path.name} imports {target}" for path in core for target in _imports(path)
                if target.startswith(forbidden)]
    assert not offences, offences


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
