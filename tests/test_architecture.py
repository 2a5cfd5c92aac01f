"""The package's shape, read from its source: subpackages whose imports flow one way, no import cycles, imports
at the top of a module except the heavy libraries kept lazy, and modules and functions small enough to read."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "hpccnn"
# what each subpackage may import besides itself (and the standard library and third-party packages);
# launching imports training, never the reverse; nothing imports the benchmark or the reports
MAY_IMPORT = {
    "common": set(),
    "data": {"common"},
    "models": {"common", "data"},
    "training": {"common", "data", "models"},
    "launching": {"common", "data", "models", "training"},
    "benchmark": {"common", "data", "models", "training", "launching"},
    "reports": {"common", "data", "models", "training"},
}
LAZY = {"tensorflow", "keras", "tf_keras", "horovod", "mpi4py", "sklearn", "pandas", "matplotlib", "h5py", "PIL", "astroNN",
        "submitit"}  # hpccnn/__init__.py says why
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 500, 60, 6
# the public API's keyword arguments are the user's own settings, as keras.Model.fit's are
MANY_PARAMETERS = {("training/api.py", "fit"), ("training/api.py", "run")}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {name_of(p) for p in modules()}


def imported(node, module: str) -> list:
    """The hpccnn modules an import statement brings in (a package's submodule where it names one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "hpccnn"]
    base = node.module or ""
    if node.level:
        base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
    if base.split(".")[0] != "hpccnn":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in NAMES else base for a in node.names]


def graph() -> dict:
    edges = {}
    for path in modules():
        module = name_of(path)
        tree = ast.parse(path.read_text())
        edges[module] = {m for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for m in imported(node, module) if m != module}
    return edges


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else None


def test_the_subpackages_import_one_way():
    wrong = []
    for module, targets in graph().items():
        here = room(module)
        for target in targets:
            there = room(target)
            if here and there and there != here and there not in MAY_IMPORT[here]:
                wrong.append(f"{module} imports {target}")
            if here and target == "hpccnn":
                wrong.append(f"{module} imports the package's __init__ (the public API)")
    assert not wrong, wrong
    # only the commands that run it (python -m hpccnn.bench, hpccnn bench) import the benchmark
    assert {m for m, ts in graph().items() if room(m) != "benchmark" for t in ts if room(t) == "benchmark"} <= {
        "hpccnn.bench", "hpccnn.cli"}


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_imports_inside_functions_are_only_the_heavy_libraries():
    inside = []
    for path in modules():
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    tops = [(node.module or "").split(".")[0]] if not node.level else ["hpccnn"]
                else:
                    continue
                inside += [f"{path.relative_to(PACKAGE)}:{node.lineno} {t}" for t in tops if t not in LAZY]
    assert not inside, sorted(set(inside))


def test_modules_and_functions_are_small_enough_to_read():
    long_modules, long_functions, many = [], [], []
    for path in modules():
        text = path.read_text()
        where = str(path.relative_to(PACKAGE))
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{where} {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long_functions.append(f"{where}:{node.lineno} {node.name} {node.end_lineno - node.lineno + 1}")
            a = node.args
            count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            count -= bool(a.args) and a.args[0].arg in ("self", "cls")
            if count > MAX_PARAMETERS and (where, node.name) not in MANY_PARAMETERS:
                many.append(f"{where}:{node.lineno} {node.name} {count}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions
    assert not many, many


@pytest.mark.parametrize("command", ["train", "submit", "stage", "report", "bench", "grids", "guard", "demo"])
def test_the_commands_users_type_are_thin_modules(command):
    """python -m hpccnn.X stays as typed; its code lives in a subpackage."""
    path = PACKAGE / f"{command}.py"
    tree = ast.parse(path.read_text())
    (target,) = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("hpccnn")]
    assert room(target) in MAY_IMPORT and len(path.read_text().splitlines()) <= 10


def test_the_top_level_holds_only_subpackages_and_commands():
    top = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    commands = {f"{c}.py" for c in ("train", "submit", "stage", "report", "bench", "grids", "guard", "demo", "cli")}
    assert top - commands - set(MAY_IMPORT) == {"__init__.py"}, sorted(top - commands - set(MAY_IMPORT))
