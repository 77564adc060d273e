"""Cityscapes' official label table (cityscapesScripts `labels.py`), as data.

The 34 label ids of `*_gtFine_labelIds.png` map to 19 train ids; every other id maps to 255 (ignore).
Synscapes uses the same label ids; BDD100K's 10k semantic masks are already in train ids.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from raymh.conventions import IGNORE_INDEX


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


CITYSCAPES_LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    # id -1 ("license plate") is never written to labelIds PNGs.
)

NUM_LABEL_IDS = 34
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    lab.name for lab in sorted(CITYSCAPES_LABELS, key=lambda lab: lab.train_id) if lab.train_id != IGNORE_INDEX
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    lab.color for lab in sorted(CITYSCAPES_LABELS, key=lambda lab: lab.train_id) if lab.train_id != IGNORE_INDEX
)
# name -> label id and name -> train id, for code that draws or checks labels by name.
LABEL_ID = {lab.name: lab.id for lab in CITYSCAPES_LABELS}
TRAIN_ID = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}


def label_id_to_train_id_lut() -> np.ndarray:
    """A 256-entry uint8 table: label id -> train id; ids outside the table -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.train_id
    return lut
