"""Trainable parameters of the paper presets on MACE-OFF23-medium, as a markdown table.

Usage: python benchmarks/param_counts.py   (also writes benchmarks/results/param_counts/)

Builds the MACE-OFF23-medium architecture for its ten elements with random weights (the
counts do not depend on the values), cuts it to H, C, O with ``subset_elements`` (as the
papers' ``load_foundations`` did before counting and training) and counts the trainable
parameters of each preset on the cut model, next to the numbers published by the MMEA and
ELoRA papers and by ``mace.modules.lora.inject_lora``; the counts on the uncut ten-element
model are shown beside them, and so are the counts of the MMEA ablations (no published numbers).
"""

from __future__ import annotations

import copy

import torch
from record import ROOT, finished, run_record, write_json

import peft_equi
from peft_equi.families.mace import subset_elements
from peft_equi.families.mace.architectures import HCO, MACE_OFF23_ELEMENTS, build_mace

ROWS = [
    ("full", {"fully_trained_buffers": ["*bessel_weights"]}, 751_896, "all weights + Bessel weights"),
    # the papers count MACE's 8 Bessel weights (requires_grad, never in an optimizer group); the presets
    # leave them frozen unless train_bessel=True
    ("mmea-paper", {"rank": 16, "train_bessel": True}, 151_354, "MMEA paper, r=16"),
    ("mmea-paper", {"rank": 32, "train_bessel": True}, 201_258, "MMEA paper, r=32"),
    ("elora-paper", {"rank": 16, "train_bessel": True}, 175_880, "ELoRA paper, r=16"),
    ("mace-lora", {"rank": 4, "alpha": 1.0}, 29_396, "mace.modules.lora.inject_lora(rank=4)"),
    # the MMEA ablations (benchmarks/rmd17.py --ablations, docs/adapters/initialisation.md): not published
    *(
        ("mmea-paper", {"rank": 16, "train_bessel": True, option: value}, None, f"ablation: {label}")
        for label, option, value in [
            ("no activation", "activation", "identity"),
            ("no input-head reuse", "heads", "separate"),
            ("no scalar modulation", "scalar_modulation", False),
            ("no higher-order modulation", "higher_order_modulation", False),
            ("shared higher-order gains", "gain_sharing", "irrep"),
            ("conventional adapter", "linear_adapter", "conventional"),
        ]
    ),
]


def main() -> None:
    record = run_record()
    torch.set_default_dtype(torch.float64)
    full = build_mace("mace_off23_medium", MACE_OFF23_ELEMENTS)
    base = subset_elements(full, HCO)
    lines = [
        "# Trainable parameters of the paper presets, MACE-OFF23-medium architecture cut to H, C, O",
        "",
        "The ten-element architecture (H, C, N, O, F, P, S, Cl, Br, I) cut to H, C, O by",
        "`peft_equi.families.mace.subset_elements`, as the papers' `load_foundations` did.",
        "Bessel weights counted as trainable, as the papers count them (`train_bessel=True`; their code never",
        "updates them, and the presets leave them frozen by default: 8 fewer).",
        "",
        "| preset | options | trainable (cut to H, C, O) | reference | matches | trainable (10 elements, uncut) |",
        "|---|---|---:|---:|---|---:|",
    ]
    rows = []
    for name, options, reference, source in ROWS:
        count = peft_equi.get_peft_model(copy.deepcopy(base), name, **options).num_trainable_parameters()
        uncut = peft_equi.get_peft_model(copy.deepcopy(full), name, **options).num_trainable_parameters()
        shown = (
            ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("fully_trained_buffers", "train_bessel"))
            or "-"
        )
        rows.append(
            {
                "preset": name,
                "options": options,
                "count": count,
                "reference": reference,
                "source": source,
                "count_uncut_10_elements": uncut,
            }
        )
        published = "-" if reference is None else f"{reference:,}"
        matches = "-" if reference is None else "yes" if count == reference else "NO"
        lines.append(f"| `{name}` | {shown} | {count:,} | {published} ({source}) | {matches} | {uncut:,} |")
    folder = ROOT / "benchmarks" / "results" / "param_counts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    write_json(folder / "results.json", {"rows": rows, "record": finished(record)})
    print("\n".join(lines))
    mismatches = sum(r["reference"] is not None and r["count"] != r["reference"] for r in rows)
    if mismatches:
        raise SystemExit(f"{mismatches} preset(s) differ from the published counts")


if __name__ == "__main__":
    main()
