"""Pretrain a MACE model on rMD17 molecules other than the target: our stand-in for MACE-OFF.

Usage::

    python benchmarks/pretrain_mace.py --exclude aspirin            # -> benchmarks/results/pretrain/...
    python benchmarks/rmd17.py --quick --molecule aspirin \\
        --model benchmarks/results/pretrain/mace-small-no-aspirin/runs/mace-small-no-aspirin.model --trust-pickle

MACE-OFF23 cannot be downloaded here.  The seed papers fine-tune an organic foundation model
on an organic molecule it has not seen; this script makes the same situation on a small
scale: a MACE (H, C, O; ``--size`` from :func:`peft_equi.families.mace.build_mace`) is
trained from random weights on ``--per-molecule`` configurations of each rMD17 train split
except the target's, with the isolated-atom energies of rMD17's level of theory (PBE/def2-SVP)
as E0s and MACE's scale/shift (RMS force, mean interaction energy per atom).  The training
runs through the fine-tuning engine (preset ``full``); the model file
is ``runs/<folder name>.model`` (a pickled MACE module, load with ``--trust-pickle``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from record import ROOT, add_run_arguments, finished, start_run, write_json

from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.families.mace.loading import save_mace_state
from peft_equi.families.mace.potential import MacePotential
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.data import read_dataset, read_isolated_atom_energies

SHARED = ROOT.parent / "shared" / "data"
HCO_MOLECULES = ("aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic", "toluene")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exclude", default="aspirin", choices=HCO_MOLECULES, help="the fine-tuning target, left out")
    p.add_argument("--per-molecule", type=int, default=200, help="configurations drawn from each train split")
    p.add_argument("--size", default="small", help="build_mace size: small, small_nonlinear, mace_off23_medium")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--forces-weight", type=float, default=10.0, help="loss weight of forces (energy: 1 per atom)")
    p.add_argument("--data-dir", type=Path, default=SHARED)
    p.add_argument("--seed", type=int, default=0)
    add_run_arguments(p)
    args = p.parse_args(argv)
    record = start_run(args)
    isolated = args.data_dir / "botnet_isolated_atoms" / "isolated_atoms_pbe_def2svp.xyz"
    if not isolated.is_file():
        sys.exit(f"isolated-atom energies not found: {isolated} (give --data-dir)")
    folder = args.output or ROOT / "benchmarks" / "results" / "pretrain" / f"mace-{args.size}-no-{args.exclude}"
    (folder / "runs").mkdir(parents=True, exist_ok=True)

    from ase.io import write

    rng = np.random.default_rng(args.seed)
    molecules = [m for m in HCO_MOLECULES if m != args.exclude]
    structures = []
    for molecule in molecules:
        data = read_dataset(args.data_dir / "rmd17" / f"rmd17_{molecule}_train_01.npz")
        for i in rng.choice(len(data), size=min(args.per_molecule, len(data)), replace=False):
            atoms = data.atoms[i].copy()
            atoms.info["energy"] = float(data.energies[i])
            atoms.arrays["forces"] = np.asarray(data.forces[i])
            structures.append(atoms)
    train = folder / "runs" / "pretraining_data.extxyz"
    write(train, structures, format="extxyz")

    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    e0s = read_isolated_atom_energies(isolated)
    model = build_mace(args.size, HCO, atomic_energies=[e0s[z] for z in HCO], seed=args.seed).to(dtype)
    # MACE's own recipe: shift = mean interaction energy per atom, scale = RMS force component
    per_atom = [(float(a.info["energy"]) - sum(e0s[z] for z in a.numbers)) / len(a) for a in structures]
    rms_force = float(np.sqrt(np.mean(np.concatenate([a.arrays["forces"].ravel() for a in structures]) ** 2)))
    model.scale_shift.shift.fill_(float(np.mean(per_atom)))
    model.scale_shift.scale.fill_(rms_force)
    config = FinetuneConfig(
        model=f"mace-{args.size}",
        adapter="full",
        train=train,
        valid_fraction=0.1,
        e0s="none",  # the model's own E0s are rMD17's isolated-atom energies
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        energy_loss="per_atom",  # molecules of different sizes: energies weighed per atom, as mace's default
        forces_weight=args.forces_weight,
        eval_batch_size=25,
        dtype=args.dtype,
        seed=args.seed,
        output=folder / "runs" / "training",  # the engine's own folder (runs/ holds the data and the model)
        overwrite=True,  # a second pretraining replaces the first
        progress=False,
    )
    finetuner = Finetuner(config, MacePotential(model, f"mace-{args.size}"))
    result = finetuner.run()
    model_file = folder / "runs" / f"{folder.name}.model"  # named for what it is: results of rmd17.py carry the name
    Path(result["merged_model"]).replace(model_file)
    shared_file = ROOT / "benchmarks" / "models" / f"{folder.name}.pt"  # committed: pickle-free, a few tens of kB
    shared_file.parent.mkdir(exist_ok=True)
    # the trained model in memory (the one merged.model holds): nothing is unpickled
    save_mace_state(finetuner.model.merge_and_unload(), shared_file)
    valid = result["after"]["valid"].summary()
    lines = [
        f"# MACE ({args.size}) pretrained on rMD17 without {args.exclude}",
        "",
        f"{len(structures)} configurations ({args.per_molecule} from each of {', '.join(molecules)}), "
        f"90/10 train/validation split, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, "
        f"forces weight {args.forces_weight}, {args.dtype}; "
        f"E0s: isolated atoms at PBE/def2-SVP. {result['trainable_parameters']:,} parameters.",
        "",
        f"Validation (held-out pretraining configurations): energy MAE {valid['energy_mae_meV']:.1f} meV, "
        f"force MAE {valid['forces_mae_meV_per_A']:.1f} meV/A.",
        "",
        f"Model files: `benchmarks/models/{shared_file.name}` (pickle-free, committed; `rmd17.py --model` reads it "
        f"without `--trust-pickle`) and `{model_file.relative_to(ROOT)}` (MACE's pickled format, not committed).",
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    write_json(
        folder / "results.json",
        {"valid": valid, "molecules": molecules, "args": vars(args), "model_file": str(model_file)}
        | {"record": finished(record)},
    )
    print("\n".join(lines))


if __name__ == "__main__":
    from peft_equi_train.cli import configure_logging

    configure_logging()  # the engine's messages (one line per epoch, the model cut) on stderr
    main()
