"""The library stands alone: installed without the ``train`` extra, it adapts, saves, loads and merges.

The wheel is built from this checkout and installed into a fresh virtual environment that sees
only what the wheel requires (its ``Requires-Dist`` without extras, and their own requirements,
linked from the test's environment: nothing is downloaded).  There, LoRA on a torch model and (with
e3nn, its backend's own package, added) ELoRA on an e3nn model round-trip through
``save_pretrained`` / ``from_pretrained`` and merge to the adapted outputs, and the application
reports the missing extra in one line.  Where the extra is installed, ``import peft_equi`` imports
none of its packages.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from paths import ROOT

from peft_equi_train.extra import TRAIN_EXTRA

pytestmark = pytest.mark.slow

LIBRARY_REQUIREMENTS = {"torch", "numpy", "pydantic", "safetensors"}


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(metadata: str, extra: str = "") -> list[Requirement]:
    """What a wheel's METADATA requires: without extras (``extra=""``), or what ``extra`` adds."""
    found = []
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker  # the library's requirements have none; an extra's are `extra == "..."`
        if (marker is None) if not extra else (marker is not None and marker.evaluate({"extra": extra})):
            found.append(requirement)
    return found


def _names(requirements: list[Requirement]) -> set[str]:
    return {_name(r.name) for r in requirements}


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``requirements`` need, with the extras they name, as installed here."""
    seen: set[tuple[str, str]] = set()
    todo = [(_name(r.name), extra) for r in requirements for extra in ("", *r.extras)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(_name(requirement.name), e) for e in ("", *requirement.extras)]
    return {name for name, _ in seen}


def _link(distributions: set[str], site: Path) -> None:
    """Make the installed files of ``distributions`` visible in ``site`` (symlinks of their top-level entries)."""
    here = Path(sysconfig.get_paths()["purelib"])
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            top = Path(str(file)).parts[0]
            if top != ".." and not (site / top).exists() and (here / top).exists():
                (site / top).symlink_to(here / top)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of this checkout's sources (the checkout itself gets no build files)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    for package in ("peft_equi", "peft_equi_train"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-w", str(dist), str(source)], check=True, capture_output=True)
    (built,) = dist.glob("peft_equi-*.whl")
    return built


def _venv(wheel: Path, folder: Path, extra: list[Requirement]) -> Path:
    """The python of a new venv in ``folder`` holding the wheel, what it requires and what ``extra`` requires."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", "--clear", str(folder)], check=True)
    (site,) = folder.glob("lib/python*/site-packages")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True)
    _link(_closure([*_requirements(_metadata(wheel)), *extra]), site)
    return folder / "bin" / "python"


@pytest.fixture(scope="module")
def library(wheel, tmp_path_factory) -> Path:
    """A venv with the library alone (no extra)."""
    return _venv(wheel, tmp_path_factory.mktemp("library"), [])


@pytest.fixture(scope="module")
def with_e3nn(wheel, tmp_path_factory) -> Path:
    """A venv with the library and e3nn (its backend's own package), no train extra."""
    return _venv(wheel, tmp_path_factory.mktemp("e3nn"), [Requirement("e3nn")])


@pytest.fixture(scope="module")
def with_train_extra(wheel, tmp_path_factory) -> Path:
    """A venv with the library and the train extra's packages."""
    return _venv(wheel, tmp_path_factory.mktemp("train"), _requirements(_metadata(wheel), "train"))


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name).decode()


def _run(python: Path, code: str) -> subprocess.CompletedProcess:
    # -I: no PYTHONPATH, no user site, no current directory; warnings off (torch's numpy notice)
    return subprocess.run(
        [str(python), "-I", "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_the_wheel_requires_the_library_set_and_the_extra_lists_the_application(wheel):
    metadata = _metadata(wheel)
    assert _names(_requirements(metadata)) == LIBRARY_REQUIREMENTS
    assert _names(_requirements(metadata, "train")) == {_name(d) for d in TRAIN_EXTRA.values()}


#: the library's round trip, run in a fresh venv on ``MODEL`` (built by the snippet before it)
ROUND_TRIP = """
import tempfile
import torch
import peft_equi
from peft_equi.errors import element_names

torch.manual_seed(0)
adapted = peft_equi.get_peft_model(MODEL, CONFIG)
adapted.print_trainable_parameters()
with torch.no_grad():
    for p in adapted.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn_like(p))
expected = adapted(*INPUTS)
assert not torch.equal(expected, MODEL_COPY(*INPUTS)), "randomised adapters change nothing"
with tempfile.TemporaryDirectory() as folder:
    adapted.save_pretrained(folder)
    loaded = peft_equi.PeftModel.from_pretrained(MODEL_COPY, folder)
    torch.testing.assert_close(loaded(*INPUTS), expected, rtol=0, atol=1e-12)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(*INPUTS), expected, rtol=0, atol=1e-10)
# element names and symbols without ase
assert element_names([1, 6]) == "H (Z=1), C (Z=6)"
assert peft_equi.EnergyCorrection.of({"H": 0.5, 8: -1.0}).atomic_numbers == (1, 8)
print("round trip ok")
"""


def test_the_library_adapts_a_torch_model_without_the_train_extra(library):
    build = """
    import copy, torch
    torch.set_default_dtype(torch.float64)
    MODEL = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    MODEL_COPY = copy.deepcopy(MODEL)
    import peft_equi
    CONFIG = peft_equi.LoraConfig(r=2, lora_alpha=4)
    INPUTS = (torch.randn(5, 4),)
    """
    result = _run(library, textwrap.dedent(build) + ROUND_TRIP)
    assert result.returncode == 0, result.stderr
    assert "round trip ok" in result.stdout


def test_the_library_adapts_an_e3nn_model_with_e3nn_alone(with_e3nn):
    build = """
    import copy, torch
    from e3nn import o3
    torch.set_default_dtype(torch.float64)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = o3.Linear("4x0e+2x1o", "4x0e+4x1o")
            self.second = o3.Linear("4x0e+4x1o", "2x0e+1x1o")

        def forward(self, x):
            return self.second(self.first(x))

    MODEL = Net()
    MODEL_COPY = copy.deepcopy(MODEL)
    CONFIG = "elora"
    INPUTS = (torch.randn(5, 10),)
    """
    result = _run(with_e3nn, textwrap.dedent(build) + ROUND_TRIP)
    assert result.returncode == 0, result.stderr
    assert "round trip ok" in result.stdout


def test_importing_the_library_imports_nothing_of_the_train_extra(with_train_extra):
    code = f"""
    import importlib.util, sys
    modules = {sorted(TRAIN_EXTRA)!r}
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, f"the extra is not installed here: {{missing}}"
    import torch  # torch itself may import some (torch.hub: tqdm): not the library's doing
    before = set(sys.modules)
    import peft_equi
    loaded = sorted({{m.split(".")[0] for m in set(sys.modules) - before}} & set(modules))
    print("loaded:", loaded)
    """
    result = _run(with_train_extra, code)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_the_application_names_the_missing_extra_in_one_line(library):
    command = [str(library), "-I", "-W", "ignore", "-m", "peft_equi_train", "--help"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "pip install 'peft-equi[train]'" in result.stderr and "lightning" in result.stderr
    code = """
    from peft_equi.errors import MissingDependencyError
    try:
        from peft_equi_train import Finetuner
    except MissingDependencyError as exc:
        print(exc)
    """
    result = _run(library, code)
    assert "pip install 'peft-equi[train]'" in result.stdout, result.stderr
