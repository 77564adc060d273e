"""Decode + augment functions on batches of prepared rows (`{"id", "image", "label"}` columns).

They run where `data.transforms_on` puts them: in Ray Data `map_batches` CPU tasks (`ray_data`, built into
the train sets by `raymh.data.driver_datasets`) or in the train worker itself (`worker`, through
`train_transforms` and `StepBatches(transforms=...)`) or in Ray tasks beside it (`tasks`, through
`raymh.data.task_decode`). In the worker and tasks modes the n-th batch of a domain's set on a rank is
augmented from its own streams (`augment_part`, `raymh.streams`), so the labeled batches of a run depend on
its seed, rank and batch number only: a supervised and a semi-supervised run of one seed train on the same
labeled crops, whatever the unlabeled pairs draw. Val rows are decoded by `val_batch` in the process
that evaluates them (`raymh.data.worker_batches.val_batches`), after the rank's rows are picked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raymh import streams
from raymh.data.transforms import (
    BOX_STRIDE,
    decode_image,
    decode_label,
    overlap_crop_pair,
    scale_crop_flip,
    val_resize,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng()  # ray_data mode: fresh OS entropy per task batch (not reproducible)


def _ids(batch: dict[str, np.ndarray]) -> list[str]:
    return [str(i) for i in batch["id"]]


def _decode_pair(sample_id: str, image: bytes, label: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    if label is None:
        raise ValueError(f"sample {sample_id!r} has no label but is in a labeled or val set; re-run prepare")
    img, lab = decode_image(image), decode_label(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"sample {sample_id!r}: image {img.shape[:2]} and label {lab.shape} sizes differ")
    return img, lab


def labeled_batch(batch: dict[str, np.ndarray], *, crop_size, scale_range, rng=None) -> dict[str, np.ndarray]:
    """Decode and scale/crop/flip a batch of labeled rows -> image (B,3,h,w), label (B,h,w) uint8."""
    rng, images, labels = rng or _rng(), [], []
    for sid, image, label in zip(_ids(batch), batch["image"], batch["label"], strict=True):
        img, lab = _decode_pair(sid, image, label)
        img, lab = scale_crop_flip(img, lab, rng=rng, crop_size=crop_size, scale_range=scale_range)
        images.append(img)
        labels.append(lab)
    return {
        "id": np.asarray(_ids(batch), dtype=object),
        "image": np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)),
        "label": np.stack(labels),
    }


def unlabeled_batch(
    batch: dict[str, np.ndarray], *, crop_size, scale_range, rng=None, photo_rng=None
) -> dict[str, np.ndarray]:
    """Decode and cut an overlapping crop pair per row (docs/method.md, DCLoss item 1); rng draws the pairs'
    geometry, photo_rng (default rng) their photometric augmentation.

    When every row of the batch carries its true label (the built-in domains label every image), the
    label is cut with the crops as label1/label2, for the pseudo-label accuracy diagnostic only."""
    rng = rng or _rng()
    labels = batch.get("label")
    with_labels = labels is not None and all(lab is not None for lab in labels)
    pairs = [
        overlap_crop_pair(
            decode_image(image), rng=rng, photo_rng=photo_rng, crop_size=crop_size, scale_range=scale_range,
            label=decode_label(labels[i]) if with_labels else None,
        )
        for i, image in enumerate(batch["image"])
    ]  # fmt: skip
    out: dict[str, np.ndarray] = {"id": np.asarray(_ids(batch), dtype=object)}
    for key in ("image1", "image2"):
        out[key] = np.ascontiguousarray(np.stack([p[key] for p in pairs]).transpose(0, 3, 1, 2))
    for key in ("box1", "box2", "valid1", "valid2", *(("label1", "label2") if with_labels else ())):
        out[key] = np.stack([p[key] for p in pairs])
    for key in ("flip1", "flip2"):
        out[key] = np.array([p[key] for p in pairs], dtype=bool)
    return out


def val_batch(batch: dict[str, np.ndarray], *, size) -> dict[str, Any]:
    """Decode val rows, optionally resized: image (3,H,W), label (H,W) per row (sizes may differ)."""
    images, labels = [], []
    for sid, image, label in zip(_ids(batch), batch["image"], batch["label"], strict=True):
        img, lab = val_resize(*_decode_pair(sid, image, label), size=size)
        images.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
        labels.append(lab)
    return {"id": np.asarray(_ids(batch), dtype=object), "image": images, "label": labels}


def check_crop(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 or s % BOX_STRIDE for s in size):
        raise ValueError(f"{name} must be two positive multiples of {BOX_STRIDE} (h, w), got {size!r}")
    return int(size[0]), int(size[1])



PART_FUNCTIONS = {"labeled": labeled_batch, "unlabeled": unlabeled_batch}  # a train set's decode + augment


def augment_part(
    part: str, batch: dict[str, np.ndarray], *, seed: int, domain: str, rank: int, index: int, **kwargs
) -> dict[str, np.ndarray]:
    """The `index`-th batch of `domain`'s `part` set on `rank`, decoded and augmented from its own streams:
    labeled_aug for labeled crops; unlabeled_pair (geometry) and unlabeled_photo (colours) for crop pairs."""
    keys = {"domain": domain, "rank": rank, "index": index}
    if part == "labeled":
        return labeled_batch(batch, rng=streams.generator(seed, "labeled_aug", **keys), **kwargs)
    if part == "unlabeled":
        return unlabeled_batch(
            batch, rng=streams.generator(seed, "unlabeled_pair", **keys),
            photo_rng=streams.generator(seed, "unlabeled_photo", **keys), **kwargs,
        )  # fmt: skip
    raise ValueError(f"part must be one of {sorted(PART_FUNCTIONS)}, got {part!r}")


def part_kwargs(
    *,
    crop_size: Sequence[int],
    unlabeled_crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float],
    unlabeled_scale_range: Sequence[float],
) -> dict[str, dict[str, Any]]:
    """{"labeled": kwargs, "unlabeled": kwargs} of PART_FUNCTIONS (crop size and scale range of each set),
    the crops checked; the same wherever the functions run (Ray Data, the worker, Ray tasks)."""
    crop = check_crop(crop_size, "crop_size")
    crop_u = check_crop(unlabeled_crop_size or crop, "unlabeled_crop_size")
    return {
        "labeled": {"crop_size": crop, "scale_range": tuple(scale_range)},
        "unlabeled": {"crop_size": crop_u, "scale_range": tuple(unlabeled_scale_range)},
    }


def train_transforms(
    *,
    crop_size: Sequence[int],
    unlabeled_crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float],
    unlabeled_scale_range: Sequence[float],
    seed: int,
    rank: int,
) -> dict[str, Callable[..., dict[str, np.ndarray]]]:
    """{"labeled": fn, "unlabeled": fn}: the decode + augment functions of `build_domain_data`'s train sets,
    for `StepBatches(transforms=...)` when they run in the train worker (data.transforms_on: worker).
    fn(batch, domain=..., index=n) augments the n-th batch of that domain's set on this rank from its own
    streams (`augment_part`): reproducible from (seed, rank, n), and the same after a resume."""
    kwargs = part_kwargs(
        crop_size=crop_size, unlabeled_crop_size=unlabeled_crop_size, scale_range=scale_range,
        unlabeled_scale_range=unlabeled_scale_range,
    )  # fmt: skip
    return {part: functools.partial(augment_part, part, seed=seed, rank=rank, **kw) for part, kw in kwargs.items()}
