"""Label maps from uint8 images: the one inference routine `predict`, the MLflow model and `serve` share.

It is the evaluation's own: ImageNet normalisation, `predict_logits` (whole image, or sliding window),
argmax, with the precision the training loop evaluates with (bf16 autocast + channels_last where bf16 is
native under `precision: auto`), so its label maps are the ones `raymh eval` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raymh.infer.loading import ModelBundle


def autocast_settings(
    precision: str, device: torch.device, channels_last: bool | None = None
) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for `train.precision`/`channels_last` values, as the training
    loop picks them."""
    from raymh.model.precision import native_bf16

    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    return (torch.bfloat16 if bf16 else None), (bf16 if channels_last is None else channels_last)


class Segmenter:
    """A loaded model that turns HxWx3 uint8 images into HxW uint8 label maps of one domain's classes."""

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        mode: str | None = None,
        window: Sequence[int] | None = None,
        precision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        defaults = bundle.info.get("predict") or {}
        self.bundle = bundle
        self.mode = mode or defaults.get("mode") or "whole"
        window = window or defaults.get("window")
        self.window = tuple(window) if window else None
        self.precision = precision or defaults.get("precision") or "fp32"
        self.device = torch.device(device)
        self.autocast_dtype, self.channels_last = autocast_settings(
            self.precision, self.device, None if precision else defaults.get("channels_last")
        )
        self.model = bundle.build().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def domains(self) -> dict:
        return self.bundle.domains

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, domain: str, *, mode: str | None = None) -> torch.Tensor:
        """Full-resolution float logits (B,C,H,W) of uint8 images (B,3,H,W) (`mode`: this call's, else the default)."""
        from raymh.model import normalize_uint8
        from raymh.train.evaluate import predict_logits

        self.bundle.domain(domain)
        x = normalize_uint8(images.to(self.device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return predict_logits(self.model, x, domain, mode=mode or self.mode, window=self.window).float()

    def predict(self, images: Sequence[np.ndarray], domain: str, *, mode: str | None = None) -> list[np.ndarray]:
        """One HxW uint8 label map per HxWx3 uint8 image; same-size images run as one batch."""
        out: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"image {i} must be HxWx3 uint8 RGB, got shape {img.shape} dtype {img.dtype}")
            by_size.setdefault(img.shape, []).append(i)
        for idx in by_size.values():
            batch = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
            pred = self.logits(batch, domain, mode=mode).argmax(1).to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = pred[j]
        return out  # type: ignore[return-value]
