"""raymh: multi-domain semi-supervised semantic segmentation (multi-head DeepLabv3+, DCLoss, Mix Loss) on Ray."""

__version__ = "0.1.0"
