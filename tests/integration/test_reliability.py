"""Reliability and security (issue 13), one section per item.

1. SevenNet checkpoints are unpickled with ``weights_only=True``; code needs ``--trust-pickle``.
2. Every load path (MACE, NequIP packages, SevenNet, engine checkpoints, adapters, data)
   refuses crafted pickles without the flag: the marker file their code would write never
   appears, and the error is one line naming the file (and the flag).
3. Adapters carry a fingerprint of the base weights they were trained on.
4. Adapters carry a sha256 of their tensors; corrupted or truncated files are refused.

Crafted pickles are made here, in ``tmp_path``; none is committed.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mace_models import build_mace, molecules
from models import MixedNet, net_inputs
from typer.testing import CliRunner

import peft_equi
from peft_equi.errors import AdapterLoadError, BaseMismatchError, PeftEquiError, UntrustedPickleError
from peft_equi.families.base import load_potential
from peft_equi.testing import randomize_adapters
from peft_equi.tuner.save_and_load import tensors_digest
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi_train.cli import app

runner = CliRunner()


class RunsCode:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


WRITERS = {
    "torch.save": lambda obj, path: torch.save(obj, path),
    "torch.save legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "pickle.dump": lambda obj, path: path.write_bytes(pickle.dumps(obj)),
}


def assert_refused(message: str, path: Path, marker: Path, flag: bool = True) -> None:
    """The code did not run; the error is one line naming the file (and ``--trust-pickle``)."""
    assert not marker.exists(), "the crafted pickle's code ran"
    assert "\n" not in message.strip(), message
    assert str(path) in message, message
    if flag:
        assert "--trust-pickle" in message, message


def cli_error(result) -> str:
    """The single ``error:`` line of a CLI run that failed with exit code 2."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# -- 1. SevenNet checkpoints: weights_only --------------------------------------------------


@pytest.fixture(scope="module")
def sevennet0_payload():
    """The bundled 7net-0 checkpoint's contents (read with weights_only)."""
    import sevenn.util

    from peft_equi.utils.safe_load import load_torch_file, numpy_globals

    path = sevenn.util.pretrained_name_to_path("7net-0")
    return load_torch_file(path, trust_pickle=False, what="7net-0", safe_globals=numpy_globals())


@pytest.mark.parametrize("writer", WRITERS)
def test_crafted_sevennet_checkpoint_does_not_run(tmp_path, writer):
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    WRITERS[writer]({"config": {"cutoff": 5.0}, "model_state_dict": {}, "x": RunsCode(marker)}, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_potential(str(path))
    assert_refused(str(info.value), path, marker)


def test_cli_inspect_of_a_crafted_sevennet_checkpoint(tmp_path):
    """The reproduction of issue 13: ``peft-equi inspect --model evil.pth`` ran the pickle's code."""
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"config": {}, "model_state_dict": {}, "x": RunsCode(marker)}, path)
    line = cli_error(runner.invoke(app, ["inspect", "--model", str(path)]))
    assert_refused(line, path, marker)


