"""Cityscapes (gtFine): 34 label ids -> 19 train ids by the official table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raymh.data.adapters.base import Adapter, Sample, value_table
from raymh.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, NUM_LABEL_IDS, label_id_to_train_id_lut


class CityscapesAdapter(Adapter):
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelIds.png`."""

    kind = "cityscapes"
    label_format = "cityscapes"
    layout = "leftImg8bit/{split}/<city>/*_leftImg8bit.png and gtFine/{split}/<city>/*_gtFine_labelIds.png"
    image_suffix = "_leftImg8bit"

    def classes(self, root: Path) -> list[str]:
        return list(CITYSCAPES_CLASSES)

    def palette(self, root: Path) -> list[tuple[int, int, int]]:
        return list(CITYSCAPES_PALETTE)

    def label_lut(self, root: Path) -> np.ndarray:
        return label_id_to_train_id_lut()

    def label_values(self, root: Path) -> np.ndarray:
        return value_table(range(NUM_LABEL_IDS))

    def _list(self, root: Path, split: str) -> list[Sample]:
        found = []
        for image in (root / "leftImg8bit" / split).glob(f"*/*{self.image_suffix}.png"):
            sample_id = self.id_from_image(image)  # <city>_<seq>_<frame>
            label = root / "gtFine" / split / image.parent.name / f"{sample_id}_gtFine_labelIds.png"
            found.append(Sample(sample_id, image, label))
        return found
