"""Render the three synthetic domains in Cityscapes', BDD100K's and Synscapes' native layouts and encodings."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from raymh.data.labels import CITYSCAPES_LABELS, label_id_to_train_id_lut
from raymh.data.synth.compose import draw_scene
from raymh.data.synth.look import colourise
from raymh.data.synth.materials import LABEL_OF

DOMAINS = ("cityscapes", "bdd100k", "synscapes")
SPLITS = ("train", "val", "all")  # "all": Synscapes ships no split (its adapter makes a seeded one)
CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}
PNG_LEVEL = 1  # fixed zlib level: fast, and the same bytes for the same pixels
JPEG_QUALITY = 80  # fixed, with 4:2:0 subsampling, like BDD100K's JPEGs
_TRAIN_ID = label_id_to_train_id_lut()
# Cityscapes' classes with instances (person .. bicycle, label ids 24-33): *_gtFine_instanceIds.png holds
# label_id * 1000 + instance index on their pixels and the plain label id elsewhere.
FIRST_INSTANCE_ID = 24
_COLOUR = np.zeros((256, 3), dtype=np.uint8)
for _lab in CITYSCAPES_LABELS:
    _COLOUR[_lab.id] = _lab.color


def instance_ids(label_ids: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Cityscapes-style instance ids (uint16): each object of an instance class (a connected run of one label at
    one depth code, as the renderer draws objects) gets label_id * 1000 + its index within the class."""
    out = label_ids.astype(np.uint16)
    mask = label_ids >= FIRST_INSTANCE_ID
    if mask.any():
        keys, inverse = np.unique(label_ids[mask].astype(np.int32) * 256 + depth[mask], return_inverse=True)
        labels = keys // 256
        index = np.zeros_like(keys)
        for lab in np.unique(labels):
            index[labels == lab] = np.arange(int((labels == lab).sum()))
        out[mask] = (labels * 1000 + index)[inverse.reshape(-1)].astype(np.uint16)
    return out


def _rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: seeded from (seed, domain, split, index) only, so images are independent."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, DOMAINS.index(domain),
                                                                        SPLITS.index(split), index])))  # fmt: skip


def render_sample(
    domain: str, *, index: int, split: str = "train", size: tuple[int, int] = (256, 512), seed: int = 0
) -> dict:
    """One scene of a domain: {"image" HxWx3 uint8, "label_ids" HxW uint8 (Cityscapes ids), "instance_ids"
    HxW uint16, "train_ids", "condition", "kind"}; the same arguments always give the same arrays."""
    _check_domain(domain)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = _rng(seed, domain, split, index)
    scene = draw_scene(rng, size, ego_hood=domain != "synscapes", border=domain == "cityscapes")
    arrays = scene["canvas"].arrays()
    coloured = colourise(arrays, domain=domain, horizon=scene["camera"].cy, rng=rng)
    label_ids = LABEL_OF[arrays["mat"]]
    return {
        "image": coloured["image"],
        "label_ids": label_ids,
        "instance_ids": instance_ids(label_ids, arrays["depth"]),
        "train_ids": _TRAIN_ID[label_ids],
        "condition": coloured["condition"],
        "kind": scene["kind"],
    }


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_LEVEL)


def _jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)


def _bdd_id(seed: int, split: str, index: int) -> str:
    """A BDD100K-style id ('0a1b2c3d-4e5f6a7b'), stable for (seed, split, index)."""
    digest = hashlib.sha256(f"raymh-synth:{seed}:{split}:{index}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:16]}"


def _write(domain: str, root: Path, split: str, index: int, sample: dict, seed: int) -> None:
    """Write one sample in the domain's native layout and label encoding."""
    if domain == "cityscapes":
        cities = CITIES[split]
        city = cities[index % len(cities)]
        stem = f"{city}_{index // len(cities):06d}_{19:06d}"
        _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", sample["image"])
        gt = root / "gtFine" / split / city
        _png(gt / f"{stem}_gtFine_labelIds.png", sample["label_ids"])
        # as the real dataset ships them, so cityscapesScripts' tools (evalPixelLevelSemanticLabeling) run on it
        _png(gt / f"{stem}_gtFine_instanceIds.png", sample["instance_ids"])
        _png(gt / f"{stem}_gtFine_color.png", _COLOUR[sample["label_ids"]])
    elif domain == "bdd100k":
        stem = _bdd_id(seed, split, index)
        _jpeg(root / "images" / "10k" / split / f"{stem}.jpg", sample["image"])
        _png(root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png", sample["train_ids"])
    else:
        _png(root / "img" / "rgb" / f"{index}.png", sample["image"])
        _png(root / "img" / "class" / f"{index}.png", sample["label_ids"])


_DIRS = {
    "cityscapes": ("leftImg8bit", "gtFine"),
    "bdd100k": ("images/10k", "labels/sem_seg/masks"),
    "synscapes": ("img/rgb", "img/class"),
}


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {DOMAINS}")


def render_dataset(
    out: Path,
    *,
    images: int = 24,
    val_images: int = 8,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    domains: Sequence[str] = DOMAINS,
    overwrite: bool = False,
) -> dict:
    """Render `images` train and `val_images` val scenes per domain under out/<domain> (docs/data.md).

    Cityscapes and BDD100K get train/val folders; Synscapes gets images + val_images scenes numbered 1..K.
    A non-empty out/<domain> is an error unless `overwrite` (files are then replaced, never deleted).
    Returns a summary: per-domain root, folders, counts and conditions; images written and images/s.
    """
    out = Path(out)
    if images < 1 or val_images < 0:
        raise ValueError(
            f"images must be >= 1 and val_images >= 0, got images={images}, val_images={val_images}"
        )
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size must be (height, width) with both >= 32, got {tuple(size)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for domain in domains:
        _check_domain(domain)
        root = out / domain
        if not overwrite and root.is_dir() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} is not empty; render into another `out`, remove it, or pass overwrite=True"
            )
    summary: dict = {"out": str(out), "seed": seed, "size": [h, w], "domains": {}}
    start, written = time.perf_counter(), 0
    for domain in domains:
        root = out / domain
        plan = [("all", i) for i in range(1, images + val_images + 1)] if domain == "synscapes" else (
            [("train", i) for i in range(images)] + [("val", i) for i in range(val_images)])  # fmt: skip
        conditions: Counter[str] = Counter()
        for split, index in plan:
            sample = render_sample(domain, index=index, split=split, size=(h, w), seed=seed)
            _write(domain, root, split, index, sample, seed)
            conditions[sample["condition"]] += 1
        written += len(plan)
        image_dir, label_dir = _DIRS[domain]
        summary["domains"][domain] = {
            "root": str(root),
            "images": str(root / image_dir),
            "labels": str(root / label_dir),
            "counts": dict(Counter(split for split, _ in plan)),
            "conditions": dict(sorted(conditions.items())),
        }
    seconds = time.perf_counter() - start
    summary.update(
        images_written=written, seconds=round(seconds, 3), images_per_s=round(written / seconds, 2)
    )
    return summary
