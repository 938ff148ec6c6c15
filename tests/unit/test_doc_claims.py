"""What README.md and docs/ state, checked against the code and the committed results.

* **Numbers from results.** A number taken from a results file carries an HTML comment right after
  it (invisible on the rendered page) naming its record and key::

      energies within 7.3e-12 eV<!-- record: benchmarks/results/lammps/results.json max agreement[*].energy -->

  ``[max|min] <file> <term> [/ <term> | - <term>] [*<factor>]``, a term being a number or
  ``[max|min|mean|std|count] <path>``: ``path`` is dot-separated keys and list indices; ``*``
  takes every element of a list and ``[k=v;k2=v2]`` the elements whose fields have these values
  (then ``max``/``min``/``mean``/``std`` (sample)/``count`` reduce them); ``/`` and ``-`` between
  terms give ratios and differences, left to right; ``*<factor>`` converts units (``*1000``: eV
  to meV; ``a / b - 1 *100``: a relative difference in per cent).  ``<file>`` may be a glob
  pattern: the expression is evaluated in every file it matches, and the leading ``max`` or
  ``min`` (required then) takes the largest or smallest (a range over the molecules of a
  benchmark, one file each).  The
  number is the last one before the marker on its line, and must equal the record's value rounded
  as the page shows it (the same decimals, or significant digits in ``1.2e-3`` form).  A marker
  right after a backtick is an example in inline code, not checked.
* **Tables generated from the code.** The built-in backends table lists the registered backends,
  the error table every public error class (and nothing that does not exist), and the table of
  which adapters merge is what ``merge_and_unload()`` does on small models of each family.
"""

from __future__ import annotations

import builtins
import inspect
import json
import math
import re
import statistics
import warnings
from pathlib import Path

import pydantic
import pytest
from paths import ROOT

import peft_equi
from peft_equi import errors

