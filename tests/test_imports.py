"""The package's imports follow the pipeline (docs/architecture.md, "Layers and rules").

Read from the source with ``ast``, so an import hidden inside a function counts as much as one
at the top of a module. Checked: no cycle between modules, none between packages (each module
collapsed to its top-level subpackage), no package importing a higher layer, and lazy imports
(inside functions) only at the CLI edge or of the heavy optional packages below.
"""

import ast
import sys
from pathlib import Path

import lensfinder

PACKAGE = Path(lensfinder.__file__).parent

# Lowest first. A package may import only packages of lower layers (and itself).
LAYERS: list[set[str]] = [
    {"machine"},  # the machine's facts: the package root reads them as it is imported
    {"lensfinder", "errors", "surveys"},  # the base: facts and helpers every stage uses
    {"files", "labels", "layout", "einstein", "mer"},
    {"config", "safety", "ensemble"},
    {"stages"},
    {"data"},
    {"presentation"},
    {"simulate", "models"},
    {"predict"},
    {"train"},
    {"evaluate", "scan"},
    {"experiments", "inspection", "demo"},
    {"cli"},
    {"testing"},
]
# Where a lensfinder-internal import may sit inside a function: the CLI (each verb imports its
# stage when it runs, so `lensfinder --help` starts in a blink) and the test helpers' own edge.
LAZY_EDGES = {"lensfinder.cli", "lensfinder.testing"}
# Lensfinder-internal lazy imports kept on purpose, each with its reason.
LAZY_ALLOWED = {
    ("lensfinder.scan.shards", "lensfinder.predict.predictor"):
        "the scan client plans and merges shards without torch; workers load the Predictor",
    ("lensfinder.scan.scanning", "lensfinder.predict.onnx_build"):
        "the scan client builds an ONNX file (torch) only on a cache miss",
    ("lensfinder.predict.predictor", "lensfinder.predict.onnx_build"):
        "an ONNX scan opens its cached file without the exporter (timm, onnx: ~2.5 s on 2 cores)",
    ("lensfinder.predict.predictor", "lensfinder.models.checkpoint"):
        "only the torch backend builds a torch model: an ONNX scan starts without timm (~2 s)",
}  # fmt: skip
# Third-party packages that cost start-up time or are optional: these may be imported lazily
# anywhere (any other import belongs at the top of its module).
HEAVY = {
    "torch", "torchmetrics", "lightning", "timm", "safetensors", "onnx", "onnxruntime",
    "fastapi", "uvicorn", "sqlalchemy", "psycopg", "matplotlib", "PIL", "lenstronomy", "dask",
    "distributed", "zarr", "pyarrow", "astropy", "scipy", "lenscat", "yaml", "tqdm",
    "threadpoolctl", "typer",
}  # fmt: skip


def _module_names(root: Path = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = ["lensfinder", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported name, line, inside a function) for every import of ``path``; a lensfinder
    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    kept = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*kept, *([child.module] if child.module else [])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in modules else base, child.lineno, lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the lensfinder modules it imports anywhere in its source."""
    modules = _module_names(root)
    return {
        name: {t for t, _, _ in _imports(name, path, modules) if t in modules} - {name}
        for name, path in modules.items()
    }


def package_of(module: str) -> str:
    """``lensfinder.data.store`` -> ``data``; ``lensfinder`` -> ``lensfinder``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        packages.setdefault(source, set()).update(package_of(t) for t in targets)
    return {p: targets - {p} for p, targets in packages.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def layer_violations(packages: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """``a -> b`` for every package that imports one of its own or a higher layer, and every
    package no layer names."""
    level = {p: i for i, layer in enumerate(layers) for p in layer}
    problems = [f"{p}: in no layer" for p in sorted(packages) if p not in level]
    for source, targets in sorted(packages.items()):
        for target in sorted(targets):
            if source in level and target in level and level[target] >= level[source]:
                problems.append(f"{source} -> {target}")
    return problems


def lazy_violations(root: Path = PACKAGE) -> list[str]:
    """Imports inside functions that the rule does not allow (see the constants above)."""
    modules = _module_names(root)
    problems = []
    for name, path in sorted(modules.items()):
        for target, line, lazy in _imports(name, path, modules):
            if not lazy or name in LAZY_EDGES or (name, target) in LAZY_ALLOWED:
                continue
            if target.split(".")[0] in HEAVY:
                continue
            problems.append(f"{path.relative_to(root.parent)}:{line}: {target}")
    return sorted(set(problems))


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_a_package_cycle_invisible_between_modules_is_found():
    """data.graded -> inspection.grades and inspection.app -> data.store: no module cycle, but
    the packages data and inspection lean on each other."""
    graph = {
        "lensfinder.data.graded": {"lensfinder.inspection.grades"},
        "lensfinder.inspection.grades": set(),
        "lensfinder.inspection.app": {"lensfinder.data.store"},
        "lensfinder.data.store": set(),
    }
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) == ["data", "inspection", "data"]


def test_a_planted_layer_violation_is_reported():
    layers = [{"data"}, {"presentation"}, {"scan"}]
    assert layer_violations({"data": set(), "scan": {"data", "presentation"}}, layers) == []
    assert layer_violations({"presentation": {"scan"}}, layers) == ["presentation -> scan"]
    assert layer_violations({"data": {"data2"}, "data2": set()}, layers) == [
        "data2: in no layer",
    ]


def test_a_planted_lazy_import_is_reported(tmp_path):
    root = tmp_path / "lensfinder"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "store.py").write_text(
        "import numpy\n\n\ndef f():\n    import zarr\n    from lensfinder.data import helper\n"
    )
    (root / "data" / "helper.py").write_text("def g():\n    import json\n")
    (root / "cli.py").write_text("def verb():\n    from lensfinder.data import store\n")
    assert lazy_violations(root) == [
        "lensfinder/data/helper.py:2: json",
        "lensfinder/data/store.py:6: lensfinder.data.helper",
    ]


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "lensfinder.data.store" in graph["lensfinder.data.source"]
    assert "lensfinder.simulate" in graph["lensfinder.cli"]  # imported inside a verb


def test_lensfinder_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lensfinder_has_no_package_cycles():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_no_package_imports_a_higher_layer():
    assert layer_violations(package_graph(import_graph()), LAYERS) == []


def test_lazy_imports_only_at_the_edge_or_of_heavy_packages():
    assert lazy_violations() == []


def test_stdlib_is_never_mistaken_for_heavy():
    assert not HEAVY & set(sys.stdlib_module_names)
