"""Multi-head DeepLabv3+: shared ResNet+ASPP+decoder fusion, one head per domain, shared projection (docs/method.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raymh.model.aspp import ASPP, conv_bn_relu
from raymh.model.backbone import ResNetBackbone
from raymh.model.heads import DomainHead, ProjectionHead
from raymh.model.pretrained import is_torchvision_resnet, is_whole_model, load_strict, read_state_dict

LOW_LEVEL_CHANNELS = 48
ASPP_CHANNELS = 256
HEAD_CHANNELS = 256
FUSION_CHANNELS = ASPP_CHANNELS + LOW_LEVEL_CHANNELS  # 304, at stride 4
INPUT_MULTIPLE = 8  # stride-8 maps must align with the 8-pixel overlap boxes (docs/method.md, DCLoss item 1)


class MultiHeadDeepLab(nn.Module):
    """DeepLabv3+ whose decoder tail is one head per domain; returns {"logits" (stride 4), "proj" (stride 8)}."""

    def __init__(
        self,
        num_classes: Mapping[str, int],
        *,
        backbone: str = "resnet50",
        output_stride: int = 16,
        head_depth: int = 2,
        proj_dim: int = 128,
        pretrained: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if isinstance(head_depth, bool) or not isinstance(head_depth, int) or head_depth < 1:
            raise ValueError(f"head_depth must be an int >= 1, got {head_depth!r}")
        if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 1:
            raise ValueError(f"proj_dim must be an int >= 1, got {proj_dim!r}")
        imagenet = pretrained == "imagenet"
        self.output_stride = output_stride
        self.head_depth = head_depth
        self.proj_dim = proj_dim
        self.num_classes = dict(num_classes)

        self.backbone = ResNetBackbone(backbone, output_stride=output_stride, imagenet=imagenet)
        self.aspp = ASPP(self.backbone.out_channels, output_stride=output_stride, channels=ASPP_CHANNELS)
        self.low_level = conv_bn_relu(self.backbone.low_channels, LOW_LEVEL_CHANNELS)
        self.heads = nn.ModuleDict(
            {
                d: DomainHead(FUSION_CHANNELS, c, depth=head_depth, channels=HEAD_CHANNELS)
                for d, c in num_classes.items()
            }
        )
        self.projector = ProjectionHead(HEAD_CHANNELS, hidden=HEAD_CHANNELS, proj_dim=proj_dim)

        for name, module in self.named_children():
            if name != "backbone" or pretrained is None:
                _kaiming_init(module)
        if pretrained is not None and not imagenet:
            self._load_file(pretrained)

    @property
    def domains(self) -> tuple[str, ...]:
        """The domain names, in construction order."""
        return tuple(self.heads.keys())

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Shared body: the 304-channel stride-4 decoder fusion [upsampled ASPP(layer4), proj48(layer1)]."""
        _check_images(x)
        feats = self.backbone(x)
        low = self.low_level(feats["low"])
        high = self.aspp(feats["high"])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([high, low], dim=1)

    def head(self, features: torch.Tensor, domain: str) -> dict[str, torch.Tensor]:
        """Run `domain`'s head and the shared projection on trunk features: {"logits", "proj"}."""
        out = self.heads[self._check_domain(domain)](features)
        return {"logits": out["logits"], "proj": self.projector(out["features"])}

    def forward(
        self, x: torch.Tensor | Mapping[str, torch.Tensor], domain: str | None = None, *, joint: bool = True
    ) -> dict:
        """model(x, domain) -> {"logits": (B,C_d,H/4,W/4), "proj": (B,proj_dim,H/8,W/8), unit-norm over channels}.

        model({domain: x_d, ...}) -> {domain: {"logits", "proj"}}: `forward_domains` (joint=True, one trunk
        pass) or one trunk pass per domain (joint=False, less memory). Going through `forward` matters under
        DistributedDataParallel, which prepares its gradient reduction only in `forward`.
        """
        if isinstance(x, Mapping):
            if domain is not None:
                raise ValueError("pass either model(x, domain) or model({domain: x, ...}), not both")
            if joint:
                return self.forward_domains(x)
            return {d: self.head(self.trunk(xd), self._check_domain(d)) for d, xd in x.items()}
        if domain is None:
            raise ValueError(
                f"model(x, domain) needs a domain name; this model has heads for {list(self.domains)}"
            )
        self._check_domain(domain)
        return self.head(self.trunk(x), domain)

    def forward_domains(self, images: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """One trunk pass over all domains' images concatenated; each head runs on its own slice only."""
        if not images:
            raise ValueError(
                f"forward_domains needs at least one domain's images; known domains: {list(self.domains)}"
            )
        for domain in images:
            self._check_domain(domain)
        for domain, x in images.items():
            _check_images(x, name=f"images[{domain!r}]")
        sizes = {d: tuple(x.shape[-2:]) for d, x in images.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"forward_domains needs one image size for all domains to share a trunk pass, got {sizes}; "
                "crop or resize to a common size, or call model(x, domain) per domain"
            )
        names = list(images)
        features = self.trunk(torch.cat([images[d] for d in names], dim=0))
        chunks = features.split([images[d].shape[0] for d in names], dim=0)
        return {d: self.head(f, d) for d, f in zip(names, chunks, strict=True)}

    def _check_domain(self, domain: str) -> str:
        if domain not in self.heads:
            raise ValueError(f"unknown domain {domain!r}; this model has heads for {list(self.domains)}")
        return domain

    def _load_file(self, path: str | Path) -> None:
        """Load a whole-model state dict (strict) or a torchvision ResNet's (into the backbone, fc dropped)."""
        state = read_state_dict(path)
        if is_whole_model(state):
            load_strict(self, state, source=str(path), what="MultiHeadDeepLab")
        elif is_torchvision_resnet(state):
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            load_strict(self.backbone, state, source=str(path), what=f"{self.backbone.name} backbone")
        else:
            raise ValueError(
                f"pretrained weights {str(path)!r} are neither a MultiHeadDeepLab state dict (keys 'backbone.*') nor a "
                f"torchvision ResNet one (keys 'conv1.weight', 'layer4.*'); first keys: {list(state)[:5]}"
            )


def param_groups(model: MultiHeadDeepLab, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
    """Optimizer groups: backbone at lr, everything else (ASPP, decoder, heads, proj) at lr * head_lr_mult."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        (backbone if name.startswith("backbone.") else rest).append(param)
    return [
        {"name": "backbone", "params": backbone, "lr": lr, "lr_mult": 1.0},
        {"name": "head", "params": rest, "lr": lr * head_lr_mult, "lr_mult": float(head_lr_mult)},
    ]


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _check_num_classes(num_classes: Mapping[str, int]) -> None:
    if not isinstance(num_classes, Mapping) or not num_classes:
        raise ValueError(
            f"num_classes must be a non-empty {{domain: class count}} mapping, got {num_classes!r}"
        )
    reserved = set(dir(nn.ModuleDict()))
    for domain, count in num_classes.items():
        if not isinstance(domain, str) or not domain or "." in domain or domain in reserved:
            raise ValueError(
                f"domain name {domain!r} cannot name a head: use a non-empty string without '.' that is not an "
                "nn.ModuleDict attribute (e.g. 'keys', 'train')"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"num_classes[{domain!r}] must be an int >= 1, got {count!r}")


def _check_images(x: torch.Tensor, *, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must be a batch of RGB images shaped (B, 3, H, W), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be float images normalised with ImageNet mean/std, got dtype {x.dtype}; "
            "use raymh.model.normalize_uint8"
        )
    h, w = x.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        fix = tuple(-(-s // INPUT_MULTIPLE) * INPUT_MULTIPLE for s in (h, w))
        down = tuple(s // INPUT_MULTIPLE * INPUT_MULTIPLE for s in (h, w))
        raise ValueError(
            f"{name} has size {h}x{w}, which is not divisible by {INPUT_MULTIPLE}; pad to {fix[0]}x{fix[1]} or crop "
            f"to {down[0]}x{down[1]} (multiples of 16 give exact shapes at output stride 16)"
        )


def _kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), BatchNorm at identity, zero conv biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(spec: Any, num_classes: Mapping[str, int], *, load_pretrained: bool = False) -> MultiHeadDeepLab:
    """The one factory of a model from a config's `model` section (a `ModelConfig`, or the dict a checkpoint's
    inference record holds): training builds it with `load_pretrained` (model.pretrained's weights), loading a
    checkpoint or a logged model builds it bare and then loads its weights."""
    m = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    return MultiHeadDeepLab(
        dict(num_classes), backbone=m["backbone"], output_stride=m["output_stride"], head_depth=m["head_depth"],
        proj_dim=m["proj_dim"], pretrained=m.get("pretrained") if load_pretrained else None,
    )  # fmt: skip
