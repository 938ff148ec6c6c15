"""MACE architectures built in the tests (random weights; no downloads) and batches of molecules."""

from __future__ import annotations

import numpy as np
import torch

ELEMENTS = (1, 6, 8)  # H, C, O


def build_mace(size: str = "small", seed: int = 0) -> torch.nn.Module:
    """``small``: max_ell 2, correlation 2, 16x0e+16x1o; ``medium``: the MACE-OFF23-medium architecture."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    common = dict(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=len(ELEMENTS),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-13.6, -1029.0, -2041.0]),
        avg_num_neighbors=10.0,
        atomic_numbers=list(ELEMENTS),
        gate=torch.nn.functional.silu,
        use_reduced_cg=False,
        atomic_inter_scale=0.7,
        atomic_inter_shift=0.05,
    )
    if size == "small":
        return modules.ScaleShiftMACE(
            max_ell=2, correlation=2, hidden_irreps=o3.Irreps("16x0e+16x1o"), radial_MLP=[16, 16], **common
        )
    return modules.ScaleShiftMACE(
        max_ell=3, correlation=3, hidden_irreps=o3.Irreps("128x0e+128x1o"), radial_MLP=[64, 64, 64], **common
    )


def molecules(n: int = 2, seed: int = 0):
    """Small H/C/O molecules with perturbed geometries (ase.Atoms)."""
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    names = ["CH3CH2OH", "CH3OH", "H2O", "CH3CHO"]
    out = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def batch_of(atoms_list, r_max: float = 5.0) -> dict[str, torch.Tensor]:
    """A MACE input dict for ``atoms_list`` (float64 positions)."""
    from mace import data
    from mace.tools import torch_geometric, utils

    table = utils.AtomicNumberTable(list(ELEMENTS))
    configs = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=r_max) for a in atoms_list]
    loader = torch_geometric.DataLoader(configs, batch_size=len(configs), shuffle=False, drop_last=False)
    return next(iter(loader)).to_dict()
