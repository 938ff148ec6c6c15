"""SevenNet (``sevenn``) as a :class:`~peft_equi.families.base.Potential`; pretrained models by name.

SevenNet-0 ships inside the ``sevenn`` wheel (``sevenn.util.pretrained_name_to_path("7net-0")``),
so it loads offline.  Checkpoints are unpickled with ``weights_only=True`` (sevenn's own reader
would run any code a ``.pth`` pickles); one that needs more requires ``trust_pickle``.  Notes
from its internals:

* Forces are ``-dE/d(edge vectors)`` scattered onto atoms, with ``create_graph`` only in
  ``train()`` mode: the potential switches the mode with ``training``.
* The model is built in float32 and its one-hot element encoding is hard-coded float32;
  for float64 the encoding's output is cast by a forward hook (it survives ``deepcopy``).
* SevenNet-0 was trained with ``is_parity=False``: it is rotation-equivariant but not
  inversion-equivariant (its irreps are labelled ``1e``, ``2e``), so equivariance checks of
  SevenNet-0 use rotations only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_equi.elements import ATOMIC_NUMBERS
from peft_equi.errors import EnergyShiftError, PeftEquiError
from peft_equi.families.base import Potential, register_potential
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi.utils.safe_load import load_torch_file, numpy_globals

ENERGY_KEY = "inferred_total_energy"
FORCES_KEY = "inferred_force"


def _cast_one_hot(module: nn.Module, args: Any, out: dict) -> dict:
    for key in (module.key_output, module.key_additional_output):
        if key is not None:
            out[key] = out[key].to(module_dtype(module))
    return out


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype a module was cast to (recorded by :func:`to_dtype`)."""
    return getattr(module, "_peft_equi_dtype", torch.float32)


