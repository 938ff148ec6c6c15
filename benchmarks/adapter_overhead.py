"""Step time of adapted vs base vs merged models, as ratios within one run.

Usage: python benchmarks/adapter_overhead.py [--repeats 20] [--nodes 2000]

For each adapter, times forward and forward+backward (a training step without the
optimizer) of a small equivariant network (o3.Linear, tensor product, MLP, nn.Linear) and
reports each as a ratio to the unadapted network measured in the same run, plus the merged
model where the adapter is mergeable.  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from quickstart import IRREPS_IN, SmallEquivariantNet
from timing import interleaved_medians

import peft_equi
from peft_equi.testing import randomize_adapters


def _timers(model, x, attrs):
    def forward():
        with torch.no_grad():
            model(x, attrs)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, attrs).square().sum().backward()

    return forward, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = SmallEquivariantNet()
    x = torch.randn(args.nodes, peft_equi.Irreps(IRREPS_IN).dim)
    attrs = torch.randn(args.nodes, 4)
    models = {"base": base}
    trainable = {}
    for name in ["lora", "elora", "mmea", "bitfit", "film"]:
        model = peft_equi.get_peft_model(copy.deepcopy(base), name)
        randomize_adapters(model)
        trainable[name] = model.num_trainable_parameters()
        models[name] = model
        with contextlib.suppress(peft_equi.NotMergeableError):
            models[f"{name} merged"] = peft_equi.get_peft_model(copy.deepcopy(base), name).merge_and_unload()
    fns = {}
    for key, model in models.items():
        forward, step = _timers(model, x, attrs)
        fns[(key, "forward")] = forward
        if "merged" not in key:
            fns[(key, "step")] = step
    t = interleaved_medians(fns, args.repeats)
    print(
        f"base: forward {1e3 * t['base', 'forward']:.2f} ms, forward+backward {1e3 * t['base', 'step']:.2f} ms "
        f"({args.nodes} nodes, {torch.get_default_dtype()}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}, interleaved)\n"
    )
    print("| adapter | trainable | forward / base | fwd+bwd / base | merged forward / base |")
    print("|---|---:|---:|---:|---:|")
    for name, count in trainable.items():
        merged = t.get((f"{name} merged", "forward"))
        merged_text = f"{merged / t['base', 'forward']:.2f}" if merged else "not mergeable"
        print(
            f"| {name} | {count:,} | {t[name, 'forward'] / t['base', 'forward']:.2f} | "
            f"{t[name, 'step'] / t['base', 'step']:.2f} | {merged_text} |"
        )


if __name__ == "__main__":
    main()
