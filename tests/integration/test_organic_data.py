"""The organic pretraining set: its molecule list (chemistry, exclusions) and its generator."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from paths import ROOT
from rdkit import Chem

sys.path.insert(0, str(ROOT / "benchmarks"))

import make_organic_xtb

#: Every benchmark molecule, which the foundation model must never have seen (tautomers included).
BENCHMARK_MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "azobenzene": "c1ccc(cc1)N=Nc1ccccc1",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "O=CCC=O",
    "malonaldehyde (enol)": "OC=CC=O",
    "naphthalene": "c1ccc2ccccc2c1",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "salicylic acid": "OC(=O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=c1cc[nH]c(=O)[nH]1",
    "3BPA": "Nc1ncccc1OCc1ccccc1",
    "acetylacetone": "CC(=O)CC(C)=O",
    "acetylacetone (enol)": "CC(O)=CC(C)=O",
}


def _skeleton(smiles: str) -> str:
    """The InChIKey's first block: the connectivity, whatever the stereochemistry or protonation."""
    return Chem.MolToInchiKey(Chem.MolFromSmiles(smiles)).split("-")[0]


@pytest.fixture(scope="module")
def molecules():
    return make_organic_xtb.read_molecules()


def test_no_benchmark_molecule_is_in_the_pretraining_set(molecules):
    excluded = {_skeleton(smiles): name for name, smiles in BENCHMARK_MOLECULES.items()}
    assert len(excluded) == len(BENCHMARK_MOLECULES)  # the tautomers really are other connectivities
    found = {m.name: excluded[_skeleton(m.smiles)] for m in molecules if _skeleton(m.smiles) in excluded}
    assert found == {}


def test_the_list_is_broad_organic_chemistry_of_h_c_n_o(molecules):
    assert len(molecules) >= 150
    assert len({_skeleton(m.smiles) for m in molecules}) == len(molecules), "duplicate molecules"
    assert len({m.name for m in molecules}) == len(molecules)
    for m in molecules:
        mol = Chem.AddHs(Chem.MolFromSmiles(m.smiles))
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"H", "C", "N", "O"}, m
        assert mol.GetNumHeavyAtoms() <= 20, m
    categories = Counter(m.category for m in molecules)
    for family in ("alkane", "aromatic", "alcohol", "ether", "carbonyl", "acid", "ester", "amine", "amide"):
        assert categories[family] >= 5, family
    for family in ("nitrile", "nitro", "heterocycle", "amino-acid", "drug-like"):
        assert categories[family] >= 5, family


def test_holdout_keeps_whole_molecules_apart(molecules):
    split = make_organic_xtb.holdout_split(molecules, 0.1, seed=1)
    names = [set(split[k]) for k in ("train", "valid", "test")]
    assert sum(map(len, names)) == len(molecules)
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(names[1]) + len(names[2]) == round(0.1 * len(molecules))
    assert split == make_organic_xtb.holdout_split(molecules, 0.1, seed=1)


def run_generator(*args: str) -> None:
    """The generator as a user runs it: its own process, which pins OpenMP to one thread before tblite
    loads (in this process torch is loaded already, and tblite would then run multi-threaded: slower,
    and its sums in another order)."""
    script = ROOT / "benchmarks" / "make_organic_xtb.py"
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, text=True)


def _generate(out: Path) -> None:
    options = ["--limit", "3", "--configs-per-temperature", "2", "--stride", "3", "--equilibration-steps", "2"]
    run_generator("--out-dir", str(out), "--workers", "1", "--temperatures", "300", "1200", *options)


@pytest.mark.slow
def test_generator_writes_labelled_resumable_deterministic_shards(tmp_path):
    _generate(tmp_path / "a")
    record = json.loads((tmp_path / "a" / "record.json").read_text())
    assert record["molecules"] == 3 and record["configurations"] == sum(s["configurations"] for s in record["shards"])
    images = [a for split in ("train", "valid", "test") for a in make_organic_xtb.load_split(tmp_path / "a", split)]
    assert len(images) == record["configurations"] >= 3 * 2  # each molecule keeps at least its 300 K snapshots
    for atoms in images:
        assert np.isfinite(atoms.info["energy"]) and atoms.arrays["forces"].shape == (len(atoms), 3)
        assert atoms.info["config_type"] in ("md_300K", "md_1200K")
    # the same run writes the same bytes, and a second call finds nothing to do
    _generate(tmp_path / "b")
    for shard in sorted((tmp_path / "a" / "shards").glob("*.gz")):
        assert gzip.decompress(shard.read_bytes()) == gzip.decompress(
            (tmp_path / "b" / "shards" / shard.name).read_bytes()
        )
    first = (tmp_path / "a" / "shards" / "000-water.extxyz.gz").stat().st_mtime_ns
    _generate(tmp_path / "a")
    assert (tmp_path / "a" / "shards" / "000-water.extxyz.gz").stat().st_mtime_ns == first
    with pytest.raises(SystemExit, match="other options"):
        make_organic_xtb.main(["--out-dir", str(tmp_path / "a"), "--limit", "3", "--stride", "4"])


def test_molecule_file_has_the_documented_columns():
    with make_organic_xtb.MOLECULES_CSV.open() as handle:
        assert csv.DictReader(handle).fieldnames == ["name", "smiles", "category"]
