"""The rules that keep the code's shape, checked on the source (see the README's "Code layout").

1. A transport calls the exchange and writes what it is handed: it never reads or writes a
   session's queue, held connect or sink, nor the broker's table of sessions.
2. The broker core imports nothing of the HTTP layer or the cluster code.
3. No import cycles among the broker's modules (imports for type checking included).
4. The contact-center domain (conversations, offer routing, workbins, the model, the gateway's conference
   model) imports no web code: neither aiohttp nor the HTTP edges (`channels/gws/`, `channels/huawei/`);
   the handlers translate its errors at the edge.
5. No module of `channels/` (its subpackages included) is over about 400 lines, except those listed with the
   reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cometd_broker"
CHANNELS = PACKAGE.parent / "channels"
TRANSPORTS = sorted((PACKAGE / "http").glob("*.py"))
# What only the exchange and the broker touch.
SESSION_INTERNALS = {"queue", "parked", "sessions", "latest_connect", "drained", "unpark", "park", "take_events"}


# The contact-center domain: it knows requests only as values and fails with errors.py's errors.
DOMAIN = {"channels.model", "channels.routing", "channels.workbins", "channels.errors", "channels.params",
          "channels.store", "channels.conversation", "channels.conversation_core", "channels.conversation_operations",
          "channels.conversation_repository", "channels.conversation_pruning", "channels.customer_side",
          "channels.outbox", "channels.publication", "channels.gateway_conferences", "channels.gateway_sessions",
          "channels.gateway_refusals", "channels.gateway_writes", "channels.write_budget"}
# The HTTP edges, which translate between requests and the domain.
EDGES = ("channels.gws", "channels.huawei")
# Modules allowed over MAX_LINES (their paths under channels/), and why.
LONG_MODULES = {
    "huawei/agentgateway.py": "the Huawei agent gateway, reworked on its own into a model and its HTTP edge",
    "auth.py": "logins, sessions, CSRF and the throttle of the GWS edge; to be split with the gws/ edge",
    "gws/openapi.py": "one declarative OpenAPI document of every route; long by nature, not by mixing jobs",
    "app.py": "the wiring and the plugin's documented options, one help text per flag",
}
MAX_LINES = 400


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
    return {target for target in _all_imports(path) if target.startswith("cometd_broker")}


def _all_imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved, anywhere in it."""
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
        found.update(targets)
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
    forbidden = ("cometd_broker.http", "cometd_broker.cluster", "cometd_broker.app", "cometd_broker.serving")
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


def test_the_contact_center_domain_imports_no_web_code():
    offences = []
    for name in sorted(DOMAIN):
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        for target in _all_imports(path):
            if target.split(".")[0] == "aiohttp" or target.startswith(EDGES):
                offences.append(f"{name} imports {target}")
            elif target.startswith("channels") and target not in DOMAIN | {"channels"}:
                offences.append(f"{name} imports {target}, which is not domain")
    assert not offences, offences


def test_channels_modules_stay_small():
    modules = [*CHANNELS.glob("*.py"), *CHANNELS.glob("*/*.py")]  # not desktop/node_modules: not ours
    lengths = {path.relative_to(CHANNELS).as_posix(): len(path.read_text().splitlines()) for path in modules}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}; split them by responsibility"
    assert set(LONG_MODULES) <= set(lengths), "LONG_MODULES names a module that is gone"