DOC_FILES = sorted(["README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))])

MARKER = re.compile(r"(?<!`)<!--\s*record:\s*(?P<file>(?:(?:max|min)\s+)?\S+)\s+(?P<expr>.*?)\s*-->")
AGGREGATES = {"max": max, "min": min, "mean": statistics.mean, "std": statistics.stdev, "count": len}
TERM = re.compile(r"^(?:(?P<agg>max|min|mean|std|count)\s+)?(?P<path>\S.*)$")
LITERAL = re.compile(r"^\d+(?:\.\d+)?$")
OPERATOR = re.compile(r"\s+([/-])\s+")
# a number; a sign only where it cannot be a range's hyphen ("9-11", "9<!-- -->-11"): after a space,
# a bracket, a table's bar or Markdown's emphasis ("**-2 %**")
NUMBER = re.compile(r"(?:(?<=[\s(|*])[-+]|^[-+])?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)
SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[\]]+")


def _markers() -> list[tuple[str, int, str, str, str]]:
    """(page, line number, number as shown, record file, expression) of every record marker."""
    found = []
    for page in DOC_FILES:
        for number, line in enumerate((ROOT / page).read_text().splitlines(), start=1):
            start = 0
            for marker in MARKER.finditer(line):
                text = MARKER.sub(lambda m: "~" * len(m.group(0)), line[: marker.start()])  # earlier markers blanked
                shown = [n for n in NUMBER.finditer(text) if n.start() >= start]
                assert shown, f"{page}:{number}: a record marker with no number before it"
                found.append((page, number, shown[-1].group(0), marker.group("file"), marker.group("expr")))
                start = marker.end()
    return found


def _select(value, segments: list[str]) -> list:
    """The values at ``segments`` below ``value`` (several where a segment is ``*`` or a filter)."""
    if not segments:
        return [value]
    head, rest = segments[0], segments[1:]
    if head in ("*", "[*]") or head.startswith("["):
        wanted = dict(pair.split("=", 1) for pair in head[1:-1].split(";")) if "=" in head else {}
        matches = [item for item in value if all(str(item.get(k)) == v for k, v in wanted.items())]
        assert matches, f"no element with {wanted}"
        # elements without the key (a row with no virial) or with null there are left out
        return [v for item in matches if _has(item, rest) for v in _select(item, rest) if v is not None]
    if isinstance(value, list):
        return _select(value[int(head)], rest)
    return _select(value[head], rest)


def _has(value, segments: list[str]) -> bool:
    key = segments[0] if segments else None
    return key is None or not isinstance(value, dict) or key.startswith("[") or key == "*" or key in value


def record_value(file: str, expr: str, root: Path = ROOT) -> float:
    """The value a marker names (see the module docstring); ``file`` relative to ``root``."""
    over, _, pattern = file.rpartition(" ")
    records = sorted(root.glob(pattern))
    assert records, f"no record {pattern}"
    assert over or len(records) == 1, f"{pattern} matches {len(records)} records: say max or min"
    values = [_value(json.loads(path.read_text()), expr) for path in records]
    return AGGREGATES[over](values) if over else values[0]


def _value(record, expr: str) -> float:
    factor = re.search(r"\s+\*(?P<factor>[0-9.eE+-]+)$", expr)
    terms = OPERATOR.split(expr[: factor.start()] if factor else expr)
    value = _term(record, terms[0])
    for operator, term in zip(terms[1::2], terms[2::2]):
        value = value / _term(record, term) if operator == "/" else value - _term(record, term)
    return value * float(factor.group("factor") if factor else 1)


def _term(record, term: str) -> float:
    if LITERAL.match(term):
        return float(term)
    parsed = TERM.match(term)
    assert parsed, f"unreadable record expression {term!r}"
    values = _select(record, SEGMENT.findall(parsed.group("path")))
    if parsed.group("agg"):
        return float(AGGREGATES[parsed.group("agg")](values))
    assert len(values) == 1, f"{term!r} selects {len(values)} values: say max or min"
    return float(values[0])


def as_shown(value: float, shown: str) -> str:
    """``value`` rounded and written as the page writes ``shown``."""
    digits = shown.lstrip("+-").replace(",", "")
    if "e" in digits.lower():
        mantissa = digits.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        m, e = f"{value:.{decimals}e}".split("e")
        return f"{m}e{int(e)}"
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    text = f"{value:,.{decimals}f}" if "," in shown else f"{value:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text  # no "-0.0"


def _normal(shown: str) -> str:
    if "e" in shown.lower():
        m, e = shown.lower().split("e")
        return f"{m.lstrip('+')}e{int(e)}"
    return shown.lstrip("+")


def test_the_rounding_rule():
    assert as_shown(7.275957614183426e-12, "7.3e-12") == "7.3e-12"
    assert as_shown(5.64e-08, "5.6e-8") == "5.6e-8"
    assert as_shown(0.005845, "0.006") == "0.006"
    assert as_shown(110209, "110,209") == "110,209"
    assert as_shown(-0.001, "0.00") == "0.00"
    assert as_shown(314.26, "314.3") == "314.3" and as_shown(314.26, "314") == "314"
    line = "within 9<!-- record: a b -->-11 ms and -5 (-2, x-3), **-2 %**"
    shown = [m.group(0) for m in NUMBER.finditer(MARKER.sub(lambda m: "~" * len(m.group(0)), line))]
    assert shown == ["9", "11", "-5", "-2", "3", "-2"]  # a range's hyphen is no sign


@pytest.mark.parametrize(
    "file, expr, expected",
    [
        ("a.json", "rows[k=x].v", 2.0),
        ("a.json", "rows[k=x].v / rows[k=y].v - 1 *100", -50.0),  # a relative difference in per cent
        ("a.json", "max rows[*].v - min rows[*].v", 4.0),
        ("a.json", "mean rows[*].v", 4.0),
        ("a.json", "std rows[*].v", 2.0),  # the sample standard deviation of 2, 4, 6
        ("a.json", "count rows[*].v", 3.0),
        ("max *.json", "rows[k=x].v", 5.0),  # over the files a glob matches
        ("min *.json", "rows[k=x].v", 2.0),
    ],
)
def test_the_expression_syntax(tmp_path, file, expr, expected):
    rows = [{"k": "x", "v": 2}, {"k": "y", "v": 4}, {"k": "z", "v": 6}]
    (tmp_path / "a.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": [{"k": "x", "v": 5}]}))
    assert record_value(file, expr, root=tmp_path) == pytest.approx(expected)


def test_a_glob_without_max_or_min_is_refused(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps({"v": 1}))
    with pytest.raises(AssertionError, match="matches 2 records: say max or min"):
        record_value("*.json", "v", root=tmp_path)


def test_record_markers_are_found():
    """The pages carry markers (so the check below cannot pass by finding none)."""
    pages = {page for page, *_ in _markers()}
    assert {"README.md", "docs/deployment.md"} <= pages
    assert len(_markers()) >= 20


@pytest.mark.parametrize(
    "page, line, shown, file, expr",
    _markers(),
    ids=lambda value: value if isinstance(value, str) and value.endswith(".md") else None,
)
def test_numbers_match_their_records(page, line, shown, file, expr):
    value = record_value(file, expr)
    assert math.isfinite(value)
    assert as_shown(value, shown) == _normal(shown), (
        f"{page}:{line} shows {shown}, but {file} {expr} is {value!r} ({as_shown(value, shown)} as shown)"
    )


# -- tables generated from the code --


