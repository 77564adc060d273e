"""ResNet trunk with dilation for output stride 16 or 8 (docs/method.md, shared network)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

RESNET_NAMES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
# Channels of (layer1, layer4) per backbone: BasicBlock nets expand 1x, Bottleneck nets 4x.
RESNET_CHANNELS: dict[str, tuple[int, int]] = {
    "resnet18": (64, 512),
    "resnet34": (64, 512),
    "resnet50": (256, 2048),
    "resnet101": (256, 2048),
}
# Which of layer2/3/4 trade their stride for dilation, per output stride (torchvision's convention).
_DILATE: dict[int, tuple[bool, bool, bool]] = {16: (False, False, True), 8: (False, True, True)}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without avgpool/fc; module names match torchvision's so its state dicts load."""

    def __init__(self, name: str = "resnet50", *, output_stride: int = 16, imagenet: bool = False) -> None:
        super().__init__()
        if name not in RESNET_NAMES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {list(RESNET_NAMES)}")
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be 16 or 8, got {output_stride!r}")
        dilate = _DILATE[output_stride]
        weights = torchvision.models.get_model_weights(name).DEFAULT if imagenet else None
        builder = getattr(torchvision.models, name)
        basic = name in ("resnet18", "resnet34")
        # BasicBlock refuses torchvision's replace_stride_with_dilation; those nets are dilated after building.
        net = (
            builder(weights=weights)
            if basic
            else builder(weights=weights, replace_stride_with_dilation=list(dilate))
        )
        if basic:
            _dilate_basic_layers(net, dilate)
        self.name = name
        self.output_stride = output_stride
        self.low_channels, self.out_channels = RESNET_CHANNELS[name]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"low": layer1 (stride 4), "high": layer4 (stride output_stride)}."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "high": high}


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Make a 3x3 conv atrous with 'same' padding."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


def _dilate_basic_layers(net: torchvision.models.ResNet, dilate: tuple[bool, bool, bool]) -> None:
    """Replace stride by dilation in BasicBlock layers, mirroring torchvision's Bottleneck rule.

    The first block of a dilated layer keeps the previous dilation on its (formerly strided) conv1;
    all later convs of the layer use the new dilation.
    """
    dilation = 1
    for layer, do in zip((net.layer2, net.layer3, net.layer4), dilate, strict=True):
        if not do:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(layer):
            if not isinstance(block, BasicBlock):
                raise TypeError(f"expected BasicBlock, got {type(block).__name__}")
            if index == 0:
                block.conv1.stride = (1, 1)
                block.stride = 1
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
                _set_dilation(block.conv1, previous)
            else:
                _set_dilation(block.conv1, dilation)
            _set_dilation(block.conv2, dilation)
