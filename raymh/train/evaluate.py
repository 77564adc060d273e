"""Exact evaluation: per-domain confusion matrices summed across workers, mIoU per class and per domain.

Every rank evaluates a disjoint part of each val set (rows picked by a stable hash of their id, no padding
and no duplicates), so the summed confusion matrix is the one a single process would compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F

from raymh.data.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Counts (target, prediction) pairs; rows are ground truth, ignore index 255 is skipped."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        keep = target != IGNORE_INDEX
        t, p = target[keep].long().cpu(), pred[keep].long().cpu()
        if t.numel() and int(t.max()) >= self.num_classes:
            raise ValueError(f"label value {int(t.max())} >= num_classes {self.num_classes} (and not {IGNORE_INDEX})")
        self.mat += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def reduce_from_all_processes(self) -> None:
        """Sum over every rank of the default process group (no-op in a single process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # gloo and nccl both reduce int64; move to the device the backend wants.
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            mat = self.mat.to(device)
            dist.all_reduce(mat)
            self.mat = mat.cpu()

    def iou(self) -> list[float]:
        """IoU per class: TP / (TP + FP + FN); NaN for a class absent from both labels and predictions."""
        mat = self.mat.double()
        tp = mat.diag()
        denom = mat.sum(0) + mat.sum(1) - tp
        return [float(tp[i] / denom[i]) if denom[i] > 0 else math.nan for i in range(self.num_classes)]

    def miou(self) -> float:
        """Mean IoU over the classes present in labels or predictions."""
        vals = [v for v in self.iou() if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    def pixel_accuracy(self) -> float:
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else math.nan


def predict_logits(
    model,
    image: torch.Tensor,
    domain: str,
    *,
    mode: str = "whole",
    window: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Full-resolution logits (B,C,H,W) of normalised images, whole-image or by sliding window."""
    size = image.shape[-2:]
    if mode == "whole":
        h, w = size
        ph, pw = (-h) % 16, (-w) % 16  # the model wants multiples of its stride
        x = F.pad(image, (0, pw, 0, ph)) if ph or pw else image
        logits = model(x, domain)["logits"].float()
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
    if mode != "slide" or window is None:
        raise ValueError(f"eval mode {mode!r}: use 'whole', or 'slide' with a window size")
    return _slide(model, image, domain, window)


def _slide(model, image: torch.Tensor, domain: str, window: tuple[int, int]) -> torch.Tensor:
    """Sliding-window inference with 2/3 window strides; overlapping logits are averaged."""
    b, _, h, w = image.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    x = F.pad(image, (0, pw, 0, ph)) if ph or pw else image
    H, W = x.shape[-2:]
    sh, sw = max(wh * 2 // 3 // 8 * 8, 8), max(ww * 2 // 3 // 8 * 8, 8)
    ys = sorted({*range(0, H - wh + 1, sh), H - wh})
    xs = sorted({*range(0, W - ww + 1, sw), W - ww})
    total, count = None, torch.zeros(1, 1, H, W, device=image.device)
    for y in ys:
        for x0 in xs:
            part = predict_logits(model, x[..., y : y + wh, x0 : x0 + ww], domain)
            if total is None:
                total = torch.zeros(b, part.shape[1], H, W, device=image.device)
            total[..., y : y + wh, x0 : x0 + ww] += part
            count[..., y : y + wh, x0 : x0 + ww] += 1
    return (total / count)[..., :h, :w]


@torch.no_grad()
def evaluate_domains(
    model,
    val_batches: Mapping[str, Iterable[dict]],
    num_classes: Mapping[str, int],
    *,
    normalize,
    device: torch.device | str = "cpu",
    mode: str = "whole",
    window: tuple[int, int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_batch=None,
) -> dict[str, ConfusionMatrix]:
    """Per-domain confusion matrices over this rank's val rows, then summed across ranks.

    `val_batches[d]` yields {"image": (B,3,H,W) uint8, "label": (B,H,W)}; `normalize` maps uint8 images to
    the model's float input; `on_batch(domain, batch, pred)` sees each batch (e.g. to draw panels).
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device)
    results: dict[str, ConfusionMatrix] = {}
    for domain, batches in val_batches.items():
        cm = ConfusionMatrix(num_classes[domain])
        for batch in batches:
            x = normalize(batch["image"].to(dev))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = predict_logits(model, x, domain, mode=mode, window=window)
            pred = logits.argmax(1)
            cm.update(pred, batch["label"].to(pred.device))
            if on_batch is not None:
                on_batch(domain, batch, pred)
        cm.reduce_from_all_processes()
        results[domain] = cm
    model.train(was_training)
    return results


def miou_metrics(cms: Mapping[str, ConfusionMatrix], class_names: Mapping[str, list[str]]) -> dict[str, float]:
    """Flat metric dict: val/miou/<domain>, val/miou_mean, val/iou/<domain>/<class>, val/acc/<domain>."""
    out: dict[str, float] = {}
    for domain, cm in cms.items():
        out[f"val/miou/{domain}"] = cm.miou()
        out[f"val/acc/{domain}"] = cm.pixel_accuracy()
        for name, v in zip(class_names[domain], cm.iou(), strict=True):
            out[f"val/iou/{domain}/{name.replace(' ', '_')}"] = v
    out["val/miou_mean"] = sum(out[f"val/miou/{d}"] for d in cms) / len(cms)
    return out
