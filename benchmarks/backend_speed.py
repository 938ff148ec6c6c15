"""Step time of e3nn vs cuequivariance MACE, base vs adapters, merged vs unmerged: ratios within one run.

Usage: python benchmarks/backend_speed.py [--device cpu|cuda] [--repeats 10] [--size small|mace_off23_medium]

For each backend (e3nn, cueq ir_mul) and model variant (base, each adapter, merged where
mergeable) it times energy+forces (inference) and a training step (forces with
create_graph, backward of an energy+force loss) on a batch of small molecules, calling the
variants in turn so that machine load hits them alike, and reports each median as a ratio
to the e3nn base model.  On CPU cuequivariance runs its naive path (no fused kernels), so
its ratios there say nothing about GPUs; the same script runs unchanged on a CUDA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from ase.build import molecule
from timing import interleaved_medians  # benchmarks/ is on sys.path when the script runs

import peft_equi
from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.families.mace.cueq import kernel_report, to_cueq
from peft_equi.families.mace.potential import mace_batch

ADAPTERS = ["lora", "elora", "mmea", "bitfit", "film", "mmea-paper"]


def _batch(device: torch.device) -> dict:
    atoms = [molecule(name) for name in ("CH3CH2OH", "CH3OH", "CH3CHO", "CH3COOH") for _ in range(2)]
    return {k: v.to(device) for k, v in mace_batch(atoms, HCO, 5.0).items()}


def _timers(model, batch):
    def inference():
        model(dict(batch), training=False, compute_force=True)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(dict(batch), training=True, compute_force=True)
        (out["energy"].square().sum() + out["forces"].square().sum()).backward()

    return inference, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", default="small", choices=["small", "mace_off23_medium"])
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_default_dtype(torch.float64)
    base = build_mace(args.size, HCO).to(device)
    batch = _batch(device)
    variants = {("e3nn", "base"): base, ("cueq", "base"): to_cueq(copy.deepcopy(base), device=args.device)}
    for name in ADAPTERS:
        adapted = peft_equi.get_peft_model(copy.deepcopy(base), name)
        variants[("e3nn", name)] = adapted
        variants[("cueq", name)] = to_cueq(adapted, device=args.device)
        for backend in ("e3nn", "cueq"):
            with contextlib.suppress(peft_equi.NotMergeableError):
                variants[(backend, f"{name} merged")] = copy.deepcopy(variants[(backend, name)]).merge_and_unload()
    fns = {}
    for key, model in variants.items():
        fns[(*key, "inference")], fns[(*key, "step")] = _timers(model, batch)
    median = interleaved_medians(fns, args.repeats)
    print(f"MACE {args.size}, {len(batch['ptr']) - 1} molecules, {args.device}, float64, median of {args.repeats}")
    print(kernel_report(args.device))
    print(
        f"e3nn base: inference {1e3 * median['e3nn', 'base', 'inference']:.1f} ms, "
        f"training step {1e3 * median['e3nn', 'base', 'step']:.1f} ms\n"
    )
    print("| backend | model | inference / e3nn base | training step / e3nn base |")
    print("|---|---|---:|---:|")
    for backend, name in variants:
        inference = median[backend, name, "inference"] / median["e3nn", "base", "inference"]
        step = median[backend, name, "step"] / median["e3nn", "base", "step"]
        print(f"| {backend} | {name} | {inference:.2f} | {step:.2f} |")


if __name__ == "__main__":
    main()
