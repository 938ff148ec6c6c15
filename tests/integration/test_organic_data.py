"""The organic pretraining set: its molecule list (chemistry, exclusions), its generator, and its record.

The shards are not in git: what is checked of the committed set is its record (counts, split,
sha256s, the command that regenerates it), and that this command regenerates a snapshot of the
committed samples."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from organic_sets import fake_set
from paths import ROOT
from rdkit import Chem

sys.path.insert(0, str(ROOT / "benchmarks"))

import make_organic_xtb
import pretrain_organic
import sample_organic

from peft_equi.utils.files import sha256

DATA = make_organic_xtb.DEFAULT_OUT

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
    # the same run writes the same bytes, and a second call finds nothing to do and keeps the record
    _generate(tmp_path / "b")
    for shard in sorted((tmp_path / "a" / "shards").glob("*.gz")):
        assert gzip.decompress(shard.read_bytes()) == gzip.decompress(
            (tmp_path / "b" / "shards" / shard.name).read_bytes()
        )
    first = (tmp_path / "a" / "shards" / "000-water.extxyz.gz").stat().st_mtime_ns
    recorded = (tmp_path / "a" / "record.json").read_bytes()
    _generate(tmp_path / "a")
    assert (tmp_path / "a" / "shards" / "000-water.extxyz.gz").stat().st_mtime_ns == first
    assert (tmp_path / "a" / "record.json").read_bytes() == recorded  # its cost fields would have changed
    with pytest.raises(SystemExit, match="other options"):
        make_organic_xtb.main(["--out-dir", str(tmp_path / "a"), "--limit", "3", "--stride", "4"])


def test_molecule_file_has_the_documented_columns():
    with make_organic_xtb.MOLECULES_CSV.open() as handle:
        assert csv.DictReader(handle).fieldnames == ["name", "smiles", "category"]


@pytest.fixture(scope="module")
def record():
    return json.loads((DATA / "record.json").read_text())


def test_the_committed_record_is_complete_and_consistent(molecules, record):
    shards, options = record["shards"], record["options"]
    assert [(s["name"], s["smiles"], s["category"]) for s in shards] == [
        (m.name, m.smiles, m.category) for m in molecules
    ]
    assert [s["file"] for s in shards] == [f"{m.stem}.extxyz.gz" for m in molecules]
    assert record["molecules"] == len(molecules)
    assert len({s["sha256"] for s in shards}) == len(shards)
    assert all(len(s["sha256"]) == 64 and int(s["sha256"], 16) >= 0 for s in shards)
    for s in shards:  # a trajectory has all its snapshots unless it stopped early, and the record says where
        full = options["configs_per_temperature"]
        assert s["configurations"] == sum(s["stopped_early"].get(f"{t:g}K", full) for t in options["temperatures"])
    assert record["configurations"] == sum(s["configurations"] for s in shards)
    assert record["trajectories_stopped_early"] == {s["name"]: s["stopped_early"] for s in shards if s["stopped_early"]}
    # the split is the one the recorded options draw, and the per-split counts are its shards'
    split = json.loads((DATA / "split.json").read_text())
    assert split == make_organic_xtb.holdout_split(molecules, options["holdout_fraction"], options["seed"])
    by_name = {s["name"]: s["configurations"] for s in shards}
    assert record["configurations_per_split"] == {k: sum(by_name[n] for n in names) for k, names in split.items()}
    assert record["molecules_per_split"] == {k: len(names) for k, names in split.items()}
    assert json.loads((DATA / "options.json").read_text()) == options
    assert {a.get_chemical_symbols()[0] for a in read(DATA / "isolated_atoms.xyz", ":")} == set(
        make_organic_xtb.ELEMENTS
    )
    # the foundation model's results cite this very record
    pretrain = json.loads(
        (ROOT / "benchmarks" / "results" / "pretrain" / "mace-organic-xtb" / "results.json").read_text()
    )
    assert pretrain["data"]["record_sha256"] == sha256(DATA / "record.json")


def test_the_regeneration_command_makes_the_recorded_set(record):
    command = shlex.split(make_organic_xtb.regeneration_command(record["options"]))
    assert command[:2] == [".venv/bin/python", "benchmarks/make_organic_xtb.py"]
    args = make_organic_xtb.parse_args(command[2:])
    assert {key: getattr(args, key) for key in record["options"]} == record["options"]
    assert args.out_dir == DATA and args.limit is None and args.molecules == make_organic_xtb.MOLECULES_CSV
    elsewhere = shlex.split(make_organic_xtb.regeneration_command(record["options"], Path("/tmp/a b")))
    assert make_organic_xtb.parse_args(elsewhere[2:]).out_dir == Path("/tmp/a b")


def _edit_shard(path: Path, edit) -> None:
    text = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress(edit(text).encode()))


def test_verify_checks_shards_against_the_record(tmp_path, capsys):
    options = {"seed": 1, "temperatures": [300.0, 600.0], "configs_per_temperature": 2, "holdout_fraction": 0.5}
    fake_set(tmp_path, options)
    record = (tmp_path / "record.json").read_bytes()
    fake_set(tmp_path, options, seconds=2.0)  # the same set again, at another cost: the record is kept
    assert (tmp_path / "record.json").read_bytes() == record
    assert make_organic_xtb.main(["--verify", "--out-dir", str(tmp_path)]) == 0
    assert "3 of 3 shards match" in capsys.readouterr().out
    assert len(make_organic_xtb.load_split(tmp_path, "train")) > 0

    water, ammonia, methane = sorted((tmp_path / "shards").glob("*.extxyz.gz"))
    _edit_shard(water, lambda text: text.replace("energy=-1.0 ", "energy=-1.0000000001 "))  # the last digits
    _edit_shard(ammonia, lambda text: text.split("\n2\n")[0] + "\n")  # its first snapshot only
    methane.unlink()
    assert make_organic_xtb.verify(tmp_path) == 1
    out = capsys.readouterr().out
    assert "0 of 3 shards match" in out
    assert "1 differ in bytes, with the recorded counts: water" in out
    assert "1 differ in bytes and counts: ammonia" in out
    assert "1 missing: regenerate with `.venv/bin/python benchmarks/make_organic_xtb.py --seed 1 " in out
    with pytest.raises(SystemExit, match=r"no record\.json"):
        make_organic_xtb.main(["--verify", "--out-dir", str(tmp_path / "nothing")])


@pytest.mark.parametrize(
    "run",
    [
        lambda data, tmp: pretrain_organic.main(
            ["--data", str(data), "--output", str(tmp / "out"), "--models-dir", str(tmp / "m")]
        ),
        lambda data, tmp: sample_organic.main(
            ["--data", str(data), "--split", "test", "--n", "1", "--out", str(tmp / "s.xyz")]
        ),
    ],
    ids=["pretrain_organic", "sample_organic"],
)
def test_consumers_of_missing_shards_say_how_to_regenerate_them(run, record, tmp_path):
    data = tmp_path / "data"  # the committed files without the shards, as a fresh clone has them
    data.mkdir()
    for name in ("record.json", "split.json", "options.json", "isolated_atoms.xyz"):
        (data / name).write_bytes((DATA / name).read_bytes())
    command, n = re.escape(make_organic_xtb.regeneration_command(record["options"], data)), len(record["shards"])
    with pytest.raises(SystemExit, match=f"{n} of the {n} shards .* missing .* regenerate them with `{command}`"):
        run(data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


@pytest.mark.slow
def test_the_recorded_command_regenerates_a_committed_sample(record, tmp_path):
    """Water again, with the recorded options: its record entry, and the snapshot of it in the committed
    replay sample (made from the recorded shards) among the new ones, to the file's precision."""
    run_generator(*make_organic_xtb.regeneration_arguments(record["options"]), "--limit", "1", "--workers", "1",
                  "--out-dir", str(tmp_path))  # fmt: skip
    new = json.loads((tmp_path / "record.json").read_text())["shards"]
    assert [{k: v for k, v in s.items() if k not in ("seconds", "sha256")} for s in new] == [
        {k: v for k, v in record["shards"][0].items() if k not in ("seconds", "sha256")}
    ]
    samples = read(ROOT / "benchmarks" / "data" / "organic-xtb-samples" / "train-251.extxyz", ":")
    (sampled,) = [a for a in samples if a.info["molecule"] == "water"]
    regenerated = read(tmp_path / "shards" / "000-water.extxyz.gz", ":")
    same_temperature = [a for a in regenerated if a.info["config_type"] == sampled.info["config_type"]]
    match = min(same_temperature, key=lambda a: np.abs(a.positions - sampled.positions).max())
    assert np.abs(match.positions - sampled.positions).max() < 1e-6  # written to 1e-8 A
    assert np.abs(match.get_forces() - sampled.get_forces()).max() < 1e-6
    assert match.get_potential_energy() == pytest.approx(sampled.get_potential_energy(), abs=1e-6)
