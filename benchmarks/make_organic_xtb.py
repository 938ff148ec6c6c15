"""Generate the pretraining set of the organic foundation model: GFN2-xTB Langevin MD of small molecules.

One command, deterministic, resumable, on every core::

    .venv/bin/python benchmarks/make_organic_xtb.py            # writes benchmarks/data/organic-xtb/
    .venv/bin/python benchmarks/make_organic_xtb.py --verify   # the shards there against record.json

The shards are not in git (regenerable, 19 MB); ``record.json`` (options, versions, counts and
sha256 of every shard), ``split.json``, ``options.json`` and ``isolated_atoms.xyz`` are.  The full
command that regenerates the recorded set is :func:`regeneration_command` of its options (also in
``benchmarks/data/README.md``); a consumer that finds shards missing says so in one line with it.

Molecules: ``benchmarks/data/organic_molecules.csv`` (name, SMILES, category; H, C, N, O only, at
most 20 heavy atoms; how they were chosen is written in ``benchmarks/data/README.md``).  No rMD17
molecule, 3BPA or acetylacetone is among them (``tests/integration/test_organic_data.py`` checks InChIKeys).

Per molecule and per bath temperature (300, 600 and 1200 K by default), a separate trajectory:
RDKit ETKDGv3 conformer (seeded), MMFF94 relaxation, Maxwell-Boltzmann velocities, Langevin
dynamics with GFN2-xTB forces (``peft_equi_train.xtb``: dt 0.5 fs, friction 0.01/fs, centre of mass
fixed), ``--equilibration-steps`` steps, then one snapshot every ``--stride`` steps.  A trajectory
stops at the first snapshot whose bond graph (1.25 x covalent radii) differs from its starting
geometry's: the set holds intact molecules only; how many trajectories stopped early is recorded.

Output (``--out-dir``):

* ``shards/<index>-<name>.extxyz.gz``: the snapshots of one molecule (all temperatures), extxyz
  with ``energy`` (eV), ``config_type`` (``md_<T>K``), ``md_step``, ``molecule`` and a ``forces``
  column (eV/A); gzip with a zero timestamp so that the same run writes the same bytes.  A shard
  is written atomically when its molecule is done: stopping and rerunning resumes.
* ``shards/<index>-<name>.json``: counts, seconds, early stops, sha256 of the shard.
* ``isolated_atoms.xyz``: GFN2-xTB energies of isolated H, C, N, O (the E0s).
* ``split.json``: whole molecules held out (``--holdout-fraction``, half validation, half test),
  drawn by a seeded permutation.
* ``record.json``: options, versions, machine, per-molecule counts and sha256s, totals, cost.
  A run that finds a record of the same set there (same molecules, options and counts) keeps it
  and checks the shards against it (``--verify``): regenerating the committed set leaves the
  committed record, whose sha256 the pretraining's results cite, as it is.

``load_split(out_dir, "train" | "valid" | "test")`` reads a split back as ``ase.Atoms``.

Determinism: every random draw comes from ``numpy.random.SeedSequence([seed, index, t])``;
tblite and BLAS run on one thread per worker, and two runs in fresh processes write the same
bytes.  Not the recorded bytes, though: water and ammonia, regenerated on the machine that made
the record, have the recorded positions and forces but energies that differ in the last digits
(``benchmarks/data/README.md``), hence other sha256s; ``--verify`` then says whether the counts
agree.  Langevin trajectories are chaotic: another CPU, BLAS or tblite build may give different
(equally valid) snapshots.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy and tblite load
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from ase import Atoms

BENCHMARKS = Path(__file__).resolve().parent
MOLECULES_CSV = BENCHMARKS / "data" / "organic_molecules.csv"
DEFAULT_OUT = BENCHMARKS / "data" / "organic-xtb"
ELEMENTS = ("H", "C", "N", "O")
#: What a rerun may change in ``record.json`` without its shards being another set.
INVOCATION_KEYS = ("command", "versions", "machine", "cpu_seconds", "wall_seconds_last_invocation")


@dataclass(frozen=True)
class Molecule:
    """One row of the molecule list; ``index`` is its row number (stable: seeds derive from it)."""

    index: int
    name: str
    smiles: str
    category: str

    @property
    def stem(self) -> str:
        return f"{self.index:03d}-{self.name}"


def read_molecules(path: Path = MOLECULES_CSV) -> list[Molecule]:
    """The molecule list, in file order."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [Molecule(i, row["name"], row["smiles"], row["category"]) for i, row in enumerate(rows)]


