"""BatchNorm over the batch of every worker, on any device (docs/method.md, "One method on any number of workers").

torch's `nn.SyncBatchNorm` refuses CPU tensors, and raymh trains on CPUs as well as GPUs. `WorldBatchNorm2d`
is a `BatchNorm2d` whose training-mode statistics are the mean and variance over all ranks' images: each rank
takes its own per-channel mean and variance (two-pass, accurate), and two differentiable all-reduces combine
them (the global mean from the count-weighted means, then the global variance as the count-weighted sum of
each rank's variance plus its squared mean offset: the parallel-variance formula, which keeps precision where
E[x^2] - E[x]^2 would cancel). The gradient flows back through the same all-reduces. Its parameters, buffers and state-dict keys are BatchNorm2d's,
so checkpoints load into the plain model. In eval mode, or on one rank, it is exactly `BatchNorm2d`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from raymh.model.precision import at_least_fp32

__all__ = ["WorldBatchNorm2d", "convert_world_batchnorm", "sync_bn_enabled"]


def sync_bn_enabled(setting, num_workers: int) -> bool:
    """model.sync_bn: True / False, or "auto" = on when more than one worker trains."""
    return num_workers > 1 if setting == "auto" else bool(setting)


class WorldBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over every rank of `group` (the default group when None)."""

    group = None

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        world = dist.get_world_size(self.group)
        if world == 1:
            return super().forward(x)
        xf = at_least_fp32(x)
        group = self.group or dist.group.WORLD
        c = self.num_features
        local_var, local_mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
        local_n = xf.new_full((1,), xf.numel() / c)
        firsts = dist_fn.all_reduce(torch.cat([local_mean * local_n, local_n]), group=group)  # differentiable
        n = firsts[-1]
        mean = firsts[:c] / n
        spread = dist_fn.all_reduce(local_n * (local_var + (local_mean - mean) ** 2), group=group)
        var = spread / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight.to(y.dtype)[None, :, None, None] + self.bias.to(y.dtype)[None, :, None, None]
        return y.to(x.dtype)


def convert_world_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replace every BatchNorm2d of `module` (in place, recursively) by a WorldBatchNorm2d sharing its tensors."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, WorldBatchNorm2d):
        bn = WorldBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        bn.group = group
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        if module.track_running_stats:
            bn.running_mean, bn.running_var = module.running_mean, module.running_var
            bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        new = convert_world_batchnorm(child, group)
        if new is not child:
            setattr(module, name, new)
    return module
