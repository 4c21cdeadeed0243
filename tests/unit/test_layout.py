"""scripts/ dependencies point one way (README, Layout): architectures use nothing,
building uses architectures, measuring and monitoring use building, never the reverse;
and no two modules import each other, however indirectly. handlers/ is a package that
stands alone inside an archive, in small parts."""

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
    "families": {"nets", "samples", "zoo"},  # a build checks its parity on the sample photos
    "building": {"child_process", "families", "nets", "zoo"},  # archive.py runs torch-model-archiver
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


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in graph.get(module, ()):
            assert state.get(imported) != "open", " -> ".join([*path, module, imported])
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_no_import_cycle():
    assert_no_cycle(GRAPH)


HANDLERS = REPO / "handlers"
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 200, 50


def test_the_handlers_package_stands_alone_without_cycles():
    """Nothing of scripts/ (an archive carries handlers/ only), and no two modules importing
    each other (scripts/building/archive.py follows the imports to pack a task's modules)."""
    graph = {}
    for path in HANDLERS.rglob("*.py"):
        module = module_name(path).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                target = ".".join(part for part in (base, node.module or "") if part)
                found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        assert not {name for name in found if name.split(".")[0] == "scripts"}, path
        graph[module] = {name for name in found if name.split(".")[0] == "handlers" and name != module}
    known = set(graph)
    assert_no_cycle({module: imported & known for module, imported in graph.items()})


def test_handler_classes_and_functions_stay_small():
    for path in HANDLERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                assert node.end_lineno - node.lineno < limit, f"{path.name}: {node.name}"


def test_each_entry_module_defines_one_handler_class_naming_its_task():
    for path in HANDLERS.glob("*_handler.py"):
        classes = [node for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)]
        assert len(classes) == 1 and [base.id for base in classes[0].bases] == ["ZooHandler"], path


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
