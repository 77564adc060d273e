"""Multi-head DeepLabv3+ (docs/method.md): shared trunk, per-domain heads, shared projection head."""

from raymh.model.backbone import RESNET_NAMES, ResNetBackbone
from raymh.model.deeplab import FUSION_CHANNELS, MultiHeadDeepLab, build_model, count_parameters, param_groups
from raymh.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8

__all__ = [
    "FUSION_CHANNELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_NAMES",
    "MultiHeadDeepLab",
    "build_model",
    "ResNetBackbone",
    "count_parameters",
    "normalize_uint8",
    "param_groups",
]
