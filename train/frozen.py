"""A module that a LightningModule uses but neither trains nor saves.

Both stages hold such a module the same way, with :func:`hold`: stage 2 its frozen image
tokenizer (``DalleModule.vqvae``), stage 1 its compiled forward (``VQVAEModule._forward``,
whose parameters are the model's own). The attribute is not a submodule, so it is in no
``state_dict`` (the checkpoint keeps only the trained model's keys), no optimizer, no DDP
wrapper and no ``.to()``: the owner moves it where it needs it.
"""
from __future__ import annotations

from torch import nn


def hold(owner: nn.Module, name: str, module: nn.Module | None) -> None:
    """Set ``owner.<name> = module`` without registering ``module`` as a submodule of ``owner``."""
    object.__setattr__(owner, name, module)
