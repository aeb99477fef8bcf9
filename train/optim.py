"""Optimizers and the learning-rate schedule of every training stage.

AdamW. The transformer and the scorer (:func:`build_optimizer`) decay matmul weights
only (``nn.Linear`` / conv kernels); norms, biases and embeddings (including anything
tied to an embedding) are never decayed. The image tokenizers (:func:`ndim_groups`)
decay every tensor of two or more dimensions. The schedule is
:func:`train.schedules.warmup_cosine`, stepped once per optimizer step
(:func:`optimizer_config`, what ``configure_optimizers`` returns). A step whose loss is
not finite is dropped on every rank (:class:`NonFiniteSteps`).
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from torch import nn

from train.config import TrainConfig
from train.schedules import warmup_cosine

log = logging.getLogger(__name__)

_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Only the ``weight`` of linear / conv modules is decayed; a parameter that is
    also an embedding table (weight tying) is not. Frozen parameters are left out.

    Args:
        model: the module to optimise.
        weight_decay: decay of the matmul-weight group.
    Returns:
        ``[{"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]``.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: dict[int, nn.Parameter] = {}
    no_decay: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, _MATMUL_MODULES) and name == "weight" and id(p) not in embedding_ids:
                decay[id(p)] = p
            else:
                no_decay[id(p)] = p
    for key in set(decay) & set(no_decay):  # shared between a matmul and something else: no decay
        del decay[key]
    return [{"params": list(decay.values()), "weight_decay": weight_decay, "name": "decay"},
            {"params": list(no_decay.values()), "weight_decay": 0.0, "name": "no_decay"}]


def ndim_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The image tokenizers' AdamW groups: trainable tensors of 2+ dimensions decayed, the others
    (biases) not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _fast_kwargs(params: list[torch.Tensor]) -> dict[str, bool]:
    """``fused=True`` when every parameter is a dense floating CUDA tensor, else ``foreach``."""
    sig = inspect.signature(torch.optim.AdamW).parameters
    on_cuda = bool(params) and all(p.is_cuda and p.is_floating_point() and type(p.data) is torch.Tensor
                                   for p in params)
    if on_cuda and "fused" in sig:
        return {"fused": True}
    if "foreach" in sig:
        return {"foreach": True}
    return {}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the config's lr, betas and weight decay."""
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters")
    n_decay = sum(p.numel() for p in groups[0]["params"])
    n_plain = sum(p.numel() for p in groups[1]["params"])
    log.info("AdamW: %d decayed parameters (%d tensors), %d not decayed (%d tensors)",
             n_decay, len(groups[0]["params"]), n_plain, len(groups[1]["params"]))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **_fast_kwargs(params))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio`` (one step per optimizer step)."""
    fn = functools.partial(warmup_cosine, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                           min_lr_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class NonFiniteSteps:
    """Counts the training steps dropped because their loss was not finite on some rank.

    A dropped step returns no loss from ``training_step`` (Lightning skips the backward) and
    its gradients are set to None, so the optimizer step changes nothing, even after
    gradients were accumulated; every rank drops it, so they stay in step.
    """

    def __init__(self) -> None:
        self.total = 0       # steps dropped in this run (a module restores it on resume)
        self.streak = 0      # dropped in a row, up to the current step

    def finite(self, trainer: Any, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank; if not, the step is dropped and counted."""
        if trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            self.streak = 0
            return True
        self.total += 1
        self.streak += 1
        for opt in trainer.optimizers:  # grads set to None: the optimizer step is a no-op
            opt.zero_grad(set_to_none=True)
        return False


def optimizer_config(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: ``optimizer`` and its
    :func:`build_scheduler` schedule, stepped once per optimizer step."""
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": build_scheduler(optimizer, cfg), "interval": "step"}}
