"""Training state save and load, as mirror images: what `save_state` writes, `load_state` restores.

A checkpoint directory holds `state.pt` (model, optimizer, scheduler, step, best score, RNG states,
MLflow run id, the raymh version that wrote it) and `config.yaml` (the resolved config, so `raymh eval --checkpoint DIR` needs nothing else).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymh import __version__

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    best_score: float,
    config_yaml: str,
    mlflow_run_id: str | None = None,
) -> Path:
    """Write the whole training state into `directory` (created if missing); returns the state file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": 1,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best_score": best_score,
        "rng": rng_state(),
        "mlflow_run_id": mlflow_run_id,
        "raymh_version": __version__,
    }
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written state file
    (directory / CONFIG_FILE).write_text(config_yaml)
    return path


def read_state(directory: str | Path) -> dict[str, Any]:
    """The raw state dict of a checkpoint directory, with a clear error when it is not one."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a raymh checkpoint directory")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what `save_state` wrote; returns {"step", "best_score", "mlflow_run_id", "raymh_version"}."""
    state = read_state(directory)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {
        "step": state["step"],
        "best_score": state["best_score"],
        "mlflow_run_id": state["mlflow_run_id"],
        "raymh_version": state.get("raymh_version"),  # None: written before versions were recorded
    }


def model_from_checkpoint(directory: str | Path, model_cfg, num_classes: dict[str, int]) -> torch.nn.Module:
    """A MultiHeadDeepLab built from the `model` config section with a checkpoint's weights, in eval mode."""
    from raymh.model import MultiHeadDeepLab

    model = MultiHeadDeepLab(
        num_classes, backbone=model_cfg.backbone, output_stride=model_cfg.output_stride,
        head_depth=model_cfg.head_depth, proj_dim=model_cfg.proj_dim,
    )  # fmt: skip
    model.load_state_dict(read_state(directory)["model"])
    return model.eval()
