"""Ray Train -> Ray Tune reporting for raymh trials."""

from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback


class EvalReportCallback(TuneReportCallback):
    """Forward evaluation reports only: checkpoints written between evaluations (train.checkpoint_every)
    carry no val score, and ASHA counts every forwarded report as one time unit."""

    def after_report(self, run_context, metrics, checkpoint):
        if (metrics[0] if metrics else {}).get("checkpoint/kind", "eval") == "eval":
            super().after_report(run_context, metrics, checkpoint)
