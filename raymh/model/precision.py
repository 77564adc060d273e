"""Where bf16 runs natively: the training loop and inference pick their precision from it."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls/convs run natively: any CUDA GPU, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or in fp64 when it is fp64 (losses and statistics never run in bf16/fp16; an fp64 model, as
    the worker-count invariance test uses, stays fp64 end to end)."""
    return t if t.dtype == torch.float64 else t.float()
