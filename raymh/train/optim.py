"""The optimizer (SGD, the method's recipe, or AdamW) and the poly learning-rate schedule (per iteration)."""

from __future__ import annotations

import torch

from raymh.config import OptimConfig
from raymh.model import param_groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW (beta1 = momentum, decoupled weight decay); backbone at lr,
    ASPP/decoder/heads/projection at lr * head_lr_mult."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_scheduler(optimizer: torch.optim.Optimizer, *, total_iters: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_t = lr_0 * (1 - t / total_iters) ** power, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: max(0.0, 1.0 - min(t, total_iters) / total_iters) ** power
    )
