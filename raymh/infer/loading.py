"""A trained model for inference, from any of the forms raymh leaves it in.

`--model M` may be a run name or run directory (its best checkpoint by val mIoU), a checkpoint directory,
an MLflow model URI (`runs:/<id>/model`, `models:/<name>/<version>`) or a downloaded MLflow model dir.
Each gives the same `ModelBundle`: the weights (a tensor state dict, read with weights_only=True) and the
inference record (per domain its classes, palette and label format; the model config; the input
normalisation; the evaluation's mode, window and precision; the raymh version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_FILE = "weights.pt"  # an MLflow model's artifacts: the state dict ...
INFO_FILE = "inference.json"  # ... and the inference record
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


@dataclass
class ModelBundle:
    """Weights plus everything inference needs; `build()` gives the model in eval mode."""

    state: dict[str, torch.Tensor]
    info: dict[str, Any]
    source: str

    @property
    def domains(self) -> dict[str, dict[str, Any]]:
        return self.info["domains"]

    def domain(self, name: str) -> dict[str, Any]:
        """One domain's record; an unknown name is an error listing the known ones."""
        if name not in self.domains:
            raise ValueError(f"unknown domain {name!r}: the model {self.source} has heads for {list(self.domains)}")
        return self.domains[name]

    def build(self) -> torch.nn.Module:
        from raymh.model import build_model

        model = build_model(self.info["model"], {d: len(v["classes"]) for d, v in self.domains.items()})
        model.load_state_dict(self.state)
        return model.eval()

    def save(self, directory: str | Path) -> Path:
        """Write `weights.pt` (state dict) and `inference.json` into `directory` (the MLflow model's artifacts)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state, directory / WEIGHTS_FILE)
        (directory / INFO_FILE).write_text(json.dumps(self.info, indent=1))
        return directory


def load_bundle(ref: str, *, tracking_uri: str | None = None) -> ModelBundle:
    """The weights and inference record of a run, checkpoint, MLflow model URI or MLflow model dir."""
    if ref.startswith(MLFLOW_SCHEMES):
        return _from_mlflow(ref, tracking_uri)
    path = Path(ref).expanduser()
    if (path / "MLmodel").is_file() or (path / "artifacts" / WEIGHTS_FILE).is_file():
        return bundle_from_dir(path / "artifacts", source=ref)
    if (path / WEIGHTS_FILE).is_file() and (path / INFO_FILE).is_file():
        return bundle_from_dir(path, source=ref)
    return bundle_from_checkpoint(ref)


def bundle_from_checkpoint(ref: str) -> ModelBundle:
    """A checkpoint dir, or the best checkpoint of a run dir / run name."""
    from raymh.train.checkpoint import find_checkpoint, read_state

    ckpt = find_checkpoint(ref)
    state = read_state(ckpt)
    info = state.get("inference")
    if not info:
        raise ValueError(
            f"checkpoint {ckpt} carries no inference record (class names, palettes, model config): it was "
            "written by an older raymh; retrain, or evaluate it with `raymh eval`"
        )
    return ModelBundle(state["model"], info, str(ckpt))


def bundle_from_dir(directory: str | Path, *, source: str | None = None) -> ModelBundle:
    """A folder holding `weights.pt` and `inference.json` (an MLflow model's artifacts)."""
    from raymh.train.checkpoint import safe_load

    directory = Path(directory)
    for name in (WEIGHTS_FILE, INFO_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: {source or directory} is not a raymh model")
    state = safe_load(directory / WEIGHTS_FILE)
    return ModelBundle(state, json.loads((directory / INFO_FILE).read_text()), source or str(directory))


def _from_mlflow(uri: str, tracking_uri: str | None) -> ModelBundle:
    import mlflow

    from raymh.platform.tracking import resolve_tracking_uri

    store = tracking_uri or resolve_tracking_uri()  # passed, not set: set_tracking_uri writes os.environ
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store, registry_uri=store)
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; one clear message
        raise FileNotFoundError(
            f"could not download the MLflow model {uri} from {store} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set MLFLOW_TRACKING_URI to the run's tracking store"
        ) from None
    return bundle_from_dir(Path(local) / "artifacts", source=uri)
