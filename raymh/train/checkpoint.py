"""Training state save and load, as mirror images: what `save_state` writes, `load_state` restores.

A checkpoint directory holds `state.pt` (model, optimizer, scheduler, step, best score, RNG states,
MLflow run id, the raymh version that wrote it, and the `inference` record: per domain its classes, palette and label format, the model
config, the input normalisation and the raymh version) and `config.yaml` (the resolved config, so
`raymh eval --checkpoint DIR` needs nothing else). Every file is read with `torch.load(weights_only=True)`:
it holds only tensors and plain Python values, and a file that needs more is refused, its payload unrun.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymh import __version__

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 2  # 2: RNG states as tensors and plain values (weights_only), the inference record


class UnsafeCheckpointError(ValueError):
    """A weights file whose pickle asks for more than tensors and plain values; it was not run."""


def safe_load(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU; a pickle payload is refused with a message naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path} is not a plain weights file: its pickle asks for objects beyond tensors and plain values "
            f"({first}). raymh loads weights with torch.load(weights_only=True) and did not run it; re-save it "
            "from trusted code with torch.save(model.state_dict(), path), or retrain."
        ) from None


def inference_record(
    model_cfg: dict[str, Any],
    domains: dict[str, dict[str, Any]],
    *,
    mode: str = "whole",
    window: list[int] | tuple[int, int] | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """What inference needs beside the weights: model config, per-domain classes/palette/label format,
    input normalisation, the evaluation's mode/window/precision and the raymh version.
    `domains[d]` has "classes", "palette" and "label_format"."""
    from raymh import __version__
    from raymh.model import IMAGENET_MEAN, IMAGENET_STD

    return {
        "raymh_version": __version__,
        "model": dict(model_cfg),
        "normalization": {
            "input": "RGB, channels first, uint8 / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "predict": {
            "mode": mode, "window": list(window) if window else None, "precision": precision,
            "channels_last": channels_last,
        },  # fmt: skip
        "domains": {
            name: {
                "classes": list(d["classes"]),
                "palette": [list(map(int, c)) for c in d["palette"]],
                "label_format": d.get("label_format", "trainid"),
            }
            for name, d in domains.items()
        },
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """The mirror of `rng_state`."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
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
    inference: dict[str, Any] | None = None,
) -> Path:
    """Write the whole training state into `directory` (created if missing); returns the state file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best_score": best_score,
        "rng": rng_state(),
        "mlflow_run_id": mlflow_run_id,
        "raymh_version": __version__,
        "inference": inference,
    }
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written state file
    (directory / CONFIG_FILE).write_text(config_yaml)
    return path


def read_state(directory: str | Path) -> dict[str, Any]:
    """The raw state dict of a checkpoint directory (read with weights_only=True), with a clear error when it
    is not one or when its file carries a pickle payload (`UnsafeCheckpointError`)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a raymh checkpoint directory")
    state = safe_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a raymh training state (no 'model' entry); it holds a {type(state).__name__}")
    return state


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


def model_from_checkpoint(
    directory: str | Path, model_cfg, num_classes: dict[str, int], *, state: dict[str, Any] | None = None
) -> torch.nn.Module:
    """A MultiHeadDeepLab built from the `model` config section with a checkpoint's weights (from `state`
    when already read), in eval mode."""
    from raymh.model import build_model

    model = build_model(model_cfg, num_classes)
    model.load_state_dict((state or read_state(directory))["model"])
    return model.eval()


def find_checkpoint(path_or_run: str, storage_path: str | None = None) -> Path:
    """A checkpoint dir as given, or the best-scoring checkpoint of a run directory / run name."""
    path = Path(path_or_run).expanduser()
    if not path.exists() and storage_path is None:  # a run name under the default storage path
        from raymh.config import load_config
        from raymh.platform.records import resolve_local

        path = Path(resolve_local(load_config("quickstart").tracking.storage_path)) / path_or_run
    if (path / STATE_FILE).is_file():
        return path
    candidates = sorted(path.glob(f"checkpoint_*/{STATE_FILE}")) if path.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"{path_or_run}: neither a checkpoint dir (with {STATE_FILE}) nor a run dir with checkpoints")

    def score(p: Path) -> float:
        metrics = p.parent / "metrics.json"
        if metrics.is_file():
            return json.loads(metrics.read_text()).get("val/miou_mean", -math.inf)
        return read_state(p.parent)["step"]

    return max(candidates, key=score).parent
