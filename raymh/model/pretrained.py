"""Load weights from a state-dict file: a whole MultiHeadDeepLab, or a torchvision ResNet backbone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from `path`, unwrapping {"model": ...}-style checkpoints and DDP prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist; pass an existing state-dict file, 'imagenet' or None"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same to the caller
        raise ValueError(
            f"could not read pretrained weights {str(path)!r} as a torch state dict ({type(exc).__name__}: {exc}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained weights {str(path)!r} hold a {type(obj).__name__}, not a non-empty state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    state = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, what: str) -> None:
    """Load `state` into `module` strictly, raising one error that lists missing, unexpected and reshaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or reshaped:
        parts = [
            f"{label} ({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", reshaped),
            )
            if keys
        ]
        raise ValueError(
            f"pretrained weights {source!r} do not match the {what}: "
            + "; ".join(parts)
            + ". Build the model with the same backbone, output stride, domains, class counts, head_depth and "
            "proj_dim as the saved one"
        )
    module.load_state_dict(state, strict=True)


def is_whole_model(state: Mapping[str, torch.Tensor]) -> bool:
    """A MultiHeadDeepLab state dict has 'backbone.'-prefixed keys; a torchvision ResNet's starts at 'conv1.'."""
    return any(key.startswith("backbone.") for key in state)


def is_torchvision_resnet(state: Mapping[str, torch.Tensor]) -> bool:
    """A torchvision ResNet state dict (fc included or not)."""
    return "conv1.weight" in state and any(key.startswith("layer4.") for key in state)
