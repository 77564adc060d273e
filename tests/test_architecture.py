"""The package's floors, read from the source (every import, function-level ones too): no import circles,
the config imports none of the machinery, the method (train/) imports neither inference nor evidence nor
the run machinery, and no floor imports a higher one (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raymh"
# lowest first; a module may import its own floor and the ones below it
FLOORS = [
    ("raymh.errors", "raymh.conventions", "raymh.selectors", "raymh.streams", "raymh.console", "raymh.config"),
    ("raymh.platform",),
    ("raymh.data", "raymh.model", "raymh.losses"),
    ("raymh.train",),
    ("raymh.infer",),
    ("raymh.run",),
    ("raymh.tune", "raymh.evidence"),
    ("raymh.cli", "raymh.config_docs", "raymh"),
]
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """{module: the raymh modules it imports anywhere in its source}."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module`: the module
                targets = [t for t in subs if t in modules] or [node.module]
            else:
                continue
            found |= {t for t in targets if t in modules}  # `from raymh.x import y`: y may be a module
        out[name] = found - {name}
    return out


def _floor(module: str) -> int:
    best = None
    for i, names in enumerate(FLOORS):
        for prefix in names:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} belongs to no floor: add it to FLOORS (and docs/architecture.md)"
    return best[0]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parents(module: str) -> set[str]:
    """A package imports its parent packages' __init__ implicitly: those edges are not design."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _imports()


def test_no_module_imports_itself_in_a_circle(graph):
    assert _circles(graph) == []


def test_the_circle_check_sees_function_level_imports():
    fake = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _circles(fake) == [["a", "b"]]
    assert "raymh.platform.records" in _imports()["raymh.train.checkpoint"]  # imported inside find_checkpoint


def test_the_config_imports_none_of_the_machinery(graph):
    allowed = ("raymh.config", "raymh.errors", "raymh.selectors", "raymh.conventions")
    for module, targets in graph.items():
        if module.startswith("raymh.config.") or module == "raymh.config":
            assert all(t.startswith(allowed) for t in targets), (module, sorted(targets))


def test_the_method_imports_no_inference_evidence_or_run_machinery(graph):
    for module, targets in graph.items():
        if module.startswith("raymh.train"):
            bad = [t for t in targets if t.startswith(("raymh.infer", "raymh.evidence", "raymh.run", "raymh.tune"))]
            assert not bad, (module, bad)


def test_no_floor_imports_a_higher_one(graph):
    upward = [
        f"{m} -> {t}" for m, targets in graph.items() for t in targets
        if t not in _parents(m) and _floor(t) > _floor(m)
    ]  # fmt: skip
    assert upward == []


def test_no_module_is_over_the_line_budget():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
