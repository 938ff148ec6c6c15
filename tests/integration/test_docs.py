"""The documentation's code runs: every ```python block of README.md and docs/**/*.md, and examples/quickstart.py.

The blocks of one file run in order in one namespace (later blocks use what earlier ones
defined), in a temporary working directory, and the registries (adapters, backends, presets)
are restored afterwards, so a page that registers example adapters leaves no trace.

A block that cannot run here is fenced ```python title="not run: <reason>"```: the site
shows the reason as the block's title, and :data:`NOT_RUN` lists how many such blocks each
file has, so that adding one is a visible change of this file. Every other ```python block
must run; other Python-like fence languages (``py``, ``pycon``, ``python3``) are refused so
that no block escapes by its spelling.

Printed output is checked where a page states it: comment lines right after a line that
prints (``print(...)``, ``model.print_trainable_parameters()``) must appear, in order, among
the lines that block printed.

README.md's examples are separate snippets written against models the reader has (``base``,
``batch``, ...): :data:`README_CONTEXT` defines those names, with small random MACE models,
before each of its blocks (``get_peft_model`` adapts ``base`` in place, and every snippet starts
from an unadapted one); what a snippet defines (``model``) stays for the next ones.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import runpy
import textwrap
import warnings
from dataclasses import dataclass

import pytest
import yaml
from paths import ROOT

import peft_equi

DOC_FILES = sorted(["README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))])

#: Blocks fenced ``python title="not run: ..."``, per file; every other ```python block runs.
NOT_RUN = {
    # loads MACE-OFF23_medium.model, a file that cannot be downloaded here
    "README.md": 1,
    # the foundation model and structure files of a real study, and 4,000 MD steps
    "docs/md.md": 1,
}

#: What README.md's snippets assume the reader has: unadapted MACE models and a batch (small, random).
README_CONTEXT = """
from mace_models import batch_of, build_mace, molecules

base, base2, fresh_base, fresh_base2 = build_mace(), build_mace(), build_mace(), build_mace()  # the same weights
batch = batch_of(molecules(2))
"""

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_RUN_MARK = re.compile(r'^python title="not run: (?P<reason>[^"]+)"$')
PYTHON_LIKE = re.compile(r"^(py|python\d*|pycon|ipython\d*)\b", re.IGNORECASE)
PRINTS = re.compile(r"^\s*(print\(|\S.*\.print_\w+\()")


@dataclass
class Block:
    path: str
    line: int  # line of the first code line (1-based)
    info: str
    code: str


def fenced_blocks(path: str) -> list[Block]:
    """Every fenced code block of a Markdown file, with its info string."""
    lines = (ROOT / path).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.group("indent"), opening.group("fence"), opening.group("info").strip()
        body, j = [], i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and closing.group("fence").startswith(fence[0] * len(fence)) and not closing.group("info"):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        assert j < len(lines), f"{path}:{i + 1}: unclosed code fence"
        blocks.append(Block(path, i + 2, info, "\n".join(body)))
        i = j + 1
    return blocks


def python_blocks(path: str) -> tuple[list[Block], list[tuple[Block, str]]]:
    """The blocks to run and the (block, reason) pairs marked not run; refuses other Python fences."""
    run, not_run = [], []
    for block in fenced_blocks(path):
        if block.info == "python":
            run.append(block)
        elif (mark := NOT_RUN_MARK.match(block.info)) is not None:
            not_run.append((block, mark.group("reason")))
        else:
            assert not PYTHON_LIKE.match(block.info), (
                f"{block.path}:{block.line - 1}: fence {block.info!r}: use ```python (run by this test) or "
                '```python title="not run: <reason>"'
            )
    return run, not_run


def expected_output(code: str) -> list[list[str]]:
    """Runs of comment lines right after a printing line: the output the page says it gives."""
    lines, runs = code.splitlines(), []
    for k, line in enumerate(lines):
        if PRINTS.match(line) and not line.lstrip().startswith("#"):
            run = []
            for follow in lines[k + 1 :]:
                if not follow.startswith("#"):
                    break
                run.append(follow[1:].removeprefix(" ").rstrip())
            if run:
                runs.append(run)
    return runs


def contains_in_order(printed: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` appears as consecutive lines of ``printed``."""
    n = len(expected)
    return any(printed[i : i + n] == expected for i in range(len(printed) - n + 1))


