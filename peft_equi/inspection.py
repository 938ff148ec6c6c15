"""``inspect_model``: every discoverable layer, its irreps and what a config does to it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import assign, discover
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
    """
    layers = discover(model)
    resolved = resolve_config(config, **options) if config is not None else PeftConfig()
    reports = []
    for entry in assign(layers, resolved, strict=False):
        layer = entry.layer
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
                note="; ".join(entry.notes),
            )
        )
    return reports


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
        (r.path, r.backend, r.kind, f"{r.irreps_in} -> {r.irreps_out}", r.rule or "-", r.adapter or "-",
         f"{r.trainable:,}", r.note)
        for r in reports
    ]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
