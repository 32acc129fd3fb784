"""The house plan of docs/design.md, checked against the code's own imports (lazy ones inside functions included).

Every module of ``iqvae`` belongs to one layer; a module may import only from its own layer or the layers below it,
and no set of modules imports each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "iqvae"

# Bottom to top, as in docs/design.md "The house plan".  Keys are module paths relative to iqvae (a package name
# covers everything under it).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "machine", "config", "checkpoint", "viz", "report"),
    ("modalities",),
    ("data", "condition_io"),
    ("models",),
    ("codes",),
    ("metrics",),
    ("losses",),
    ("sampling", "sampler_flags"),
    ("train",),
    ("pipeline",),
    ("evaluation",),
    ("cli", "demo", "web", "sample_commands", "presets_cmd", "stages", "bench", "__init__"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return i
    raise AssertionError(f"module iqvae.{module} is in no layer of tests/test_layers.py: add it to the house plan")


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The iqvae modules (relative to iqvae) that a ``from ... import ...`` statement reads."""
    if node.level == 0:
        if not (node.module or "").startswith("iqvae"):
            return []
        base = (node.module or "")[len("iqvae"):].lstrip(".")
    else:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        base = ".".join(pkg + ([node.module] if node.module else []))
    out = []
    for alias in node.names:  # `from . import x` may name a submodule
        cand = f"{base}.{alias.name}" if base else alias.name
        out.append(cand if (SRC / Path(*cand.split("."))).with_suffix(".py").exists()
                   or (SRC / Path(*cand.split("."))).is_dir() else base)
    return [m for m in out if m]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        mod = module_name(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                deps.update(resolve(mod, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                deps.update(a.name[len("iqvae."):] for a in node.names if a.name.startswith("iqvae."))
        graph[mod] = {d for d in deps if d != mod}
    return graph


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_imports_point_down():
    graph = import_graph()
    upward = [f"iqvae.{m} (layer {layer_of(m)}) imports iqvae.{d} (layer {layer_of(d)})"
              for m, deps in graph.items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "imports that run up the house plan:\n" + "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert strongly_connected(import_graph()) == []


def test_the_checks_can_fail():
    """The oracle itself: a circle and an upward import are found."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("nowhere")
    assert layer_of("train.loop") > layer_of("metrics.fd") > layer_of("modalities.seg") > layer_of("errors")
