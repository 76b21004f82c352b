"""The package's architecture, checked: layers import downward only, no import circles, a small top level,
small modules, function-local imports only to keep torch (or Ray) out of processes that don't need them,
and importing the app builder or a deployment loads no torch, diffusers or transformers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zimage_serve"
# Each layer may import the layers of lower rank and itself; two layers of one rank never import each other.
RANKS = {"core": 0, "settings": 1, "testing.checkpoint": 2, "testing.lora": 2, "testing.controlnet": 2, "progress": 2, "model": 3, "arguments": 4, "jobs": 4, "serving": 5, "batch": 5,
         "testing.faults": 6, "cli": 7, "app": 7, "__main__": 8, "": 0}
# What a module of a layer may import only inside a function (in the processes that need it), never at import.
LAZY_ONLY = {"serving": {"model"}, "batch": {"model"}, "cli": {"serving", "testing.checkpoint", "testing.lora", "testing.controlnet"}}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        mods[name] = f
    return mods


def _layer(module: str) -> str:
    if module.startswith("testing."):
        return module
    return module.split(".")[0]


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    """Names of our modules an ``import from`` names (relative to ``module``)."""
    if node.level == 0:
        if not (node.module or "").startswith("zimage_serve"):
            return []
        base = node.module.removeprefix("zimage_serve").lstrip(".")
    else:
        parts = module.split(".") if module else []
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        out.append(candidate if candidate in MODULES else base)
    return out


MODULES = _modules()


def _imports():
    """(importer, imported, at module level?, line) for every import of one of our modules."""
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in _resolve(name, node, path.name == "__init__.py"):
                    yield name, target, id(node) not in local, node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("zimage_serve."):
                        yield name, alias.name.removeprefix("zimage_serve."), id(node) not in local, node.lineno


def test_layers_import_downward_only():
    wrong = []
    for importer, target, top, line in _imports():
        a, b = _layer(importer), _layer(target)
        if a == b or target == "":
            continue
        if RANKS[b] >= RANKS[a]:
            wrong.append(f"{importer}:{line} imports {target}")
        lazy = LAZY_ONLY.get(a, set())
        if top and any(target == m or target.startswith(m + ".") for m in lazy):
            wrong.append(f"{importer}:{line} imports {target} at import time (only inside the replica/command)")
    assert not wrong, wrong


def test_no_import_circles_at_import_time():
    graph: dict[str, set[str]] = {}
    for importer, target, top, _ in _imports():
        if top and target != importer:
            graph.setdefault(importer, set()).add(target)
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_top_level_keeps_entry_points_and_the_config():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 6, top
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert subpackages == ["batch", "core", "jobs", "model", "serving", "testing"]
    for package in PACKAGE.rglob("__init__.py"):  # each says what lives there and what it may import
        doc = ast.get_docstring(ast.parse(package.read_text())) or ""
        assert len(doc) > 80, package


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_function_local_imports_say_why():
    """Only to keep torch (or Ray, or a tool's heavy dependencies) out of processes that don't need them, and
    each says so in a comment on its line or the line above its group."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    i = node.lineno - 1
                    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")) or (
                            i > 0 and not lines[i - 1].strip() and lines[i - 2].strip().startswith(("import ", "from "))):
                        i -= 1  # the first import of its group
                    said = "#" in lines[node.lineno - 1] or "#" in lines[i] or lines[i - 1].strip().startswith("#")
                    if not said:
                        silent.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, silent


ENTRY_MODULES = ["zimage_serve.app", "zimage_serve.serving.builder", "zimage_serve.serving.ingress",
                 "zimage_serve.serving.encoder", "zimage_serve.serving.generator", "zimage_serve.batch.job",
                 "zimage_serve.cli", "zimage_serve.testing.faults"]


def test_importing_the_builder_or_a_deployment_loads_no_torch():
    """One fresh interpreter imports each in turn: the first whose import brings in torch, diffusers or
    transformers is named (an import of the modules before it can't hide one: whatever it imports still loads)."""
    code = ("import importlib, sys\n"
            f"for module in {ENTRY_MODULES!r}:\n"
            "    importlib.import_module(module)\n"
            "    heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "    if heavy:\n"
            "        sys.exit(f'importing {module} loaded {heavy}')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
