"""Two runs of a comparison side by side: test errors per method from two ``results.json`` files.

Usage::

    python benchmarks/compare_results.py OLD/results.json NEW/results.json --out before-after.md \\
        --title "..." --note "what differs between the runs" [--alias new-label=old-label ...]

Methods are matched by label (``--alias`` for labels that were renamed); the table shows the
pretrained model's errors ('start', from the new run), the old and the new run's test errors
and the new run's trainable counts.  Both files keep their run records; this only tabulates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _errors(method: dict | None) -> str:
    if method is None or "after" not in method:
        return "not run" if method is None else "diverged"
    test = method["after"]["test"]
    return f"{test['energy_mae_meV']:.1f} / {test['forces_mae_meV_per_A']:.1f}"


def table(old: dict, new: dict, aliases: dict[str, str]) -> list[str]:
    """Markdown rows for every method of ``new``, matched to ``old`` by label or alias."""
    previous = {m["label"]: m for m in old["methods"]}
    lines = [
        "| method | start: E / F | old run: E / F | new run: E / F | new run: trainable |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in new["methods"]:
        label = method["label"]
        start = method.get("before", {}).get("test")
        start_text = f"{start['energy_mae_meV']:.1f} / {start['forces_mae_meV_per_A']:.1f}" if start else ""
        match = previous.get(label) or previous.get(aliases.get(label, ""))
        lines.append(
            f"| {label} | {start_text} | {_errors(match)} | {_errors(method)} | {method['trainable_parameters']:,} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--note", default="", help="what differs between the two runs")
    p.add_argument("--alias", nargs="*", default=[], help="new-label=old-label")
    args = p.parse_args(argv)
    aliases = dict(a.split("=", 1) for a in args.alias)
    old, new = (json.loads(path.read_text()) for path in (args.old, args.new))
    lines = [
        f"# {args.title}",
        "",
        "Test errors (energy MAE per configuration in meV / force-component MAE in meV/A) of each method in "
        f"two runs: old `{args.old.name}`, new `{args.new.name}` (their run records are in those files). "
        "'start' is the pretrained model with its fitted per-element energy shifts, before training.",
        "",
        *([args.note, ""] if args.note else []),
        *table(old, new, aliases),
        "",
        f"Made by `python benchmarks/compare_results.py {args.old} {args.new} --out {args.out} ...`.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
