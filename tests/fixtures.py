"""Tiny datasets in each kind's native layout, built with numpy + Pillow in a test's tmp_path.

Each builder returns {"root": Path, "samples": {split: {id: {"image": Path, "label": Path, "raw": array}}}}
where "raw" is the label as stored on disk (before the label map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from raymh.data.labels import NUM_LABEL_IDS

SIZE = (16, 32)  # (H, W)
# Written at the start of row 0 of every Cityscapes-style label, so specific ids are always present.
CITYSCAPES_PROBE = (7, 26, 1, 33, 0, 24)


def _rgb(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _add(out: dict, split: str, sample_id: str, image: Path, label: Path, raw: np.ndarray) -> None:
    out["samples"].setdefault(split, {})[sample_id] = {"image": image, "label": label, "raw": raw}


def _cityscapes_ids(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    raw = rng.integers(0, NUM_LABEL_IDS, size=size, dtype=np.uint8)
    raw[0, : len(CITYSCAPES_PROBE)] = CITYSCAPES_PROBE
    return raw


def make_cityscapes(root: Path, *, train: int = 2, val: int = 1, size=SIZE, seed: int = 0) -> dict[str, Any]:
    """`leftImg8bit/<split>/<city>/<id>_leftImg8bit.png` + `gtFine/.../<id>_gtFine_labelIds.png`."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"root": root, "samples": {}}
    for split, n, city in (("train", train, "aachen"), ("val", val, "frankfurt")):
        for i in range(n):
            sample_id = f"{city}_{i:06d}_{19 + i:06d}"
            image = _save(
                root / "leftImg8bit" / split / city / f"{sample_id}_leftImg8bit.png", _rgb(rng, size)
            )
            raw = _cityscapes_ids(rng, size)
            label = _save(root / "gtFine" / split / city / f"{sample_id}_gtFine_labelIds.png", raw)
            _add(out, split, sample_id, image, label, raw)
    return out


def make_bdd100k(root: Path, *, train: int = 2, val: int = 1, size=SIZE, seed: int = 0) -> dict[str, Any]:
    """`images/10k/<split>/<id>.jpg` + `labels/sem_seg/masks/<split>/<id>.png` (train ids and 255)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"root": root, "samples": {}}
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            sample_id = f"{split[0]}{i:03d}abc-{seed:04d}"
            image = _save(root / "images" / "10k" / split / f"{sample_id}.jpg", _rgb(rng, size), quality=90)
            raw = rng.choice(np.array([*range(19), 255], dtype=np.uint8), size=size)
            label = _save(root / "labels" / "sem_seg" / "masks" / split / f"{sample_id}.png", raw)
            _add(out, split, sample_id, image, label, raw)
    return out


def make_synscapes(root: Path, *, n: int = 5, size=SIZE, seed: int = 0, order=None) -> dict[str, Any]:
    """`img/rgb/<n>.png` + `img/class/<n>.png` (Cityscapes label ids); all under split "all"."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"root": root, "samples": {}}
    for i in order if order is not None else range(1, n + 1):
        image = _save(root / "img" / "rgb" / f"{i}.png", _rgb(rng, size))
        raw = _cityscapes_ids(rng, size)
        label = _save(root / "img" / "class" / f"{i}.png", raw)
        _add(out, "all", str(i), image, label, raw)
    return out


FOLDER_CLASSES = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "lane marking", "color": [255, 255, 255]},
    {"name": "curb", "color": [196, 196, 196]},
    {"name": "vehicle", "color": [0, 0, 142]},
    {"name": "pedestrian", "color": [220, 20, 60]},
    {"name": "vegetation", "color": [107, 142, 35]},
    {"name": "sky", "color": [70, 130, 180]},
]


def write_classes(root: Path, content: Any) -> Path:
    """Write `classes.yaml` (a dict dumped as YAML, or raw text)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "classes.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def make_folder(
    root: Path, *, train: int = 2, val: int = 1, size=SIZE, seed: int = 0, names_only: bool = False,
    ignore_index: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`images/<split>/<id>.png|jpg` + `labels/<split>/<id>.png` (train ids) + a 7-class `classes.yaml`."""
    rng = np.random.default_rng(seed)
    spec: dict[str, Any] = {"classes": [c["name"] for c in FOLDER_CLASSES] if names_only else FOLDER_CLASSES}
    if ignore_index is not None:
        spec["ignore_index"] = ignore_index
    write_classes(root, spec)
    ignore = 255 if ignore_index is None else ignore_index
    out: dict[str, Any] = {"root": root, "samples": {}}
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            sample_id = f"{split}_{i}"
            ext = "jpg" if i % 2 else "png"
            image = _save(root / "images" / split / f"{sample_id}.{ext}", _rgb(rng, size))
            raw = rng.choice(np.array([*range(len(FOLDER_CLASSES)), ignore], dtype=np.uint8), size=size)
            label = _save(root / "labels" / split / f"{sample_id}.png", raw)
            _add(out, split, sample_id, image, label, raw)
    return out


BUILDERS = {
    "cityscapes": make_cityscapes,
    "bdd100k": make_bdd100k,
    "synscapes": make_synscapes,
    "folder": make_folder,
}
