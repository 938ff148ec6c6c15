"""MACE input batches from ``ase.Atoms``."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mace_batch(atoms_list: Sequence, atomic_numbers: Sequence[int], r_max: float) -> dict[str, torch.Tensor]:
    """The input dict MACE models take, for ``atoms_list`` (positions in the default dtype).

    ``atomic_numbers`` must be the model's element order (``model.atomic_numbers``); energies
    and forces stored on the atoms (``atoms.info['energy']``, ``atoms.arrays['forces']`` or
    a calculator's results) end up in the batch under ``energy`` and ``forces``.
    """
    from mace import data
    from mace.tools import torch_geometric, utils

    table = utils.AtomicNumberTable([int(z) for z in atomic_numbers])
    configs = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=r_max) for a in atoms_list]
    loader = torch_geometric.DataLoader(configs, batch_size=len(configs), shuffle=False, drop_last=False)
    return next(iter(loader)).to_dict()
