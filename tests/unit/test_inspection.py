"""inspect_model lists layers, irreps and the matching rule without changing the model."""

from models import MixedNet

import peft_equi


def test_inspect_without_and_with_config():
    net = MixedNet()
    rows = peft_equi.inspect_model(net)
    assert [r.path for r in rows] == ["embedding", "tp", "mlp.layer0", "mlp.layer1", "dense", "readout"]
    assert rows[1].irreps_in == "6x0e+4x1o+2x2e+2x0o x 3x0e" and rows[1].kind == "tensor_product"
    assert all(r.adapter is None for r in rows)

    rows = peft_equi.inspect_model(net, "mmea", rank=4, kinds=["linear"])
    by_path = {r.path: r for r in rows}
    assert by_path["embedding"].adapter == "mmea" and by_path["embedding"].trainable > 0
    assert by_path["tp"].adapter is None
    table = peft_equi.format_inspection(rows).splitlines()
    header = ["layer", "backend", "kind", "irreps", "in", "->", "out", "rule", "adapter", "params", "note"]
    assert table[0].split() == header
    embedding = next(line for line in table if line.startswith("embedding"))
    assert embedding.split()[:3] == ["embedding", "e3nn.linear", "linear"] and "mmea" in embedding
    assert by_path["embedding"].rule in embedding.split()
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in net.modules())


def test_inspect_reports_skipped_layers():
    from e3nn import o3

    net = MixedNet()
    net.add_module("vec", o3.Linear("2x1o", "2x1o"))
    rows = {r.path: r for r in peft_equi.inspect_model(net, "mmea")}
    assert rows["vec"].adapter is None and "has none" in rows["vec"].note
