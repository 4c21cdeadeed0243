"""scripts/ dependencies point one way (README, Layout): architectures use nothing,
building uses architectures, measuring and monitoring use building, never the reverse;
and no two modules import each other, however indirectly."""

import ast
from pathlib import Path

from scripts.zoo import REPO

SCRIPTS = REPO / "scripts"
# folder (or top-level module) -> the folders it may import from
ALLOWED = {
    "zoo": set(),
    "ts_api": set(),
    "child_process": set(),
    "samples": set(),
    "nets": set(),
    "families": {"nets", "zoo"},
    "building": {"families", "nets", "zoo"},
    "serve": {"child_process", "setup", "ts_api", "zoo"},  # replicas.py runs the HAProxy setup.haproxy provides
    "setup": {"zoo"},
    "bench": {"building", "child_process", "client", "families", "nets", "samples", "serve", "ts_api", "zoo"},
    "monitor": {"building", "zoo"},
    "client": {"ts_api", "zoo"},  # nothing of the servers' harness or the benchmarks
    "web": {"child_process", "client", "ts_api", "zoo"},  # the page is a client of TorchServe like any other
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """The scripts.* modules `path` imports (from-imports of a package count as its __init__)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found |= {name for name in names if name.startswith("scripts.")}
    return found


def group(module: str) -> str:
    """scripts.building.compile -> "building"; scripts.zoo -> "zoo"."""
    return module.split(".")[1]


GRAPH = {module_name(path): imports(path) for path in SCRIPTS.rglob("*.py") if path != SCRIPTS / "__init__.py"}


def test_every_folder_imports_only_what_it_may():
    assert set(map(group, GRAPH)) <= set(ALLOWED), "a new folder: say what it may import"
    wrong = {
        (module, imported)
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if group(imported) != group(module) and group(imported) not in ALLOWED[group(module)]
    }
    assert not wrong


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in GRAPH.get(module, ()):
            assert state.get(imported) != "open", " -> ".join([*path, module, imported])
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [])


# scripts/bench: the toolkit every experiment may use, and what an experiment may import besides.
BENCH_TOOLKIT = {"harness", "loadgen", "alone", "doc", "nvml"}
BENCH_OWN_PARTS = {"endtoend": {"endtoend_report"}}


def test_no_benchmark_imports_another():
    """The measuring code is a toolkit plus experiments that compose it, never each other."""
    for module, imported_modules in GRAPH.items():
        if not module.startswith("scripts.bench.") or module.split(".")[-1] in BENCH_TOOLKIT | {"__init__"}:
            continue
        experiment = module.split(".")[-1]
        others = {name.split(".")[2] for name in imported_modules if name.startswith("scripts.bench.")}
        assert others <= BENCH_TOOLKIT | BENCH_OWN_PARTS.get(experiment, set()), (module, others)
