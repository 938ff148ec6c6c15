"""A seeded sample of one split of the organic pretraining set, as one extxyz file.

Usage::

    .venv/bin/python benchmarks/sample_organic.py --split test --n 100 --out retain-test.extxyz

For the comparisons' ``--retain`` (held-out pretraining molecules: how far fine-tuning drifts
from the foundation) and ``--replay`` (training molecules replayed with the foundation's
pseudo-labels).  The sample is spread evenly over the split's molecules: ``n // molecules``
snapshots of each (the remainder from the first molecules in name order), each molecule's
drawn without replacement by a seeded generator; the xTB labels are kept (``energy``,
``forces``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from make_organic_xtb import DEFAULT_OUT as DATA
from make_organic_xtb import load_split


def sample(data: Path, split: str, n: int, seed: int) -> list:
    """``n`` snapshots of ``split``, spread evenly over its molecules (seeded)."""
    by_molecule = defaultdict(list)
    for atoms in load_split(data, split):
        by_molecule[atoms.info["molecule"]].append(atoms)
    names = sorted(by_molecule)
    if not names:
        raise SystemExit(f"split {split!r} of {data} has no snapshots")
    if n > sum(len(v) for v in by_molecule.values()):
        raise SystemExit(f"--n {n} is more than the {split} split's snapshots")
    rng = np.random.default_rng(seed)
    chosen = []
    for k, name in enumerate(names):
        snapshots = by_molecule[name]
        take = min(len(snapshots), n // len(names) + (k < n % len(names)))
        chosen.extend(snapshots[i] for i in sorted(rng.choice(len(snapshots), size=take, replace=False)))
    return chosen


def main(argv: list[str] | None = None) -> None:
    from ase import Atoms
    from ase.io import write

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="output folder of make_organic_xtb.py")
    p.add_argument("--split", choices=("train", "valid", "test"), required=True)
    p.add_argument("--n", type=int, required=True, help="snapshots in the sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="extxyz file to write")
    args = p.parse_args(argv)
    images = sample(args.data, args.split, args.n, args.seed)
    bare = []  # labels as plain info/arrays (the snapshots as read also carry them on a calculator)
    for atoms in images:
        copy = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        copy.info.update({k: atoms.info[k] for k in ("energy", "molecule", "config_type")})
        copy.arrays["forces"] = atoms.arrays["forces"]
        bare.append(copy)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, bare, format="extxyz")
    print(f"{len(images)} snapshots of {len({a.info['molecule'] for a in images})} molecules -> {args.out}")


if __name__ == "__main__":
    main()
