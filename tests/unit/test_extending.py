"""Library authors add adapters, backends and presets without touching the core."""

from importlib.metadata import EntryPoint

import pytest
import torch
from paths import ROOT
from pydantic import Field
from torch import nn

import peft_equi
from peft_equi.core import registry
from peft_equi.core.adapted_layer import AdaptedLayer, overwrite
from peft_equi.core.adapter import Adapter, AdapterConfig
from peft_equi.core.spec import dense_spec
from peft_equi.families import FAMILIES, load_potential
from peft_equi.testing import assert_equivariant, randomize_adapters


class ScaleConfig(AdapterConfig):
    init: float = Field(0.0, description="initial log-gain")


class ScaleAdapter(Adapter):
    """One static gain per output channel (a third-party adapter)."""

    name = "test-scale"
    config_class = ScaleConfig

    def __init__(self, spec, config):
        super().__init__(spec, config)
        self.log_gain = nn.Parameter(torch.full((spec.num_channels_out,), config.init))

    def output_affine(self):
        return torch.exp(self.log_gain), None


class Doubler(nn.Module):
    """A third-party invariant layer: y = 2 x W (weight (in, out))."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return 2 * x @ self.kernel


class DoublerBackend(AdaptedLayer):
    """Its backend, on the generic (eager) forward: no ``forward`` of its own."""

    name = "test.doubler"

    @classmethod
    def matches(cls, module):
        return isinstance(module, Doubler)

    @classmethod
    def describe(cls, module):
        return dense_spec(*module.kernel.shape, 2.0)

    def layer_weight(self):
        return self.base_layer.kernel.reshape(-1)

    def write(self, weight, bias):
        overwrite(self.base_layer.kernel, weight)

    def operands(self, args, kwargs):
        return (args[0],)

    def run_linear(self, args, kwargs, weight, bias):
        kernel = self.base_layer.kernel
        return 2 * args[0] @ (kernel if weight is None else weight.reshape(kernel.shape))


@pytest.fixture
def clean_registries():
    registries = (registry.ADAPTERS, registry.BACKENDS, registry.PRESETS, FAMILIES)
    for r in registries:  # load the built-ins first: restoring a half-loaded table would lose them for good
        r.names()
    saved = {r: dict(r._items) for r in registries}
    yield
    for r, items in saved.items():
        r._items = items


def test_register_adapter_and_backend_by_decorator(clean_registries):
    peft_equi.register_adapter(ScaleAdapter)
    peft_equi.register_backend(DoublerBackend)
    assert "test-scale" in peft_equi.list_adapters() and "test.doubler" in peft_equi.list_backends()
    net = nn.Sequential(Doubler(4, 3))
    x = torch.randn(5, 4)
    expected = net(x)
    model = peft_equi.get_peft_model(net, "test-scale")
    assert torch.equal(model(x), expected)
    assert type(model.adapted_layers["0"]) is DoublerBackend
    randomize_adapters(model)
    adapted = model(x)
    with pytest.raises(TypeError, match="no TorchScript-compatible forward"):
        torch.jit.script(model)
    torch.testing.assert_close(model.merge_and_unload()(x), adapted)

    # third-party adapters work on built-in backends too
    from e3nn import o3

    model = peft_equi.get_peft_model(o3.Linear("4x0e+2x1o", "3x0e+2x1o"), "test-scale")
    randomize_adapters(model)
    assert_equivariant(model, ["4x0e+2x1o"], "3x0e+2x1o")


def test_duplicate_names_are_refused(clean_registries):
    peft_equi.register_adapter(ScaleAdapter)

    class Other(ScaleAdapter):
        pass

    with pytest.raises(ValueError, match="already registered"):
        peft_equi.register_adapter(Other)


def test_entry_points_are_discovered(monkeypatch, clean_registries):
    fake = EntryPoint(name="test-scale", value="tests_extending_target:ScaleAdapter", group="peft_equi.adapters")
    import sys
    import types

    module = types.ModuleType("tests_extending_target")
    module.ScaleAdapter = ScaleAdapter
    monkeypatch.setitem(sys.modules, "tests_extending_target", module)
    monkeypatch.setattr(registry, "entry_points", lambda group: [fake] if group == "peft_equi.adapters" else [])
    monkeypatch.setattr(registry.ADAPTERS, "_loaded", False)
    assert "test-scale" in peft_equi.list_adapters()


def test_register_preset(clean_registries):
    @peft_equi.register_preset("test-linears-only")
    def linears_only(rank: int = 2):
        return peft_equi.PeftConfig(rules=[peft_equi.Rule(adapter="lora", kinds=["linear"], options={"rank": rank})])

    from e3nn import o3

    net = nn.Sequential(o3.Linear("2x0e", "2x0e"), nn.Linear(2, 2))
    model = peft_equi.get_peft_model(net, "test-linears-only", rank=1)
    assert list(model.adapted_layers) == ["0"]
    with pytest.raises(peft_equi.ConfigError, match=r"test-linears-only.*unknown option .bogus"):
        peft_equi.get_peft_model(net, "test-linears-only", bogus=1)


def test_duck_typed_discovery_of_foreign_e3nn_copies():
    """Modules that are not instances of the installed e3nn classes (torch.package copies) are found."""
    from e3nn import o3

    class PackagedLinear(nn.Module):  # same attributes as e3nn's Linear, different class
        def __init__(self):
            super().__init__()
            self._inner = o3.Linear("3x0e+2x1o", "2x0e+2x1o")
            self.weight = self._inner.weight
            self.bias = self._inner.bias
            for attr in ("irreps_in", "irreps_out", "instructions", "internal_weights", "shared_weights"):
                setattr(self, attr, getattr(self._inner, attr))

        def forward(self, features, weight=None, bias=None):
            return self._inner(features, weight, bias)

    layer = PackagedLinear()
    assert not isinstance(layer, o3.Linear)
    (found,) = peft_equi.discover(layer)
    assert found.backend.name == "e3nn.linear"
    model = peft_equi.get_peft_model(layer, "elora", rank=2)
    randomize_adapters(model)
    assert_equivariant(model, ["3x0e+2x1o"], "2x0e+2x1o")


def test_backend_entry_point_naming_a_class(monkeypatch, clean_registries):
    import sys
    import types

    module = types.ModuleType("tests_extending_backend")
    module.DoublerBackend = DoublerBackend
    monkeypatch.setitem(sys.modules, "tests_extending_backend", module)
    fake = EntryPoint(name="test.doubler", value="tests_extending_backend:DoublerBackend", group="peft_equi.backends")
    monkeypatch.setattr(registry, "entry_points", lambda group: [fake] if group == "peft_equi.backends" else [])
    monkeypatch.setattr(registry.BACKENDS, "_loaded", False)
    assert registry.BACKENDS.get("test.doubler") is DoublerBackend
    model = peft_equi.get_peft_model(nn.Sequential(Doubler(3, 2)), "elora", rank=1)
    assert list(model.adapted_layers) == ["0"]


def test_entry_point_groups_are_the_documented_ones():
    """docs/extending.md names these groups; a package registering through them relies on the names."""
    text = (ROOT / "docs" / "extending.md").read_text()
    groups = {registry.ADAPTERS.group, registry.BACKENDS.group, registry.PRESETS.group}
    assert groups == {"peft_equi.adapters", "peft_equi.backends", "peft_equi.presets"}
    assert all(f"`{group}`" in text for group in groups)


FAMILY_MODULE = """
from peft_equi.families import Potential, register_potential


class ToyPotential(Potential):
    family = "toy"


@register_potential("toy", lambda spec: spec.endswith(".toy"))
def load_toy(spec, *, dtype, trust_pickle):
    return (spec, dtype, trust_pickle)
"""


def test_a_model_family_registers_through_an_entry_point(tmp_path, monkeypatch, clean_registries):
    """Model families use the same registry mechanism: decorator, or the ``peft_equi.families`` entry-point group."""
    (tmp_path / "tests_extending_family.py").write_text(FAMILY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = EntryPoint(name="toy", value="tests_extending_family", group="peft_equi.families")
    monkeypatch.setattr(FAMILIES, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [fake] if group == "peft_equi.families" else [])
    assert load_potential("x.toy", trust_pickle=True) == ("x.toy", torch.float64, True)
    assert FAMILIES.names() == ["mace", "nequip", "sevenn", "toy"] and FAMILIES.group == "peft_equi.families"


@pytest.mark.parametrize("thing", [object, nn.Linear, "e3nn.linear"], ids=["object", "a module class", "a string"])
def test_register_backend_takes_adapted_layer_subclasses_only(thing):
    with pytest.raises(TypeError, match="register_backend takes an AdaptedLayer subclass"):
        peft_equi.register_backend(thing)
