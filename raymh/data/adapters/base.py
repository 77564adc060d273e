"""The adapter contract: how one dataset kind is listed, split and mapped to train ids (docs/data.md)."""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from raymh.data.labels import IGNORE_INDEX
from raymh.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class AdapterError(InputError):
    """A dataset root, split or class file that an adapter cannot read as its kind."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file (None: an unlabeled-only sample)."""

    id: str
    image: Path
    label: Path | None


class Adapter(abc.ABC):
    """Reads one dataset kind in its native layout and maps its label encoding to train ids (0..C-1, 255)."""

    kind: ClassVar[str]
    layout: ClassVar[str]  # the expected layout, shown in errors
    image_suffix: ClassVar[str] = ""  # stripped from an image file's stem to give its id
    # How this kind's own label files encode classes, and so the format `raymh predict` writes by default:
    # "cityscapes" (Cityscapes label ids), "bdd100k" (train ids named after the image) or "trainid".
    label_format: ClassVar[str] = "trainid"

    ignore_index: ClassVar[int] = IGNORE_INDEX

    # ------------------------------------------------------------------ classes and label map
    @abc.abstractmethod
    def classes(self, root: Path) -> list[str]:
        """Class names in train-id order."""

    @abc.abstractmethod
    def palette(self, root: Path) -> list[tuple[int, int, int]]:
        """One RGB colour per class, in train-id order."""

    @abc.abstractmethod
    def label_lut(self, root: Path) -> np.ndarray:
        """A uint8 table of 256 entries: raw label value -> train id (255: ignore)."""

    @abc.abstractmethod
    def label_values(self, root: Path) -> np.ndarray:
        """A bool table of 256 entries: True where a raw label value is in the label map (may map to 255)."""

    # ------------------------------------------------------------------ samples and splits
    def splits(self, root: Path) -> list[str]:
        """The splits this kind ships with."""
        return ["train", "val"]

    def split_info(self, root: Path) -> dict[str, Any]:
        """How the splits were made, recorded in the prepared manifest."""
        return {"rule": "official"}

    def default_domain(self, root: Path) -> str:
        """The domain name used when none is given."""
        return self.kind

    def id_from_image(self, path: str | Path) -> str:
        """A sample id from its image file name: the stem, less this kind's `image_suffix`."""
        stem = Path(path).stem
        if self.image_suffix and stem.endswith(self.image_suffix):
            stem = stem[: -len(self.image_suffix)]
        return stem

    @abc.abstractmethod
    def _list(self, root: Path, split: str) -> list[Sample]:
        """Every sample of one split, in any order (may be empty)."""

    def samples(self, root: str | Path, split: str) -> list[Sample]:
        """Every sample of one split, sorted by id; errors name the root and the expected layout."""
        root = Path(root)
        known = self.splits(root)
        if split not in known:
            raise AdapterError(f"{self.kind}: unknown split {split!r}; this kind has {known}")
        layout = self.layout.format(split=split)
        if not root.is_dir():
            raise AdapterError(
                f"{self.kind}: dataset root {root} is not a directory; expected {layout} under it"
            )
        found = sorted(self._list(root, split), key=lambda s: s.id)
        if not found:
            raise AdapterError(f"{self.kind}: no {split!r} samples found under {root}; expected {layout}")
        repeated = sorted(i for i, n in Counter(s.id for s in found).items() if n > 1)
        if repeated:
            paths = [str(s.image) for s in found if s.id == repeated[0]]
            raise AdapterError(
                f"{self.kind}: {len(repeated)} sample id(s) appear more than once in {split!r} under {root}, "
                f"e.g. {repeated[0]!r} from {paths}; keep one image per id"
            )
        return found


def images_in(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside `folder` (none if it is absent), by extension, case-insensitive."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions]


def value_table(values: range | list[int]) -> np.ndarray:
    """A bool table of 256 entries, True at `values`."""
    table = np.zeros(256, dtype=bool)
    table[list(values)] = True
    return table
