"""``inspect_model``: every discoverable layer, its irreps and what a config does to it, and the
weighted modules that are not adaptable, with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import assign, survey
from peft_equi.core.presets import resolve_config


@dataclass(frozen=True)
class LayerReport:
    """One row of :func:`inspect_model`."""

    path: str
    backend: str
    kind: str
    irreps_in: str
    irreps_out: str
    rule: str | None
    adapter: str | None
    trainable: int
    note: str


def inspect_model(model: nn.Module, config: PeftConfig | str | None = None, **options) -> list[LayerReport]:
    """Describe the adaptable layers of ``model`` and, given a config, which rule takes each.

    Nothing is attached; rules that match nothing are reported in the notes, not raised.
    Dense layers whose input is known to be invariant say why (``input 0e: proven: ...`` or
    ``declared by invariant_inputs``).  Modules with parameters of their own that are not
    adaptable (no backend recognises them, or one refuses them) get a row of their own, with
    backend and kind ``-`` and the note ``not adaptable: <why>``.
    """
    layers, left_out = survey(model)
    resolved = resolve_config(config, **options) if config is not None else PeftConfig()
    reports = []
    for entry in assign(layers, resolved, strict=False):
        layer = entry.layer
        notes = ([f"input 0e: {layer.invariance}"] if layer.invariance else []) + entry.notes
        reports.append(
            LayerReport(
                path=layer.path or "<root>",
                backend=layer.backend.name,
                kind=layer.spec.kind.value,
                irreps_in=" x ".join(str(i) for i in layer.spec.irreps_in),
                irreps_out=str(layer.spec.irreps_out),
                rule=entry.rule.label if entry.rule else None,
                adapter=entry.adapter.name if entry.adapter else None,
                trainable=_trainable(entry),
                note="; ".join(notes),
            )
        )
    for item in left_out:
        note = f"not adaptable: {item.reason}"
        reports.append(LayerReport(item.path or "<root>", "-", "-", "", "", None, None, 0, note))
    order = {name or "<root>": i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    return sorted(reports, key=lambda r: order.get(r.path, len(order)))


def _trainable(entry) -> int:
    """Adapter parameters, plus the layer's own biases when the adapter trains them (BitFit)."""
    if entry.adapter is None:
        return 0
    count = sum(p.numel() for p in entry.adapter.parameters())
    if entry.adapter.trains_layer_bias:
        layer = entry.layer
        count += sum(layer.module.get_parameter(n).numel() for n in layer.backend.bias_parameter_names(layer.module))
    return count


def format_inspection(reports: list[LayerReport]) -> str:
    """A plain-text table of :func:`inspect_model` rows."""
    header = ("layer", "backend", "kind", "irreps in -> out", "rule", "adapter", "params", "note")
    rows = [
        (r.path, r.backend, r.kind, f"{r.irreps_in} -> {r.irreps_out}" if r.irreps_out else "-", r.rule or "-",
         r.adapter or "-", f"{r.trainable:,}", r.note)
        for r in reports
    ]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