def _table_after(page: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` on ``page`` (header and rule left out)."""
    lines = (ROOT / page).read_text().splitlines()
    start = lines.index(heading)
    rows, seen = [], False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            seen = True
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif seen:
            break
    assert len(rows) > 2, f"{page}: no table after {heading!r}"
    return rows[2:]


def _code_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_backends_table_lists_every_registered_backend():
    names = [_code_names(row[0])[0] for row in _table_after("docs/concepts.md", "### Built-in backends")]
    assert len(names) == len(set(names))
    assert sorted(names) == peft_equi.list_backends()


def _public_errors() -> set[str]:
    return {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }


def test_the_error_table_lists_every_error_class_and_nothing_else():
    listed = [_code_names(row[0])[0] for row in _table_after("docs/concepts.md", "## Errors and guarantees")]
    assert len(listed) == len(set(listed))
    missing = _public_errors() - set(listed)
    assert not missing, f"docs/concepts.md's error table lacks {sorted(missing)}"
    for name in set(listed) - _public_errors():
        module, _, attr = name.rpartition(".")
        known = getattr(pydantic, attr, None) if module == "pydantic" else getattr(builtins, name, None)
        assert inspect.isclass(known) and issubclass(known, Exception), f"the error table lists {name}: no such error"


def test_the_readme_lists_adapters_and_presets_as_the_registries_do():
    text = (ROOT / "README.md").read_text()
    adapters = re.search(r"peft_equi\.list_adapters\(\)\s+# (\[.*\])", text).group(1)
    assert json.loads(adapters.replace("'", '"')) == peft_equi.list_adapters()
    presets = re.search(r"peft_equi\.list_presets\(\)\s+# every adapter name, plus (.*)", text).group(1)
    named = re.findall(r"'([^']+)'", presets)
    assert sorted([*peft_equi.list_adapters(), *named]) == peft_equi.list_presets()


# -- which adapters merge: docs/adapters/index.md against merge_and_unload() --

MERGE_TABLE = "docs/adapters/index.md"


def _merge_table() -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    lines = (ROOT / MERGE_TABLE).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- merge-table"))
    header = [cell.strip() for cell in lines[start + 1].strip("|").split(" | ")]
    families = header[1:]
    table = {}
    for line in lines[start + 3 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        names = _code_names(cells[0])
        table[(names[0], names[1] if len(names) > 1 else "")] = dict(zip(families, cells[1:]))
    return families, table


def _build_family(family: str):
    from mace_models import build_mace
    from nequip_models import NEQUIP_OPTIONS, small_nequip
    from zoo.e3nn_models import _simple_network_2106

    if family == "MACE (e3nn)":
        return build_mace("small")
    if family == "MACE (cuequivariance)":
        return peft_equi.to_cueq(build_mace("small"), layout="ir_mul")
    if family == "NequIP":
        return small_nequip("nequip.model.NequIPGNNModel", **NEQUIP_OPTIONS).model
    if family == "e3nn `SimpleNetwork`":
        return _simple_network_2106()[0]
    raise AssertionError(f"{MERGE_TABLE}: no model for the column {family!r}")


def _outcome(model, adapter: str, options: str) -> str:
    """What ``merge_and_unload()`` does with ``adapter`` on ``model``; ``model`` is left without adapters.

    (The adapters start as the identity, so merging or unloading them gives ``model`` back unchanged.)
    """
    kwargs = eval(f"dict({options})", {}) if options else {}  # the page's own text, e.g. conditioning="static"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conventional's "NOT equivariant"
        peft_model = peft_equi.get_peft_model(model, adapter, **kwargs)
    try:
        peft_model.merge_and_unload()
    except peft_equi.NotMergeableError as error:
        peft_model.unload()
        if "depends on the layer's input" in str(error):
            return "no: input"
        if "stores no bias" in str(error):
            return "no: bias"
        raise
    return "yes"


def test_the_merge_table_covers_every_adapter():
    families, table = _merge_table()
    assert len(families) == 4
    assert {adapter for adapter, _ in table} == set(peft_equi.list_adapters())


@pytest.mark.slow
@pytest.mark.parametrize("family", _merge_table()[0])
def test_the_merge_table_is_what_merge_and_unload_does(family):
    model = _build_family(family)
    stated = {row: cells[family] for row, cells in _merge_table()[1].items()}
    actual = {row: _outcome(model, *row) for row in stated}
    assert actual == stated, f"{MERGE_TABLE}, column {family}: the table says {stated}, merge_and_unload gives {actual}"


def test_the_demo_table_is_the_committed_demo_record():
    """README's demo numbers carry markers into the record `make demo` writes (the run's results.json, copied)."""
    record = "examples/demo-results.json"
    assert (ROOT / record).is_file(), f"make demo writes {record}: commit it"
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile[makefile.index("\ndemo:") :].split("\n\n")[0]
    assert f"cp demo-output/results.json {record}" in demo and "examples/demo.yaml" in demo
    keys = {expr for page, _, _, file, expr in _markers() if file == record and page == "README.md"}
    assert keys >= {
        "before.test.energy_mae_meV",
        "before.test.forces_mae_meV_per_A",
        "after.test.energy_mae_meV",
        "after.test.forces_mae_meV_per_A",
        "trainable_parameters",
    }