def to_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast a SevenNet model, including its hard-coded float32 one-hot encoding."""
    model = model.to(dtype)
    one_hot = model._modules.get("onehot_idx_to_onehot")
    if one_hot is not None:
        one_hot._peft_equi_dtype = dtype
        if dtype != torch.float32 and not getattr(one_hot, "_peft_equi_hooked", False):
            one_hot.register_forward_hook(_cast_one_hot)
            one_hot._peft_equi_hooked = True
    return model


class SevenNetPotential(Potential):
    """A SevenNet model (``AtomGraphSequential``); ``checkpoint`` is the ``SevenNetCheckpoint`` it came from."""

    family = "sevenn"
    suffix = ".pth"

    def __init__(self, model: nn.Module, name: str, checkpoint: Any) -> None:
        super().__init__(model, name)
        self.checkpoint = checkpoint
        self.state_keys = list(model.state_dict())

    @property
    def atomic_numbers(self) -> list[int]:
        return sorted(ATOMIC_NUMBERS[symbol] for symbol in self.checkpoint.config["chemical_species"])

    @property
    def cutoff(self) -> float:
        return float(self.checkpoint.config["cutoff"])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SevenNetPotential:
        """Move and cast, the one-hot encoding included (:func:`to_dtype`)."""
        if dtype is not None:
            self.model = to_dtype(self.model, dtype)
        self.model.to(device=device)
        return self

    def graphs(self, atoms: Sequence) -> list[Any]:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        out = []
        for a in atoms:
            graph = unlabeled_atoms_to_graph(a, self.cutoff)
            out.append(AtomGraphData(**{k: _tensor(v) for k, v in graph.items()}))
        return out

    def collate(self, graphs: Sequence[Any], device: torch.device, dtype: torch.dtype) -> Any:
        from torch_geometric.data import Batch

        batch = Batch.from_data_list(list(graphs)).to(device)
        for key in ("pos", "edge_vec", "cell_volume"):
            if key in batch:
                batch[key] = batch[key].to(dtype)
        return batch

    def energy_forces(self, model: nn.Module, batch: Any, training: bool):
        model.train(training)  # SevenNet keeps the force graph (create_graph) only in train mode
        out = model(batch.clone())
        return out[ENERGY_KEY], out[FORCES_KEY]

    def add_per_element_energies(self, model: nn.Module, delta: np.ndarray) -> None:
        """Add ``delta`` to SevenNet's per-species energy shift (``rescale_atomic_energy``, ``SpeciesWiseRescale``).

        A model with one shift for all species (``Rescale``) takes only a correction that is the
        same for every element; any other is refused (the checkpoint's architecture has no place
        for it).
        """
        blocks = [
            m
            for m in model.modules()
            if getattr(m, "key_output", None) == "atomic_energy" and isinstance(getattr(m, "shift", None), torch.Tensor)
        ]
        maps = [m.type_map for m in model.modules() if isinstance(getattr(m, "type_map", None), dict)]
        if len(blocks) != 1 or len(maps) != 1:
            raise EnergyShiftError(
                f"cannot fold the energy correction into this SevenNet model: {len(blocks)} energy shift blocks "
                f"and {len(maps)} type maps found, 1 of each expected"
            )
        shift = blocks[0].shift
        with torch.no_grad():
            if shift.numel() == 1:
                if np.ptp(delta) != 0:
                    raise EnergyShiftError(
                        "this SevenNet model has one energy shift for all species (Rescale): a per-element "
                        "correction cannot be folded in (train with use_species_wise_shift_scale)"
                    )
                shift += float(delta[0])
                return
            index = torch.tensor([maps[0][z] for z in self.atomic_numbers], device=shift.device)
            shift.index_add_(0, index, torch.as_tensor(delta, dtype=shift.dtype, device=shift.device))

    def save(self, model: nn.Module, path: Path) -> Path:
        """A SevenNet checkpoint (``.pth``) that ``SevenNetCalculator(path)`` loads (float32, like the original).

        The weights are those of the built model, in which sevenn already patched old
        checkpoints' layouts; the config therefore carries the installed sevenn version, so
        that loading does not patch them again.
        """
        import sevenn

        path = self.saved_path(path)
        current = model.state_dict()
        missing = sorted(k for k in self.state_keys if k not in current)
        if missing:
            raise PeftEquiError(f"cannot save as a SevenNet checkpoint: the model lacks {missing[:5]}")
        # a deepcopy adds codegen constants to the state dict: keep the keys of the built model
        state = {
            k: current[k].detach().float() if current[k].is_floating_point() else current[k] for k in self.state_keys
        }
        config = dict(self.checkpoint.config) | {"version": sevenn.__version__}
        torch.save(self.checkpoint.get_checkpoint_dict() | {"model_state_dict": state, "config": config}, path)
        return path


def _tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.float64)) if value.dtype.kind == "f" else torch.from_numpy(value)
    return value


def _is_sevenn(source: str) -> bool:
    return source.startswith(("7net", "sevennet")) or (source.endswith(".pth") and Path(source).is_file())


_READ_LOCK = threading.Lock()


def read_sevenn_checkpoint(path: str, *, trust_pickle: bool) -> Any:
    """A ``SevenNetCheckpoint`` for ``path``, its file unpickled by us with ``weights_only=True``.

    sevenn's own reader (``SevenNetCheckpoint._load``) calls ``torch.load(weights_only=False)``:
    any ``.pth`` would run code.  The file is read here instead (tensors, containers, plain
    values, ``torch.device`` and numpy arrays; anything else needs ``trust_pickle``) and handed
    to sevenn's reader, which then processes it as usual (config upgrades etc.).
    """
    import sevenn.checkpoint as reader

    payload = load_torch_file(
        path,
        trust_pickle=trust_pickle,
        what="a SevenNet checkpoint that pickles more than tensors, numbers and numpy arrays",
        safe_globals=numpy_globals(),
    )
    if not isinstance(payload, dict) or not isinstance(payload.get("model_state_dict"), dict):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise PeftEquiError(f"{path}: not a SevenNet checkpoint (no model_state_dict; found {found})")
    if not hasattr(reader, "torch_load"):
        raise PeftEquiError("the installed sevenn reads checkpoints differently: cannot hand it a safely read file")
    checkpoint = reader.SevenNetCheckpoint(path)
    original = reader.torch_load

    def torch_load(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == checkpoint.checkpoint_path:
            return payload
        return original(file, *args, **kwargs)

    with _READ_LOCK:
        reader.torch_load = torch_load
        try:
            checkpoint.config  # noqa: B018 - the first access reads the file (through torch_load)
        finally:
            reader.torch_load = original
    return checkpoint


@register_potential("sevenn", _is_sevenn)
def load_sevenn(source: str, *, dtype: torch.dtype, trust_pickle: bool) -> SevenNetPotential:
    """A pretrained SevenNet by name (``7net-0``, shipped in the wheel) or a SevenNet checkpoint file.

    Read with ``weights_only=True`` (:func:`read_sevenn_checkpoint`); a checkpoint that
    pickles code needs ``trust_pickle``.
    """
    import sevenn.util

    if Path(source).is_file():
        path = source
    else:
        try:
            path = sevenn.util.pretrained_name_to_path(source)
        except ValueError:
            names = ", ".join(sevenn.util.get_available_pretrained_models())
            raise PeftEquiError(f"{source!r} is neither a file nor a pretrained SevenNet (names: {names})") from None
    checkpoint = read_sevenn_checkpoint(str(path), trust_pickle=trust_pickle)
    with torch_default_dtype(torch.float32):  # sevenn builds (and checks) its tensors in float32
        model = checkpoint.build_model()
    return SevenNetPotential(to_dtype(model, dtype), source, checkpoint)
