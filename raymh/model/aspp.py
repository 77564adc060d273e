"""Atrous Spatial Pyramid Pooling (docs/method.md: rates 6/12/18 at OS16, 12/24/36 at OS8)."""

from __future__ import annotations

import torch
from torch import nn

from raymh.model.dropout import SampleDropout

ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}


def conv_bn_relu(
    in_channels: int, out_channels: int, *, kernel_size: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU with 'same' padding."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv+BN+ReLU, broadcast back to H x W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "ASPP's image-pooling BatchNorm needs at least 2 images per train-mode pass, got batch size "
                f"{x.shape[0]}; concatenate domains (forward_domains) or use a larger batch, or call model.eval()"
            )
        y = self.conv(self.pool(x))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """1x1 branch + three atrous 3x3 branches + image pooling, concatenated and projected to 256 channels."""

    def __init__(
        self, in_channels: int, *, output_stride: int = 16, channels: int = 256, dropout: float = 0.1
    ):
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be 16 or 8, got {output_stride!r}")
        rates = ASPP_RATES[output_stride]
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, kernel_size=3, dilation=r) for r in rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = nn.Sequential(
            conv_bn_relu(len(self.branches) * channels, channels), SampleDropout(dropout)
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
