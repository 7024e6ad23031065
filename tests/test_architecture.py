"""The package's layers, as README's Architecture section draws them: every import goes down (or across, without a
cycle), function bodies included; models import no Lightning; no test module imports another."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "medssl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The medssl module ``name`` refers to (a module, or the package holding an imported attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every medssl module ``module`` imports, at module level or in any function body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "medssl" or name.startswith("medssl."):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


def layers() -> list[list[str]]:
    """The layer table of README's Architecture section, bottom up: each row's backticked module names."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Layers"):]
    rows = [line for line in section.splitlines()[1:] if line.startswith("|")]
    out = []
    for row in rows[2:]:  # header and rule
        cells = row.split("|")
        out.append(re.findall(r"`(medssl[\w.]*)`", cells[2]))
    return out


def layer_of(module: str, table: list[list[str]]) -> int:
    best, found = -1, None
    for i, names in enumerate(table):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"{module} is in no layer of README's Architecture table"
    return found


def test_every_import_goes_down_the_layers():
    table = layers()
    assert len(table) >= 8 and table[0][0] == "medssl"
    upward = []
    for module in sorted(MODULES):
        here = layer_of(module, table)
        upward += [f"{module} -> {target}" for target in sorted(imports(module)) if layer_of(target, table) > here]
    assert not upward, "imports going up a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = {m: imports(m) for m in MODULES}
    # a submodule's import runs its packages' __init__ too, but a package importing its own submodules is not a
    # cycle: only module -> module edges count
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_function_level_imports():
    """The check is not vacuous: a function-level import of a higher layer is found and flagged."""
    assert "medssl.cv" in imports("medssl.commands.cv")  # imported inside main()
    table = layers()
    assert layer_of("medssl.commands.cv", table) > layer_of("medssl.cv", table) > layer_of("medssl.systems", table)
    assert layer_of("medssl.weights", table) > layer_of("medssl.models.bmmae", table)


def test_models_import_neither_the_run_core_nor_lightning():
    code = ("import sys, medssl.models.bmmae, medssl.models.cswin_unet, medssl.models.ssl_heads; "
            "print(sorted(m for m in sys.modules if m.startswith(('medssl.runs', 'lightning', 'pytorch_lightning'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_no_test_module_imports_another():
    offenders = []
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                if node.module.rpartition(".")[2].startswith("test_"):
                    offenders.append(f"{path.relative_to(REPO)} imports {node.module}")
    assert not offenders, "\n".join(offenders)