@contextlib.contextmanager
def registries_restored():
    """Adapters, backends and presets registered by a page are removed afterwards."""
    registries = [peft_equi.ADAPTERS, peft_equi.BACKENDS, peft_equi.PRESETS]
    for registry in registries:
        registry.names()  # load the built-ins and entry points first
    saved = [dict(registry._items) for registry in registries]
    try:
        yield
    finally:
        for registry, items in zip(registries, saved):
            registry._items.clear()
            registry._items.update(items)


def run_blocks(path: str, blocks: list[Block], context: str = "") -> int:
    """Run ``blocks`` in order in one namespace, ``context`` before each; returns how many ran.

    Fails on an error or on printed output that differs from what the page states.
    """
    namespace: dict = {"__name__": "docs_" + re.sub(r"\W", "_", path)}
    ran = 0
    for block in blocks:
        if context:
            exec(compile(context, f"<context of {path}>", "exec", dont_inherit=True), namespace)
        # compiled under the Markdown file's name and line numbers: tracebacks point into the page,
        # and TorchScript finds the source of classes a page defines
        source = "\n" * (block.line - 1) + textwrap.dedent(block.code)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(source, str(ROOT / path), "exec", dont_inherit=True), namespace)
        except Exception as error:
            raise AssertionError(
                f"{path}:{block.line}: the block raised {type(error).__name__}: {error}\n"
                f"--- it printed ---\n{printed.getvalue()}"
            ) from error
        lines = [line.rstrip() for line in printed.getvalue().splitlines()]
        for expected in expected_output(block.code):
            assert contains_in_order(lines, expected), (
                f"{path}:{block.line}: the page says the block prints\n"
                + "\n".join(expected)
                + "\n--- it printed ---\n"
                + "\n".join(lines)
            )
        ran += 1
    return ran


def test_the_docs_have_python_blocks_and_only_the_listed_ones_are_not_run():
    counted = {path: python_blocks(path) for path in DOC_FILES}
    assert sum(len(run) for run, _ in counted.values()) >= 40  # the pages are found and parsed
    marked = {path: len(not_run) for path, (_, not_run) in counted.items() if not_run}
    assert marked == NOT_RUN
    for _, not_run in counted.values():
        for block, reason in not_run:
            assert len(reason.split()) >= 3, f"{block.path}:{block.line - 1}: say why the block cannot run"


def test_the_blocks_not_run_parse_and_their_imports_exist():
    """What can be checked without running them: the syntax, and that what they import exists."""
    checked = 0
    for path in DOC_FILES:
        for block, _ in python_blocks(path)[1]:
            tree = ast.parse(textwrap.dedent(block.code), filename=f"{path}:{block.line}")
            imports = ast.Module([node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], [])
            exec(compile(imports, f"{path}:{block.line}", "exec", dont_inherit=True), {})
            checked += len(imports.body)
    assert checked >= 4  # README's MACE block and docs/md.md import from peft_equi


def test_every_page_is_in_the_site_nav():
    """mkdocs.yml's nav lists every page of docs/ and nothing else (``make docs`` checks it too, strictly)."""

    def pages(entries) -> list[str]:
        out = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            out += pages(value) if isinstance(value, list) else [value]
        return out

    nav = pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    on_disk = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav) == on_disk
    assert len(nav) == len(set(nav))


def test_the_fence_parser_and_the_output_check():
    run, _ = python_blocks("docs/adapters/elora.md")
    assert any("simplify_inputs=True" in block.code for block in run)
    code = 'print("a")\n# a\nx = 1\nfor i in range(2):\n    print(i)\n# 0\n# 1\n'
    assert expected_output(code) == [["a"], ["0", "1"]]
    assert contains_in_order(["x", "0", "1"], ["0", "1"]) and not contains_in_order(["1", "0"], ["0", "1"])


@pytest.mark.parametrize("path", [path for path in DOC_FILES if any(python_blocks(path))])
def test_the_python_blocks_of_a_page_run(path, tmp_path, monkeypatch):
    run, not_run = python_blocks(path)
    monkeypatch.chdir(tmp_path)  # pages write adapters and models to relative paths
    with registries_restored(), warnings.catch_warnings():
        ran = run_blocks(path, run, README_CONTEXT if path == "README.md" else "")
    assert ran == len(run)
    assert len(not_run) == NOT_RUN.get(path, 0)


def test_examples_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")  # raises SystemExit on failure
    out = capsys.readouterr().out
    assert "all adapters trained, stayed equivariant, and merged where mergeable" in out
    for name in ["lora", "elora", "mmea", "bitfit", "film"]:
        assert re.search(rf"^{name}\s+\d", out, re.MULTILINE), f"no result line for {name}"
