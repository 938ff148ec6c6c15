"""Deep copies of models, including parameters that torch cannot deep-copy by itself."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def deepcopy_module(module: ModuleT, memo: dict[int, object] | None = None) -> ModuleT:
    """``copy.deepcopy(module)`` that also copies parameter subclasses built from their data alone.

    torch copies a parameter as ``type(p)(data, requires_grad)``; a subclass whose constructor takes
    the data only (mace's ``EmptyParam``, the frozen zero weights of a contraction path that does
    not exist) fails there, so such a parameter is copied as ``type(p)(data)`` with the original's
    ``requires_grad``.  The copy shares nothing with ``module`` except what ``memo`` maps (as for
    ``copy.deepcopy``: e.g. parameter-free compiled modules one wants to share).
    """
    memo = dict(memo or {})
    for parameter in module.parameters():
        if type(parameter) is nn.Parameter or id(parameter) in memo:
            continue
        try:
            copy.deepcopy(parameter, memo)
        except TypeError:
            with torch.no_grad():
                copied = type(parameter)(parameter.data.clone(memory_format=torch.preserve_format))
            copied.requires_grad = parameter.requires_grad
            memo[id(parameter)] = copied
    return copy.deepcopy(module, memo)
