"""The package's shape, checked by machine: no import cycles, dependencies one way.

Layers of the daemon, lowest first: core <- host <- mapping_types <- server <- cli.
A module may import its own layer and the ones below it. The SDK (bufbroker)
never imports the daemon (bufbroker_broker). Every import counts, including
ones inside functions and under TYPE_CHECKING: a lazy import is still a
dependency, and a cycle hidden behind one is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "bufbroker_broker": ROOT / "broker" / "bufbroker_broker",
    "bufbroker": ROOT / "clients" / "python" / "bufbroker",
}
LAYERS = ["core", "host", "mapping_types", "server", "cli"]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (the named module, or its package when the name is not a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            candidates = [m if m in MODULES else base for m in submodules]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "bufbroker_broker" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
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

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_both_packages_and_their_imports():
    assert "bufbroker_broker.core.registry" in MODULES and "bufbroker.session" in MODULES
    assert "bufbroker_broker.core.negotiate" in GRAPH["bufbroker_broker.core.registry"]


def test_no_module_imports_itself_back_through_others():
    assert _cycles() == [], "import cycles (each list imports itself back): " + repr(_cycles())


def test_each_layer_imports_only_itself_and_the_layers_below():
    wrong = [
        f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
        for module, targets in GRAPH.items()
        if _layer(module) is not None
        for target in targets
        if _layer(target) is not None and _layer(target) > _layer(module)
    ]
    assert not wrong, "imports against the layering core <- host <- mapping_types <- server <- cli:\n" + "\n".join(
        wrong
    )


def test_the_sdk_never_imports_the_daemon():
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == "bufbroker"
        for target in targets
        if target.split(".")[0] == "bufbroker_broker"
    ]
    assert not wrong, "\n".join(wrong)


def test_the_core_uses_only_the_standard_library_and_the_wire_contract():
    # bufbroker.formats: the format table, the names and codes the wire's FormatPair and Layout carry
    # (pure data and arithmetic, standard library only).
    allowed_sdk = ("bufbroker.v1", "bufbroker.protocol", "bufbroker.formats")
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) != 0:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for imported in names:
                top = imported.split(".")[0]
                if top in ("os", "fcntl", "socket", "select", "mmap", "subprocess", "ctypes", "pathlib"):
                    wrong.append(f"{module} imports {imported}: the core does no syscalls")
                elif top == "bufbroker" and not imported.startswith(allowed_sdk):
                    wrong.append(f"{module} imports {imported}: only the wire contract ({', '.join(allowed_sdk)})")
                elif top == "bufbroker_broker" and not imported.startswith("bufbroker_broker.core"):
                    wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)
