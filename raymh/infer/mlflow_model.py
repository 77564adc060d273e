"""Log a raymh model to MLflow as a pickle-free pyfunc (models-from-code), optionally registered."""

from __future__ import annotations

import tempfile
from pathlib import Path

from raymh.infer.loading import INFO_FILE, WEIGHTS_FILE, ModelBundle


def model_signature(bundle: ModelBundle):
    """uint8 (N, H, W, 3) images in, uint8 (N, H, W) label maps out; params `domain` and `mode`."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    predict = bundle.info.get("predict") or {}
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),  # unnamed: predict gets the array itself
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        params=ParamSchema([
            ParamSpec("domain", "string", next(iter(bundle.domains))),
            ParamSpec("mode", "string", predict.get("mode") or "whole"),
        ]),  # fmt: skip
    )


def log_pyfunc(bundle: ModelBundle, *, name: str = "model", registered_model_name: str | None = None):
    """Log `bundle` into the active MLflow run; returns MLflow's ModelInfo."""
    import mlflow
    import torch

    import raymh
    from raymh.infer import pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        bundle.save(tmp)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=pyfunc_model.__file__,  # models-from-code: the file is the model, nothing pickled
            artifacts={"weights": str(Path(tmp) / WEIGHTS_FILE), "inference": str(Path(tmp) / INFO_FILE)},
            code_paths=[str(Path(raymh.__file__).parent)],  # the raymh package travels with the model
            signature=model_signature(bundle),
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy", "pillow",
                "pydantic>=2.5,<3", "pyyaml",
            ],  # fmt: skip
            registered_model_name=registered_model_name,
        )
