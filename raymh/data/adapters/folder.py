"""A custom dataset: `images/` + `labels/` folders and a `classes.yaml` (labels hold train ids directly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from raymh.data.adapters.base import Adapter, AdapterError, Sample, images_in, value_table
from raymh.data.labels import IGNORE_INDEX

CLASSES_FILE = "classes.yaml"
CLASSES_EXAMPLE = (
    "classes: [{name: road, color: [128, 64, 128]}, {name: car, color: [0, 0, 142]}] or classes: [road, car]"
)


@dataclass(frozen=True)
class FolderClasses:
    """The parsed `classes.yaml`: names and colours in train-id order, and the raw ignore value."""

    names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int


def generated_palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours, deterministic: the PASCAL VOC colour map from entry 1 (entry 0 is black)."""
    colours = []
    for index in range(1, n + 1):
        rgb = [0, 0, 0]
        c = index
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return colours


def _colour(value: object, where: str) -> tuple[int, int, int]:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    if not ok:
        raise AdapterError(f"{where}: color must be three integers 0..255 like [128, 64, 128], got {value!r}")
    return (value[0], value[1], value[2])


def read_classes(path: Path) -> FolderClasses:
    """Parse and check a folder dataset's `classes.yaml`; errors name the file and the bad entry."""
    if not path.is_file():
        raise AdapterError(f"folder: class file {path} not found; write it, e.g. {CLASSES_EXAMPLE}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise AdapterError(f"folder: {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or "classes" not in data:
        raise AdapterError(f"folder: {path} must be a mapping with a `classes` list, e.g. {CLASSES_EXAMPLE}")
    unknown = sorted(set(data) - {"classes", "ignore_index"})
    if unknown:
        raise AdapterError(f"folder: {path}: unknown key(s) {unknown}; allowed: classes, ignore_index")
    entries = data["classes"]
    if not isinstance(entries, list) or not entries:
        raise AdapterError(f"folder: {path}: `classes` must be a non-empty list, e.g. {CLASSES_EXAMPLE}")
    ignore = data.get("ignore_index", IGNORE_INDEX)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not len(entries) <= ignore <= 255:
        raise AdapterError(
            f"folder: {path}: ignore_index must be an integer in {len(entries)}..255 (not a class id), got {ignore!r}"
        )
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    for i, entry in enumerate(entries):
        where = f"folder: {path}: classes[{i}]"
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"name", "color"} and isinstance(entry["name"], str):
            names.append(entry["name"])
            colours.append(_colour(entry["color"], where))
        else:
            raise AdapterError(f"{where}: expected a name or {{name: ..., color: [r, g, b]}}, got {entry!r}")
        if not names[-1].strip():
            raise AdapterError(f"{where}: empty class name")
    if colours and len(colours) != len(names):
        raise AdapterError(
            f"folder: {path}: give a color for every class or for none (then they are generated)"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AdapterError(f"folder: {path}: class names must be unique; repeated: {repeated}")
    return FolderClasses(names, colours or generated_palette(len(names)), ignore)


class FolderAdapter(Adapter):
    """`images/<split>/*.{png,jpg,jpeg}` + `labels/<split>/<stem>.png` + `classes.yaml`."""

    kind = "folder"
    label_format = "trainid"
    layout = f"images/{{split}}/*.png|jpg|jpeg, labels/{{split}}/<same stem>.png and {CLASSES_FILE}"

    def read_classes(self, root: Path) -> FolderClasses:
        """The dataset's parsed `classes.yaml`."""
        return read_classes(Path(root) / CLASSES_FILE)

    def classes(self, root: Path) -> list[str]:
        return self.read_classes(root).names

    def palette(self, root: Path) -> list[tuple[int, int, int]]:
        return self.read_classes(root).palette

    def label_lut(self, root: Path) -> np.ndarray:
        spec = self.read_classes(root)
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(spec.names)] = np.arange(len(spec.names), dtype=np.uint8)
        return lut

    def label_values(self, root: Path) -> np.ndarray:
        spec = self.read_classes(root)
        return value_table([*range(len(spec.names)), spec.ignore_index])

    def default_domain(self, root: Path) -> str:
        return Path(root).resolve().name

    def _list(self, root: Path, split: str) -> list[Sample]:
        self.read_classes(root)  # a missing or malformed class file is reported before any sample
        labels = root / "labels" / split
        return [
            Sample(self.id_from_image(image), image, labels / f"{image.stem}.png")
            for image in images_in(root / "images" / split)
        ]
