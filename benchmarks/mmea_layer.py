"""Where MMEA's time goes on one MACE layer: the layer alone, with MMEA, and MMEA reading its gate inputs by index.

Usage: python benchmarks/mmea_layer.py [--layer interactions.1.linear] [--atoms 105] [--repeats 200]

Takes one ``o3.Linear`` of MACE-OFF23-medium's architecture (random weights, H/C/O; default:
``interactions.1.linear``, 5120 -> 2048 components, the widest) and times forward + backward
to its input and output, as the force computation differentiates it, on ``--atoms`` nodes:

- the base layer alone;
- with MMEA (rank 16, random adapter weights), its ``0e`` gate inputs read with ``narrow``
  (they are contiguous in MACE's irreps);
- the same adapter made to read them with ``index_select`` (how it read them before).

Ratios within each round (``timing.round_ratios``, quartiles) to MMEA as it runs; writes
``results.md`` / ``results.json`` under ``benchmarks/results/mmea_layer/``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from record import ROOT, add_run_arguments, finished, start_run, write_json
from timing import interleaved_samples, round_ratios

import peft_equi
from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype


def _timer(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run():
        inputs = x.detach().requires_grad_(True)
        torch.autograd.grad(layer(inputs), inputs, grad)

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", default="interactions.1.linear", help="module path of an o3.Linear in MACE")
    p.add_argument("--atoms", type=int, default=105, help="nodes (5 aspirin structures: 105)")
    p.add_argument("--repeats", type=int, default=200)
    add_run_arguments(p, dtype="float64")
    args = p.parse_args(argv)
    record = start_run(args)
    dtype = getattr(torch, args.dtype)
    with torch_default_dtype(dtype):
        base = build_mace("mace_off23_medium", HCO)
    rule = peft_equi.Rule(adapter="mmea", target=args.layer, kinds=["linear"], options={"rank": 16})
    model = peft_equi.get_peft_model(copy.deepcopy(base), peft_equi.PeftConfig(rules=[rule]))
    randomize_adapters(model)
    adapted = model.adapted_layers[args.layer]
    by_index = copy.deepcopy(adapted)
    for reader in by_index.adapter.invariants.channels:
        reader.contiguous = False
    torch.manual_seed(0)
    x = torch.randn(args.atoms, adapted.spec.irreps_in[0].dim, dtype=dtype)
    grad = torch.randn(args.atoms, adapted.spec.irreps_out.dim, dtype=dtype)
    fns = {
        "base layer": _timer(adapted.base_layer, x, grad),
        "mmea (narrow)": _timer(adapted, x, grad),
        "mmea (index_select)": _timer(by_index, x, grad),
    }
    samples = interleaved_samples(fns, args.repeats, warmup=5)
    rows = []
    for key in fns:
        quartiles = list(round_ratios(samples, key, "mmea (narrow)"))
        rows.append({"variant": key, "median_us": 1e6 * statistics.median(samples[key]), "vs_mmea": quartiles})
    spec = adapted.spec
    lines = [
        f"# MMEA on MACE-OFF23-medium's `{args.layer}`",
        "",
        f"{spec.irreps_in[0].dim} -> {spec.irreps_out.dim} components, {args.atoms} nodes, {args.dtype}, "
        f"{torch.get_num_threads()} threads; forward + backward to input and output, {args.repeats} interleaved "
        "rounds; ratio to MMEA as it runs (median over rounds of the ratio within a round, quartiles).",
        "",
        "| variant | median (us) | vs MMEA (narrow) |",
        "|---|---:|---:|",
        *[
            f"| {r['variant']} | {r['median_us']:.0f} | {q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f}) |"
            for r in rows
            for q in [r["vs_mmea"]]
        ],
        "",
    ]
    folder = args.output or ROOT / "benchmarks" / "results" / "mmea_layer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text("\n".join(lines))
    write_json(folder / "results.json", {"rows": rows, "record": finished(record)})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