def test_trust_pickle_is_the_only_gate(tmp_path, sevennet0_payload):
    """A real SevenNet-0 checkpoint with code in it: refused without the flag, loaded (and run) with it."""
    marker, path = tmp_path / "marker", tmp_path / "7net-0-plus-code.pth"
    torch.save(sevennet0_payload | {"extra": RunsCode(marker)}, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_potential(str(path))
    assert_refused(str(info.value), path, marker)
    potential = load_potential(str(path), trust_pickle=True)
    assert marker.exists() and potential.family == "sevenn"


def test_sevennet0_is_read_with_weights_only(tmp_path, monkeypatch):
    """sevenn's own reader (torch.load with weights_only=False) is never called; same model as sevenn builds."""
    import sevenn.checkpoint
    import sevenn.util

    reference = sevenn.util.load_checkpoint("7net-0")  # sevenn's own, unsafe, reader
    with torch_default_dtype(torch.float32):
        expected = reference.build_model().state_dict()

    def unsafe(*args, **kwargs):
        raise AssertionError("sevenn's torch.load(weights_only=False) was called")

    monkeypatch.setattr(sevenn.checkpoint, "torch_load", unsafe)
    potential = load_potential("7net-0", dtype=torch.float32)
    state = potential.model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert potential.checkpoint.config["chemical_species"] == reference.config["chemical_species"]
    # a checkpoint written by the potential (numpy arrays in its config, numpy 2 names) reads back safely
    saved = potential.save(potential.model, tmp_path / "again")
    again = load_potential(str(saved), dtype=torch.float32)
    assert all(torch.equal(again.model.state_dict()[k], state[k]) for k in state)


# -- 2. every load path ---------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("suffix", [".model", ".pt"])
def test_crafted_mace_model_file_does_not_run(tmp_path, writer, suffix):
    marker, path = tmp_path / "marker", tmp_path / f"evil{suffix}"
    WRITERS[writer](RunsCode(marker), path)
    with pytest.raises(UntrustedPickleError) as info:
        load_potential(str(path))
    assert_refused(str(info.value), path, marker)
    assert "trust_pickle=True" in str(info.value)


@pytest.mark.parametrize(
    "where, name",
    [
        ("model_class", "torch:load"),
        ("model_class", "mace.modules.utils:torch.load"),
        ("model_class", "builtins:exec"),
        ("config", "mace.modules.utils:torch.load"),
        ("config", "torch.serialization:load"),
        ("config", "torch:load"),
        ("config", "torch:set_default_dtype"),
        ("config", "torch:compile"),
        ("config", "torch.nn.functional:gelu"),
        ("model_class", "torch.nn.functional:silu"),
    ],
)
def test_mace_state_file_cannot_name_a_code_loading_callable(tmp_path, where, name):
    """A pickle-free MACE state file names its callables; only MACE's and torch's activations are imported."""
    from peft_equi.families.mace.loading import STATE_FORMAT, load_mace_model

    marker, evil = tmp_path / "marker", tmp_path / "evil.pkl"
    torch.save(RunsCode(marker), evil)
    config = {"f": str(evil), "weights_only": False}
    model_class = "mace.modules.models:ScaleShiftMACE"
    if where == "model_class":
        model_class = name
    else:
        config["gate"] = {"__callable__": name}
    path = tmp_path / "state.pt"
    payload = {"format": STATE_FORMAT, "model_class": model_class, "config": json.dumps(config)}
    torch.save(payload | {"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(PeftEquiError, match="refusing to import") as info:
        load_mace_model(path)
    assert_refused(str(info.value), path, marker, flag=False)


@pytest.mark.parametrize("gate", ["silu", "tanh", "abs"])
def test_mace_state_file_may_name_maces_gate_activations(tmp_path, gate):
    """The activations a state file may name are MACE's gates (mace.modules.gate_dict), as save_mace_state writes
    them (torch's builtins: torch:_VariableFunctionsClass.tanh) or by their public names."""
    from mace.modules import gate_dict

    from peft_equi.families.mace.loading import _decode, _encode

    function = gate_dict[gate]
    for name in (_encode(function)["__callable__"], f"{'torch.nn.functional' if gate == 'silu' else 'torch'}:{gate}"):
        assert _decode({"__callable__": name}) is function, name


def test_nequip_package_needs_trust(tmp_path):
    """torch.package archives run code by design: refused before the file is opened."""
    marker, path = tmp_path / "marker", tmp_path / "evil.nequip.zip"
    torch.save(RunsCode(marker), path)
    with pytest.raises(UntrustedPickleError) as info:
        load_potential(str(path))
    assert_refused(str(info.value), path, marker)
    line = cli_error(runner.invoke(app, ["inspect", "--model", str(path)]))
    assert_refused(line, path, marker)


@pytest.mark.parametrize("writer", WRITERS)
def test_crafted_engine_checkpoint_does_not_run(tmp_path, writer):
    from peft_equi_train.checkpoint import load_checkpoint

    marker, path = tmp_path / "marker", tmp_path / "checkpoint.pt"
    WRITERS[writer]({"epoch": 1, "adapter": {}, "x": RunsCode(marker)}, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_checkpoint(path)
    assert_refused(str(info.value), path, marker)  # names the flag: it does not apply to checkpoints


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from peft_equi.utils.files import atomic_write, sha256

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]

    def own_suffix(tmp):  # like a model family's save: writes another name, returns it
        tmp.with_suffix(".model").write_bytes(b"new")
        return tmp.with_suffix(".model")

    atomic_write(path, own_suffix)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert sha256(path) == "11507a0e2f5e69d5dfa40a62a1bd7b6ee57e6bcd85c67c9b8431b36fff21c437"  # sha256(b"new")


def test_truncated_engine_checkpoint_is_named(tmp_path):
    from peft_equi_train.checkpoint import atomic_save, load_checkpoint

    path = atomic_save({"epoch": 1, "adapter": {"w": torch.ones(100)}}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(path)["epoch"] == 1
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(PeftEquiError, match="cannot read the checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_crafted_adapter_payload_does_not_run(tmp_path):
    """Adapters are JSON + safetensors: a pickle in their place is a corrupt file, never unpickled."""
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    model.save_pretrained(tmp_path)
    marker, path = tmp_path / "marker", tmp_path / "adapter_model.safetensors"
    torch.save(RunsCode(marker), path)
    with pytest.raises(AdapterLoadError) as info:
        peft_equi.PeftModel.from_pretrained(MixedNet(), tmp_path)
    assert_refused(str(info.value), path, marker, flag=False)


def test_crafted_data_file_does_not_run(tmp_path):
    """rMD17 .npz files are read with numpy's allow_pickle=False: an object array is refused."""
    from peft_equi_train.data import read_rmd17

    marker, path = tmp_path / "marker", tmp_path / "evil.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = RunsCode(marker)
    np.savez(path, nuclear_charges=objects, coords=objects, energies=objects, forces=objects)
    with pytest.raises(ValueError):
        read_rmd17(path)
    assert not marker.exists()


# -- 3. base-model fingerprint --------------------------------------------------------------


def _saved(tmp_path: Path, name: str = "elora", **options) -> tuple[torch.nn.Module, peft_equi.PeftModel]:
    """(a copy of the base, the adapted model saved to ``tmp_path``) with random adapter values."""
    net = MixedNet()
    base = copy.deepcopy(net)
    model = peft_equi.get_peft_model(net, name, **options)
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    return base, model


def test_fingerprint_lists_the_adapted_layers_frozen_tensors(tmp_path):
    _saved(tmp_path, "bitfit", invariant_inputs=["dense"])  # MixedNet's nn.Linear reads scalars
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    names = set(meta["base_fingerprint"]["tensors"])
    assert {"embedding.weight", "tp.weight", "readout.weight", "dense.weight"} <= names
    assert "embedding.bias" not in names and "dense.bias" not in names  # BitFit stores them: replaced on load
    entry = meta["base_fingerprint"]["tensors"]["tp.weight"]
    assert len(entry["sha256"]) == 64 and entry["numel"] == MixedNet().tp.weight.numel()


def test_other_base_weights_are_refused_naming_the_tensors(tmp_path, caplog):
    _, model = _saved(tmp_path)
    other = MixedNet()  # same architecture, other weights
    with pytest.raises(BaseMismatchError) as info:
        peft_equi.PeftModel.from_pretrained(other, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "tp.weight" in message and "embedding.weight" in message
    assert "allow_base_mismatch=True" in message and "--allow-base-mismatch" in message
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in other.modules())
    with caplog.at_level(logging.WARNING, logger="peft_equi.tuner.save_and_load"):
        loaded = peft_equi.PeftModel.from_pretrained(other, tmp_path, allow_base_mismatch=True)
    assert "loaded anyway" in caplog.text and "tp.weight" in caplog.text
    assert loaded.adapter_state_dict().keys() == model.adapter_state_dict().keys()


def test_a_small_change_in_one_layer_is_named(tmp_path):
    base, _ = _saved(tmp_path)
    with torch.no_grad():
        base.tp.weight.mul_(1 + 1e-3)
    with pytest.raises(BaseMismatchError, match=r"1 of \d+ fingerprinted base tensors differ: tp\.weight \("):
        peft_equi.PeftModel.from_pretrained(base, tmp_path)


@pytest.mark.parametrize("saved_dtype, loaded_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_fingerprint_does_not_depend_on_the_dtype(tmp_path, caplog, saved_dtype, loaded_dtype):
    net = MixedNet().to(saved_dtype)
    base = copy.deepcopy(net).to(loaded_dtype)
    peft_equi.get_peft_model(net, "lora", rank=2).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="peft_equi.tuner.save_and_load"):
        peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert "float32 rounding" not in caplog.text  # same sha256: no tolerance needed


@pytest.mark.parametrize("saved_dtype", [torch.float64, torch.float32])
def test_a_base_cut_in_either_precision_has_the_same_fingerprint(tmp_path, saved_dtype):
    """The same base cut by subset_elements in float32 (training) and in float64 (evaluation): the same sha256,
    compared exactly (the cut computes in float64), while a base with other weights is refused."""
    from peft_equi.families.mace.subset import subset_elements

    whole = build_mace("small").to(saved_dtype)  # the file's precision
    trained_on = subset_elements(copy.deepcopy(whole).float(), [1, 8])  # a float32 run
    if saved_dtype == torch.float64:  # the engine cuts a float64 file in float64, then casts (Finetuner.potential)
        trained_on = subset_elements(copy.deepcopy(whole), [1, 8]).float()
    evaluated_on = subset_elements(copy.deepcopy(whole).double(), [1, 8])
    peft_equi.get_peft_model(trained_on, "elora", rank=2).save_pretrained(tmp_path)
    peft_equi.PeftModel.from_pretrained(evaluated_on, tmp_path)
    other = subset_elements(build_mace("small", seed=1), [1, 8])
    with pytest.raises(BaseMismatchError, match=r"skip_tp\.weight"):
        peft_equi.PeftModel.from_pretrained(other, tmp_path)


@pytest.mark.parametrize(
    "removed", [["tensors_sha256"], ["config_sha256"], ["base_fingerprint"], ["tensors_sha256", "base_fingerprint"]]
)
def test_current_format_adapters_without_their_records_are_refused(tmp_path, removed):
    """Deleting a record from a format-3 adapter does not downgrade its checks to the legacy warning."""
    base, _ = _saved(tmp_path)
    config = tmp_path / "adapter_config.json"
    meta = json.loads(config.read_text())
    assert meta["format"] == 3
    for key in removed:
        del meta[key]
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=rf"format 3 adapter without {' and '.join(removed)}: .*edited") as info:
        peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert str(config) in str(info.value) and "\n" not in str(info.value)
    for key in removed:
        meta[key] = {} if key == "base_fingerprint" else None
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match="format 3 adapter without"):
        peft_equi.PeftModel.from_pretrained(base, tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda config: config["rules"][0]["options"].update(alpha=7.0),
        lambda config: config["rules"][0].update(target="re:.*"),
        lambda config: config.update(exclude=["readout"]),
    ],
    ids=["alpha", "target", "exclude"],
)
def test_an_edited_adapter_config_is_refused(tmp_path, edit):
    """The config decides the outputs (alpha scales every update): its sha256 is checked like the tensors'."""
    base, _ = _saved(tmp_path, "lora")
    config = tmp_path / "adapter_config.json"
    meta = json.loads(config.read_text())
    edit(meta["config"])
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"adapter config does not match its recorded config_sha256") as info:
        peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert str(config) in str(info.value) and "\n" not in str(info.value)


def test_format_2_adapters_load_with_tensors_and_base_checked(tmp_path):
    """Saved before config_sha256 existed: they load as before; their tensors and base are still checked."""
    base, model = _saved(tmp_path)
    config = tmp_path / "adapter_config.json"
    meta = json.loads(config.read_text())
    del meta["config_sha256"]
    meta["format"] = 2
    config.write_text(json.dumps(meta))
    loaded = peft_equi.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    saved = model.adapter_state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.adapter_state_dict().items())
    del meta["tensors_sha256"]
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match="format 2 adapter without tensors_sha256"):
        peft_equi.PeftModel.from_pretrained(base, tmp_path)


