"""The MLflow pyfunc model of a raymh model, logged as code (MLflow's models-from-code): nothing is pickled.

MLflow loads this file, and `set_model` names the model object; its artifacts are the weights as a tensor
state dict (`weights.pt`, read with weights_only=True) and the inference record (`inference.json`: classes,
palettes, label formats, model config, normalisation). Input: a batch of images, uint8 (N, H, W, 3) RGB
(the signature's shape; called without schema checks, one (H, W, 3) image works too); params: `domain` (default: the first) and optionally `mode`. Output: uint8 label maps
(N, H, W) of the domain's train ids.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class RaymhSegmentation(PythonModel):
    def load_context(self, context) -> None:
        from raymh.infer.loading import ModelBundle, bundle_from_dir
        from raymh.infer.segmenter import Segmenter

        bundle: ModelBundle = bundle_from_dir(Path(context.artifacts["weights"]).parent)
        self.segmenter = Segmenter(bundle)
        self.default_domain = next(iter(bundle.domains))

    def predict(self, context, model_input, params=None):
        params = params or {}
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            model_input = next(iter(model_input.values()))
        images = np.asarray(model_input)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"input must be uint8 RGB images shaped (N, H, W, 3) or (H, W, 3); got {images.shape} {images.dtype}"
            )
        mode = params.get("mode") or None
        if mode not in (None, "whole", "slide"):
            raise ValueError(f"params mode={mode!r}: use 'whole' or 'slide'")
        preds = np.stack(self.segmenter.predict(list(images), params.get("domain") or self.default_domain, mode=mode))
        return preds[0] if single else preds


mlflow.models.set_model(RaymhSegmentation())
