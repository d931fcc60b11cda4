"""The layering of asrq (docs/architecture.md), checked on the source: every import, top-level
and function-local, read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "asrq"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The asrq modules ``module`` imports anywhere in its body (``from pkg import mod`` counts
    as importing ``pkg.mod`` when that is a module, else ``pkg``)."""
    f = MODULES[module]
    is_pkg = f.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "asrq" and (r := _resolve(t)) and r != module:
                out.add(r)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_function_local_imports():
    # asrq.export.pipeline imports asrq.train.checkpoint inside export_model only
    assert "asrq.train.checkpoint" in GRAPH["asrq.export.pipeline"]
    assert "asrq.runtime.heads" in GRAPH["asrq.runtime.transcribe"]


def test_no_import_cycles_in_asrq():
    graph = {m: {t for t in ts if not MODULES[t].name == "__init__.py"} for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: (importer package, packages it must not import): the top of docs/architecture.md's table
FORBIDDEN: list[tuple[str, tuple[str, ...]]] = [
    # only the experiment drivers, the CLI and the recipe stages sit above the library
    *[
        (layer, ("asrq.experiments", "asrq.cli", "asrq.pipeline"))
        for layer in (
            "asrq.config",
            "asrq.data",
            "asrq.models",
            "asrq.losses",
            "asrq.decode",
            "asrq.train",
            "asrq.supernet",
            "asrq.export",
            "asrq.runtime",
            "asrq.bench",
            "asrq.utils",
            "asrq.testing",
        )
    ],
    ("asrq.pipeline", ("asrq.experiments", "asrq.cli")),
    ("asrq.cli", ("asrq.experiments",)),
    # a runtime builds no torch model and never needs the exporter
    ("asrq.runtime", ("asrq.models", "asrq.export", "asrq.bench", "asrq.train", "asrq.supernet")),
    ("asrq.export", ("asrq.bench", "asrq.supernet")),
    ("asrq.bench", ("asrq.export", "asrq.train")),
]


@pytest.mark.parametrize(("layer", "forbidden"), FORBIDDEN)
def test_layers_import_only_downwards(layer: str, forbidden: tuple[str, ...]):
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in GRAPH.items()
        if _in(m, layer)
        for t in ts
        if any(_in(t, f) for f in forbidden)
    )
    assert bad == []


def test_nothing_outside_the_experiments_imports_them():
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in GRAPH.items()
        if not _in(m, "asrq.experiments")
        for t in ts
        if _in(t, "asrq.experiments")
    )
    assert bad == []


def test_head_names_live_in_the_head_tables():
    """The runtime, export and bench layers decide a head by table lookup, never by comparing
    its name: the names appear only in the modules holding the tables (and in prose)."""
    tables = {"asrq.runtime.heads", "asrq.export.heads", "asrq.bench.steps"}
    for m, f in MODULES.items():
        if m in tables or not any(_in(m, p) for p in ("asrq.runtime", "asrq.export", "asrq.bench")):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                names = {
                    c.value
                    for c in ast.walk(node)
                    if isinstance(c, ast.Constant) and c.value in ("rnnt", "ctc_attention")
                }
                assert not names, f"{m}:{node.lineno} compares against a head name {names}"
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not keys & {"rnnt", "ctc_attention"}, f"{m}:{node.lineno}: a head table"
