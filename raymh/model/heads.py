"""Per-domain segmentation head and the shared projection head (docs/method.md, multi-head + projection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raymh.model.aspp import conv_bn_relu
from raymh.model.precision import at_least_fp32


class DomainHead(nn.Module):
    """`depth` 3x3 conv+BN+ReLU blocks (in->256, then 256->256) and a 1x1 classifier, at stride 4."""

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 2, channels: int = 256) -> None:
        super().__init__()
        blocks = [
            conv_bn_relu(in_channels if i == 0 else channels, channels, kernel_size=3) for i in range(depth)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"features": (B,256,h,w), "logits": (B,C,h,w)}."""
        features = self.blocks(x)
        return {"features": features, "logits": self.classifier(features)}


class ProjectionHead(nn.Module):
    """Head features avg-pooled 2x2 to stride 8, 1x1 conv, ReLU, 1x1 conv, L2-normalised over channels."""

    def __init__(self, in_channels: int = 256, *, hidden: int = 256, proj_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, proj_dim, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return unit-norm embeddings (B, proj_dim, h/2, w/2), in fp32 even under autocast."""
        z = self.net(F.avg_pool2d(features, kernel_size=2, stride=2))
        return F.normalize(at_least_fp32(z), dim=1)
