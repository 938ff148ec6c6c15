"""A small organic pretraining set without xTB: fake labels written by the generator's own writers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import make_organic_xtb


def fake_set(out: Path, options: dict, molecules: int = 3, seconds: float = 1.0) -> None:
    """The first ``molecules`` of the list as H2 snapshots (``configs_per_temperature`` per temperature; the
    third molecule's trajectories stop one snapshot early), their split and record, in ``out``."""
    chosen = make_organic_xtb.read_molecules()[:molecules]
    full = options["configs_per_temperature"]
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for m in chosen:
        kept = full - 1 if m.index == 2 else full
        snapshots = []
        for t in options["temperatures"]:
            for step in range(kept):
                atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74 + 0.01 * step]])
                atoms.info.update({"energy": -1.0 - step, "config_type": f"md_{t:g}K", "molecule": m.name})
                atoms.arrays["forces"] = np.full((2, 3), 0.1 * step)
                snapshots.append(atoms)
        stops = {f"{t:g}K": kept for t in options["temperatures"]} if kept < full else {}
        info = {"name": m.name, "smiles": m.smiles, "category": m.category, "atoms": 2,
                "configurations": len(snapshots), "stopped_early": stops, "seconds": seconds}  # fmt: skip
        make_organic_xtb.write_shard(out / "shards", m, snapshots, info)
    split = make_organic_xtb.holdout_split(chosen, options["holdout_fraction"], options["seed"])
    (out / "split.json").write_text(json.dumps(split))
    make_organic_xtb.write_record(out, chosen, options, wall=seconds)