@pytest.fixture(scope="module")
def mace_run(tmp_path_factory):
    """Pickle-free MACE files (two bases: same architecture, other weights), a run on the first, data."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from peft_equi.families.mace.loading import save_mace_state

    with torch_default_dtype(torch.float64):
        root = tmp_path_factory.mktemp("mace-run")
        base = build_mace("small", seed=0)
        save_mace_state(base, root / "base.pt")
        save_mace_state(build_mace("small", seed=1), root / "other.pt")
        model = peft_equi.get_peft_model(base, "lora", rank=2)
        randomize_adapters(model)
        model.save_pretrained(root / "run" / "adapter")
        correction = {"atomic_numbers": [1, 6, 8], "delta_eV": [0.1, 0.2, 0.3]}
        (root / "run" / "energy_correction.json").write_text(json.dumps(correction))
        (root / "run" / "results.json").write_text("{}")  # a finished run
        structures = molecules(3)
        for atoms in structures:
            atoms.calc = SinglePointCalculator(atoms, energy=-100.0, forces=np.zeros((len(atoms), 3)))
        write(root / "data.xyz", structures)
        return root


@pytest.mark.parametrize("command", ["evaluate", "merge"])
def test_cli_run_on_other_base_weights(mace_run, tmp_path, command):
    extra = ["--data", str(mace_run / "data.xyz")] if command == "evaluate" else ["--output", str(tmp_path / "m")]
    args = [command, "--run", str(mace_run / "run"), *extra]
    line = cli_error(runner.invoke(app, [*args, "--model", str(mace_run / "other.pt")]))
    assert "trained on other base weights" in line and "interactions.0.linear.weight" in line
    assert "--allow-base-mismatch" in line
    result = runner.invoke(app, [*args, "--model", str(mace_run / "other.pt"), "--allow-base-mismatch"])
    assert result.exit_code == 0, result.output
    if command == "merge":
        (tmp_path / "m.model").unlink()
    result = runner.invoke(app, [*args, "--model", str(mace_run / "base.pt")])
    assert result.exit_code == 0, result.output


# -- 4. adapter checksum --------------------------------------------------------------------


def test_checksum_is_recorded(tmp_path):
    _, model = _saved(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    tensors = {k: v.detach().cpu() for k, v in model.adapter_state_dict().items()}
    assert meta["tensors_sha256"] == tensors_digest(tensors)


def _header_size(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("damage", ["flipped data bytes", "flipped header bytes", "truncated"])
def test_corrupted_payload_is_refused_naming_the_file(tmp_path, damage):
    base, _ = _saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    start = _header_size(path)
    if damage == "flipped data bytes":  # issue 13: 100 flipped bytes changed energies by 0.24 eV, silently
        for i in np.random.default_rng(0).choice(np.arange(start, len(data)), size=100, replace=False):
            data[i] ^= 0xFF
    elif damage == "flipped header bytes":
        for i in range(10, 40):
            data[i] ^= 0x5A
    else:
        data = data[: (start + len(data)) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError) as info:
        peft_equi.PeftModel.from_pretrained(base, tmp_path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in base.modules())


def test_intact_adapter_loads_bit_exact(tmp_path):
    base, model = _saved(tmp_path, "mmea")
    x, attrs = net_inputs()
    assert torch.equal(peft_equi.PeftModel.from_pretrained(base, tmp_path)(x, attrs), model(x, attrs))