def conformer(smiles: str, seed: int) -> Atoms:
    """An ETKDGv3 conformer (with hydrogens), relaxed with MMFF94 where MMFF has parameters."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"RDKit could not embed {smiles}")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return Atoms(numbers=numbers, positions=mol.GetConformer().GetPositions(), pbc=False)


def generate_molecule(molecule: Molecule, options: dict[str, Any]) -> tuple[list[Atoms], dict[str, Any]]:
    """All temperatures' snapshots of one molecule, and what happened (counts, early stops, seconds)."""
    from peft_equi_train.md import bond_graph
    from peft_equi_train.xtb import langevin_snapshots

    start = time.perf_counter()
    snapshots: list[Atoms] = []
    stops: dict[str, int] = {}
    for t_index, temperature in enumerate(options["temperatures"]):
        sequence = np.random.SeedSequence([options["seed"], molecule.index, t_index])
        rdkit_seed = int(sequence.generate_state(1)[0] % (2**31 - 1))
        atoms = conformer(molecule.smiles, rdkit_seed)
        reference = bond_graph(atoms)
        rng = np.random.default_rng(sequence)
        for kept, snapshot in enumerate(
            langevin_snapshots(
                atoms,
                temperature_k=temperature,
                n_configs=options["configs_per_temperature"],
                stride=options["stride"],
                equilibration_steps=options["equilibration_steps"],
                timestep_fs=options["timestep"],
                friction_per_fs=options["friction"],
                rng=rng,
            )
        ):
            if not np.array_equal(bond_graph(snapshot), reference):
                stops[f"{temperature:g}K"] = kept
                break
            snapshot.info["molecule"] = molecule.name
            snapshots.append(snapshot)
    info = {
        "name": molecule.name,
        "smiles": molecule.smiles,
        "category": molecule.category,
        "atoms": len(snapshots[0]) if snapshots else None,
        "configurations": len(snapshots),
        "stopped_early": stops,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return snapshots, info


def write_shard(shard_dir: Path, molecule: Molecule, snapshots: Sequence[Atoms], info: dict[str, Any]) -> None:
    """Write ``<stem>.extxyz.gz`` and ``<stem>.json`` atomically (temporary file, then rename)."""
    from ase.io import write

    from peft_equi.utils.files import atomic_write, sha256

    text = io.StringIO()
    write(text, list(snapshots), format="extxyz")

    def write_gzip(tmp: Path) -> None:  # no file name and a zero timestamp in the header: same content, same bytes
        with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
            handle.write(text.getvalue().encode())

    path = atomic_write(shard_dir / f"{molecule.stem}.extxyz.gz", write_gzip)
    info = {**info, "file": path.name, "sha256": sha256(path)}
    atomic_write(shard_dir / f"{molecule.stem}.json", lambda tmp: tmp.write_text(json.dumps(info, indent=1) + "\n"))


def _work(job: tuple[Molecule, dict[str, Any], str]) -> str:
    molecule, options, shard_dir = job
    snapshots, info = generate_molecule(molecule, options)
    write_shard(Path(shard_dir), molecule, snapshots, info)
    return f"{molecule.stem}: {info['configurations']} configurations, {info['seconds']:.1f} s"


def holdout_split(molecules: Sequence[Molecule], fraction: float, seed: int) -> dict[str, list[str]]:
    """Whole molecules held out: a seeded permutation's first ``fraction``, halved into valid and test."""
    order = np.random.default_rng(seed).permutation(len(molecules))
    n_hold = max(2, round(fraction * len(molecules)))
    held = [molecules[i].name for i in order[:n_hold]]
    valid, test = sorted(held[: n_hold // 2]), sorted(held[n_hold // 2 :])
    train = sorted(m.name for m in molecules if m.name not in set(held))
    return {"train": train, "valid": valid, "test": test}


def regeneration_arguments(options: dict[str, Any]) -> list[str]:
    """The command-line options that make a set with these ``options`` (every one spelled out)."""
    arguments = []
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        arguments += [f"--{key.replace('_', '-')}", *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)]
    return arguments


def regeneration_command(options: dict[str, Any], out_dir: Path = DEFAULT_OUT) -> str:
    """The shell command, from the repository root, that makes (or completes) the set of ``options``."""
    where = [] if out_dir.resolve() == DEFAULT_OUT else ["--out-dir", str(out_dir)]
    return shlex.join([".venv/bin/python", "benchmarks/make_organic_xtb.py", *regeneration_arguments(options), *where])


def require_shards(out_dir: Path) -> None:
    """Exit with one line saying how to regenerate them unless every shard of ``out_dir``'s record is there."""
    record_file = out_dir / "record.json"
    if not record_file.is_file() or not (out_dir / "split.json").is_file():
        raise SystemExit(f"error: no finished data set in {out_dir}: run benchmarks/make_organic_xtb.py first")
    record = json.loads(record_file.read_text())
    missing = [s["file"] for s in record["shards"] if not (out_dir / "shards" / s["file"]).is_file()]
    if missing:
        raise SystemExit(
            f"error: {len(missing)} of the {len(record['shards'])} shards of {record_file} are missing (they are not "
            f"in git): regenerate them with `{regeneration_command(record['options'], out_dir)}` (about 1.5 CPU hours)"
        )


def load_split(out_dir: Path, split: str) -> list[Atoms]:
    """The labelled snapshots of one split (``train``, ``valid`` or ``test``) of a generated set."""
    from peft_equi_train.xtb import read_labelled

    require_shards(out_dir)
    names = set(json.loads((out_dir / "split.json").read_text())[split])
    images: list[Atoms] = []
    for shard in sorted((out_dir / "shards").glob("*.extxyz.gz")):
        if shard.name.split("-", 1)[1].removesuffix(".extxyz.gz") in names:
            images.extend(read_labelled(shard))
    return images


def shard_counts(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """A shard's ``configurations`` and ``stopped_early`` (as its record has them), read from its frames."""
    per_type = Counter(re.findall(r"config_type=md_(\S+)K", gzip.decompress(path.read_bytes()).decode()))
    counts = {f"{t:g}K": per_type[f"{t:g}"] for t in options["temperatures"]}
    stops = {t: n for t, n in counts.items() if n < options["configs_per_temperature"]}
    return {"configurations": sum(counts.values()), "stopped_early": stops}


def verify(out_dir: Path) -> int:
    """Check the shards of ``out_dir`` against its ``record.json``: 0 if every sha256 matches, else 1.

    A shard whose bytes differ is read to say whether its counts (configurations, early stops) are
    the recorded ones."""
    from peft_equi.utils.files import sha256

    record = json.loads((out_dir / "record.json").read_text())
    missing, same_counts, different = [], [], []
    for entry in record["shards"]:
        path = out_dir / "shards" / entry["file"]
        if not path.is_file():
            missing.append(entry["name"])
        elif sha256(path) != entry["sha256"]:
            counts = shard_counts(path, record["options"])
            (same_counts if counts == {key: entry[key] for key in counts} else different).append(entry["name"])
    n = len(record["shards"])
    print(f"{n - len(missing) - len(same_counts) - len(different)} of {n} shards match record.json's sha256")
    if same_counts:
        print(f"{len(same_counts)} differ in bytes, with the recorded counts: {', '.join(same_counts)}")
    if different:
        print(f"{len(different)} differ in bytes and counts: {', '.join(different)}")
    if missing:
        print(f"{len(missing)} missing: regenerate with `{regeneration_command(record['options'], out_dir)}`")
    return 1 if missing or same_counts or different else 0


def write_record(out_dir: Path, molecules: Sequence[Molecule], options: dict[str, Any], wall: float) -> dict:
    """Collect the shards' metadata into ``record.json`` (unless it holds this set already); return it."""
    shards = [json.loads((out_dir / "shards" / f"{m.stem}.json").read_text()) for m in molecules]
    split = json.loads((out_dir / "split.json").read_text())
    counts = {name: sum(s["configurations"] for s in shards if s["name"] in set(split[name])) for name in split}
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "options": options,
        "versions": {p: version(p) for p in ("numpy", "ase", "tblite", "rdkit")}
        | {"python": platform.python_version()},
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "molecules": len(molecules),
        "configurations": sum(s["configurations"] for s in shards),
        "configurations_per_split": counts,
        "molecules_per_split": {name: len(names) for name, names in split.items()},
        "trajectories_stopped_early": {s["name"]: s["stopped_early"] for s in shards if s["stopped_early"]},
        "cpu_seconds": round(sum(s["seconds"] for s in shards), 1),
        "wall_seconds_last_invocation": round(wall, 1),
        "shards": shards,
    }
    record_file = out_dir / "record.json"
    if record_file.is_file() and _same_set(json.loads(record_file.read_text()), record):
        print(f"{record_file} describes this set already (same molecules, options and counts): kept as it is")
        verify(out_dir)
    else:
        record_file.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _same_set(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records describe one set: the same molecules, options and counts (sha256s, cost and
    invocation aside: a regeneration differs from the recorded bytes in the last digits of its energies)."""

    def content(record: dict[str, Any]) -> dict[str, Any]:
        shards = [{k: v for k, v in s.items() if k not in ("seconds", "sha256")} for s in record["shards"]]
        return {k: v for k, v in record.items() if k not in INVOCATION_KEYS} | {"shards": shards}

    return content(a) == content(b)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults make the committed set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output folder (resumes what is there)")
    parser.add_argument("--molecules", type=Path, default=MOLECULES_CSV, help="CSV of name, smiles, category")
    parser.add_argument("--limit", type=int, default=None, help="only the first N molecules (for tests)")
    parser.add_argument("--seed", type=int, default=20261202, help="seed of every random draw")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 1200.0], help="K")
    parser.add_argument("--configs-per-temperature", type=int, default=40, help="snapshots per trajectory")
    parser.add_argument("--stride", type=int, default=25, help="MD steps between snapshots")
    parser.add_argument("--equilibration-steps", type=int, default=150, help="MD steps before the first snapshot")
    parser.add_argument("--timestep", type=float, default=0.5, help="MD time step (fs)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    parser.add_argument("--holdout-fraction", type=float, default=0.1, help="molecules held out (valid + test)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--verify", action="store_true", help="only check --out-dir's shards against its record")
    args = parser.parse_args(argv)
    for name in ("configs_per_temperature", "stride", "timestep", "friction", "workers"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.holdout_fraction < 1:
        parser.error("--holdout-fraction must be between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate what is missing, then write the split and the record."""
    args = parse_args(argv)
    if args.verify:
        if not (args.out_dir / "record.json").is_file():
            raise SystemExit(f"error: --verify: no record.json in {args.out_dir}")
        return verify(args.out_dir)
    from ase.io import write

    from peft_equi_train.xtb import isolated_atoms

    molecules = read_molecules(args.molecules)[: args.limit]
    options = {
        key: getattr(args, key)
        for key in (
            "seed",
            "temperatures",
            "configs_per_temperature",
            "stride",
            "equilibration_steps",
            "timestep",
            "friction",
            "holdout_fraction",
        )
    }
    shard_dir = args.out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    options_file = args.out_dir / "options.json"
    if options_file.exists() and json.loads(options_file.read_text()) != options:
        raise SystemExit(f"error: {args.out_dir} was made with other options ({options_file}); use another --out-dir")
    options_file.write_text(json.dumps(options, indent=1) + "\n")
    start = time.perf_counter()
    write(str(args.out_dir / "isolated_atoms.xyz"), isolated_atoms(ELEMENTS), format="extxyz")
    pending = [m for m in molecules if not (shard_dir / f"{m.stem}.json").exists()]
    pending.sort(key=lambda m: -len(m.smiles))  # long first: the last jobs are short, both cores stay busy
    print(f"{len(molecules) - len(pending)} molecules done, {len(pending)} to go", flush=True)
    jobs = [(m, options, str(shard_dir)) for m in pending]
    if args.workers == 1:
        for line in map(_work, jobs):
            print(line, flush=True)
    else:
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            for line in pool.imap_unordered(_work, jobs):
                print(line, flush=True)
    split = holdout_split(molecules, args.holdout_fraction, args.seed)
    (args.out_dir / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    record = write_record(args.out_dir, molecules, options, time.perf_counter() - start)
    print(
        f"{record['configurations']} configurations of {record['molecules']} molecules "
        f"({record['configurations_per_split']}), {record['cpu_seconds']:.0f} CPU s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
