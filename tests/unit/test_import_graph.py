"""The package layers of peft_equi: no upward import, no cycle between packages, no private access across modules.

Every module's imports are read from its source (``ast``): top-level, function-level and
``TYPE_CHECKING`` imports alike, plus modules named by string to ``importlib.import_module``
and to a registry's ``builtins``.  A unit is a subpackage or top-level module of peft_equi
(``peft_equi.core``, ``peft_equi.errors``, ...), or the whole application ``peft_equi_train``;
each sits on one layer of :data:`LAYERS`, and may import units of its own layer or below, as
long as the units form no cycle.  The library never imports the application.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
from paths import ROOT

PACKAGE = ROOT / "peft_equi"
APPLICATION = ROOT / "peft_equi_train"

#: The layers, bottom up; ``"peft_equi"`` is the package's own ``__init__`` (its public names).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version", "elements"),
    ("utils",),
    ("core",),
    ("adapters", "backends"),
    ("tuner",),
    ("energy_correction", "families"),
    ("inspection", "testing", "lammps"),
    ("peft_equi",),
    ("peft_equi_train",),  # the application (engine, command line, MD check, xTB labels): the train extra
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
MODULE_NAME = re.compile(r"peft_equi(_train)?(\.\w+)*")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "peft_equi_train":
        return "peft_equi_train"
    return parts[1] if len(parts) > 1 else "peft_equi"


def _named_by_string(node: ast.Call) -> list[str]:
    """Modules named by string: ``import_module("peft_equi.x")``, ``Registry(..., builtins=("peft_equi.x", ...))``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    values: list[ast.AST] = []
    if name == "import_module" and node.args:
        values.append(node.args[0])
    values += [kw.value for kw in node.keywords if kw.arg == "builtins"]
    found = []
    for value in values:
        for const in ast.walk(value):
            if isinstance(const, ast.Constant) and isinstance(const.value, str) and MODULE_NAME.fullmatch(const.value):
                found.append(const.value)
    return found


def imports_of(path: Path) -> list[tuple[str, int]]:
    """``(imported peft_equi module, line)`` for every import in the file at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # ``from peft_equi import x`` imports the submodule x when there is one
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names if _is_module(f"{target}.{a.name}")]
        elif isinstance(node, ast.Call):
            found += [(name, node.lineno) for name in _named_by_string(node)]
    return [(name, line) for name, line in found if MODULE_NAME.fullmatch(name)]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *APPLICATION.rglob("*.py")])


def unit_edges() -> dict[tuple[str, str], list[str]]:
    """``(importing unit, imported unit) -> ["module:line", ...]`` between different units."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sources():
        here = module_name(path)
        for target, line in imports_of(path):
            a, b = unit_of(here), unit_of(target)
            if a != b:
                edges[(a, b)].append(f"{here}:{line}")
    return edges


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(path)) for path in sources()}
    assert sorted(units - set(LEVEL)) == [], "place new packages and modules in LAYERS"


def test_no_upward_import():
    upward = [
        f"{a} (layer {LEVEL[a]}) imports {b} (layer {LEVEL[b]}) at {', '.join(where[:3])}"
        for (a, b), where in sorted(unit_edges().items())
        if LEVEL.get(b, -1) > LEVEL.get(a, -1)
    ]
    assert upward == []


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in unit_edges():
        graph[a].add(b)
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*stack, nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert cycles == []


def test_the_core_names_nothing_above_it():
    """Not even by string: the built-in adapters, backends and presets register themselves."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in (PACKAGE / "core").rglob("*.py"))
    above = [unit for unit, level in LEVEL.items() if level > LEVEL["core"] and unit != "peft_equi"]
    named = sorted({u for u in above if re.search(rf"peft_equi\.{u}\b", text)} - {"adapters", "backends"})
    assert named == []
    # (entry-point group names ``peft_equi.adapters`` / ``peft_equi.backends`` are not modules: checked by
    # test_no_upward_import, which reads imports and import_module/builtins strings only)


# -- private names --


def private_definitions() -> dict[str, set[str]]:
    """``_name -> modules defining it``: functions, methods, classes, module globals and ``self._x`` attributes."""
    defined: dict[str, set[str]] = defaultdict(set)
    for path in sources():
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.append(target.id)
                    elif isinstance(target, ast.Attribute):
                        names.append(target.attr)
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    defined[name].add(here)
    return defined


def test_no_module_uses_another_modules_private_names():
    """``obj._name`` (``obj`` not ``self``/``cls``) or ``from m import _name``, where ``_name`` is peft_equi's own
    and defined only in another module.  (Private attributes of torch, ``module._parameters``, are not ours.)"""
    defined = private_definitions()
    found = []
    for path in sources():
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                name = node.attr
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_equi"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{here}:{node.lineno} imports {alias.name} from {node.module}")
                continue
            else:
                continue
            if name.startswith("_") and not name.startswith("__") and defined.get(name) and here not in defined[name]:
                found.append(f"{here}:{node.lineno} uses {name} of {', '.join(sorted(defined[name]))}")
    assert found == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import peft_equi.core.spec", ["peft_equi.core.spec"]),
        ("def f():\n    from peft_equi.tuner import model", ["peft_equi.tuner", "peft_equi.tuner.model"]),
        ("importlib.import_module('peft_equi.families.mace')", ["peft_equi.families.mace"]),
        ("Registry('x', 'peft_equi.adapters', builtins=('peft_equi.backends',))", ["peft_equi.backends"]),
        ("'peft_equi.families'  # a plain string", []),
    ],
)
def test_the_reader_finds_imports(tmp_path, source, expected, monkeypatch):
    """The checks above are only as good as the reader: it sees each kind of import."""
    path = PACKAGE / "core" / "probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert [name for name, _ in imports_of(path)] == expected
