"""BDD100K, 10k semantic-segmentation split: masks already hold the 19 Cityscapes train ids and 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raymh.data.adapters.base import Adapter, Sample, images_in, value_table
from raymh.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX


class BDD100KAdapter(Adapter):
    """`images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png` (same stem)."""

    kind = "bdd100k"
    label_format = "bdd100k"
    layout = "images/10k/{split}/*.jpg and labels/sem_seg/masks/{split}/<same name>.png"

    def classes(self, root: Path) -> list[str]:
        return list(CITYSCAPES_CLASSES)

    def palette(self, root: Path) -> list[tuple[int, int, int]]:
        return list(CITYSCAPES_PALETTE)

    def label_lut(self, root: Path) -> np.ndarray:
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(CITYSCAPES_CLASSES)] = np.arange(len(CITYSCAPES_CLASSES), dtype=np.uint8)
        return lut

    def label_values(self, root: Path) -> np.ndarray:
        return value_table([*range(len(CITYSCAPES_CLASSES)), IGNORE_INDEX])

    def _list(self, root: Path, split: str) -> list[Sample]:
        masks = root / "labels" / "sem_seg" / "masks" / split
        return [
            Sample(self.id_from_image(image), image, masks / f"{image.stem}.png")
            for image in images_in(root / "images" / "10k" / split, (".jpg", ".jpeg"))
        ]
