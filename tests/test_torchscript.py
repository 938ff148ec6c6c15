"""TorchScript: every adapter on every backend's layers compiles and gives the eager outputs; whole models too.

Each backend wraps its layers in an ``AdaptedLayer`` subclass with the layer's own fixed
signature, and the adapters' hooks are TorchScript-compatible code.  Compiled and eager
outputs agree to 1e-10 in float64 (they are bit-identical here: the same ops run).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from mace_models import batch_of, build_mace, energy_forces, molecules
from models import MixedNet, layer_cases, net_inputs
from test_adapters_equivariance import CASES

import peft_equi
from peft_equi.adapters.base import KeyedParameters
from peft_equi.testing import randomize_adapters

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# every option set on one e3nn layer; on the other layers one set per code path: weight update
# (lora, elora), 0e shift (bitfit; an extra output term where the layer has no bias), static gains
# folded into the weight (static film), input-dependent modulation (mmea, film, conventional)
BASIC = [
    ("lora", {}),
    ("elora", {}),
    ("mmea", {}),
    ("bitfit", {}),
    ("film", {}),
    ("film", {"conditioning": "static"}),
    ("conventional", {}),
]
FULL = [*CASES, ("conventional", {})]
SC_IN, SC_OUT = "4x0e+4x1o+4x2e", "4x0e+4x1o"


def _randn(*irreps):
    return [torch.randn(5, peft_equi.Irreps(i).dim) for i in irreps]


def _e3nn(name):
    def make():
        layer, irreps_in, _ = layer_cases()[name]
        return layer, _randn(*irreps_in)

    return make


def _nequip(bias):
    def make():
        from nequip.nn.mlp import ScalarLinearLayer

        return ScalarLinearLayer(6, 5, alpha=0.4, bias=bias), _randn("6x0e")

    return make


def _mace_contraction():
    from mace.modules.symmetric_contraction import SymmetricContraction

    # correlation 3: two lower-order weights per output irrep; MACE zeroes one of the 1e irrep's
    layer = SymmetricContraction(SC_IN, "4x0e+4x1o+4x1e", correlation=3, num_elements=3)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2, 1]), 3).to(torch.float64)
    return layer, [torch.randn(5, 4, 9), one_hot]


def _cuet_linear(layout_in, layout_out):
    def make():
        import cuequivariance as cue
        import cuequivariance_torch as cuet
        from test_cueq import IN, OUT

        layer = cuet.Linear(
            cue.Irreps("O3", IN),
            cue.Irreps("O3", OUT),
            layout_in=getattr(cue, layout_in),
            layout_out=getattr(cue, layout_out),
            method="naive",
            dtype=torch.float64,
        )
        return layer, _randn(IN)

    return make


def _cuet_tensor_product(layout):
    def make():
        import cuequivariance as cue
        from test_cueq import OUT, TP_IN2, _layer

        layer, _, _ = _layer("tensor_product", getattr(cue, layout))
        return layer, _randn(OUT, TP_IN2)

    return make


def _cuet_contraction(original_mace):
    def make():
        import cuequivariance as cue
        import cuequivariance_torch as cuet
        from mace.tools.cg import O3_e3nn

        layer = cuet.SymmetricContraction(
            cue.Irreps(O3_e3nn, SC_IN),
            cue.Irreps(O3_e3nn, SC_OUT),
            contraction_degree=2,
            num_elements=3,
            layout=cue.ir_mul,
            original_mace=original_mace,
            dtype=torch.float64,
            method="naive",
        )
        return layer, [*_randn(SC_IN), torch.tensor([0, 1, 2, 2, 1])]

    return make


# name -> (layer factory returning (module, call arguments), adapter cases, expected AdaptedLayer subclass)
LAYERS = {
    "o3.Linear+bias": (_e3nn("o3.Linear+bias"), FULL, "AdaptedE3nnLinear"),
    "o3.Linear": (_e3nn("o3.Linear"), BASIC, "AdaptedE3nnLinear"),
    "FullyConnectedTensorProduct": (_e3nn("FullyConnectedTensorProduct"), BASIC, "AdaptedE3nnTensorProduct"),
    "FullyConnectedNet.layer": (_e3nn("FullyConnectedNet.layer"), BASIC, "AdaptedE3nnFullyConnected"),
    "FullyConnectedNet.last": (_e3nn("FullyConnectedNet.last"), BASIC, "AdaptedE3nnFullyConnected"),
    "nn.Linear": (_e3nn("nn.Linear"), BASIC, "AdaptedTorchLinear"),
    "nequip.ScalarLinearLayer+bias": (_nequip(True), BASIC, "AdaptedNequipScalarLinear"),
    "nequip.ScalarLinearLayer": (_nequip(False), BASIC, "AdaptedNequipScalarLinear"),
    "mace.SymmetricContraction": (_mace_contraction, BASIC, "AdaptedMaceSymmetricContraction"),
    "cuet.Linear(ir_mul)": (_cuet_linear("ir_mul", "ir_mul"), BASIC, "AdaptedCueLinear"),
    "cuet.Linear(mul_ir->ir_mul)": (_cuet_linear("mul_ir", "ir_mul"), BASIC, "AdaptedCueLinear"),
    "cuet.FullyConnectedTensorProduct(mul_ir)": (_cuet_tensor_product("mul_ir"), BASIC, "AdaptedCueTensorProduct"),
    "cuet.SymmetricContraction(original_cg)": (_cuet_contraction(True), BASIC, "AdaptedCueSymmetricContraction"),
    "cuet.SymmetricContraction(reduced_cg)": (_cuet_contraction(False), BASIC, "AdaptedCueSymmetricContraction"),
}
#: Cases whose adapter has nothing to act on in that layer (get_peft_model refuses them; tested elsewhere).
NOTHING_TO_ADAPT = {("o3.Linear+bias", "bitfit", (("train_existing", False),))}
TABLE = [
    (layer, adapter, options)
    for layer, (_, cases, _) in LAYERS.items()
    for adapter, options in cases
    if (layer, adapter, tuple(sorted(options.items()))) not in NOTHING_TO_ADAPT
]


def _adapted(layer_name, adapter, options):
    make, _, wrapper = LAYERS[layer_name]
    module, args = make()
    model = peft_equi.get_peft_model(module, adapter, **options)
    assert type(model.base_model).__name__ == wrapper
    randomize_adapters(model, std=0.3)
    return model, args


@pytest.mark.filterwarnings("ignore:the 'conventional' adapter is NOT equivariant")
@pytest.mark.parametrize(("layer_name", "adapter", "options"), TABLE, ids=[f"{n}-{a}{o or ''}" for n, a, o in TABLE])
def test_scripted_layer_equals_eager(layer_name, adapter, options):
    model, args = _adapted(layer_name, adapter, options)
    eager = model(*args)
    scripted = torch.jit.script(model.base_model)
    torch.testing.assert_close(scripted(*args), eager, atol=1e-10, rtol=0)
    with model.disable_adapters():
        base = model(*args)
    scripted.adapter_enabled = False  # an attribute of the compiled module, read at call time
    torch.testing.assert_close(scripted(*args), base, atol=1e-10, rtol=0)


def test_mace_contraction_wrapper_equals_the_generic_one():
    """MACE's contraction run with the effective weight by its own ops == through ``functional_call``."""
    model, args = _adapted("mace.SymmetricContraction", "elora", {})
    wrapped = model.base_model
    generic = peft_equi.AdaptedLayer(wrapped.base_layer, wrapped.backend, wrapped.spec, wrapped.adapter)
    torch.testing.assert_close(wrapped(*args), generic(*args), atol=0, rtol=0)


