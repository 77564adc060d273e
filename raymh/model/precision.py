"""Where bf16 runs natively: the training loop and inference pick their precision from it."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls/convs run natively: any CUDA GPU, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