def test_peft_model_scripts_as_its_base_model():
    net = MixedNet()
    model = peft_equi.get_peft_model(net, "mmea")
    randomize_adapters(model)
    x, attrs = net_inputs()
    scripted = torch.jit.script(model)
    assert isinstance(scripted, torch.jit.ScriptModule)
    torch.testing.assert_close(scripted(x, attrs), model(x, attrs), atol=1e-10, rtol=0)


def test_a_backend_without_a_scriptable_wrapper_says_so():
    from peft_equi.backends.e3nn.linear import E3nnLinear

    layer, _, _ = layer_cases()["o3.Linear"]
    (found,) = peft_equi.discover(layer)
    adapter = peft_equi.ADAPTERS.get("lora")(found.spec, peft_equi.ADAPTERS.get("lora").config_class())
    generic = peft_equi.AdaptedLayer(layer, E3nnLinear(), found.spec, adapter)
    with pytest.raises(TypeError, match="adapted_layer_class"):
        torch.jit.script(generic)


def test_layers_pickled_before_the_wrappers_load_and_compile():
    """Whole-model pickles written before (``save_adapted_mace`` of MMEA) load as the backends' wrappers.

    They were also written before the modules moved to ``peft_equi.core``: the trusted loader finds them."""
    from peft_equi.utils.safe_load import load_torch_file

    path = FIXTURES / "adapted_layers_pre_torchscript.pt"
    with pytest.raises(ModuleNotFoundError, match=r"peft_equi\.layer"):
        torch.load(path, weights_only=False)
    cases = load_torch_file(path, trust_pickle=True, what="a pickle of adapted layers")
    assert len(cases) == 7
    for name, case in cases.items():
        layer, args = case["layer"], case["args"]
        assert type(layer).__name__ != "AdaptedLayer", name
        torch.testing.assert_close(layer(*args), case["expected"], atol=1e-12, rtol=0)
        torch.testing.assert_close(torch.jit.script(layer)(*args), case["expected"], atol=1e-12, rtol=0)
    lora = cases["o3.Linear/lora"]["layer"].adapter
    assert isinstance(lora.lora_A, KeyedParameters) and "0_0e" in lora.lora_A


@pytest.fixture(scope="module")
def small_mace():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield build_mace("small"), batch_of(molecules(2))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(("name", "merge"), [("mmea-paper", False), ("elora", False), ("elora", True)])
def test_compiled_mace_gives_the_eager_energies_and_forces(small_mace, name, merge):
    """As mace_run_train / create_lammps_model compile: e3nn's jit.compile, then a TorchScript file."""
    from e3nn.util import jit

    base, batch = small_mace
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    randomize_adapters(model, std=0.05)
    energy, forces = energy_forces(model, batch)
    plain = model.merge_and_unload() if merge else model.base_model
    compiled = jit.compile(copy.deepcopy(plain))
    assert isinstance(compiled, torch.jit.ScriptModule)
    buffer = io.BytesIO()
    torch.jit.save(compiled, buffer)
    buffer.seek(0)
    for candidate in (compiled, torch.jit.load(buffer)):
        energy_c, forces_c = energy_forces(candidate, batch)
        torch.testing.assert_close(energy_c, energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(forces_c, forces, atol=1e-10, rtol=0)
