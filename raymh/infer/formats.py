"""Output formats of `raymh predict`: how a label map of train ids is named, encoded, and read back.

| format | file | pixels |
|---|---|---|
| trainid | `<stem>.png` | uint8 train ids of the domain's classes |
| color | `<stem>.png` | palette PNG: the same train ids as palette indices, shown in the domain's colours |
| overlay | `<stem>.jpg` | the image blended half and half with the colours (for looking at, not read back) |
| cityscapes | `<city>_<seq>_<frame>_pred.png` | Cityscapes label ids, as `evalPixelLevelSemanticLabeling` reads |
| bdd100k | `<stem>.png` | BDD100K's train ids (the 19 Cityscapes classes), named after the image as its tools read |

Classes are matched by name: `cityscapes` and `bdd100k` need a domain whose classes are Cityscapes' (any
dataset kind), and say so when they are not.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from raymh.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX, LABEL_ID

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class OutputFormat:
    name: str
    suffix: str  # appended to the image's stem
    readable: bool = True  # decode() gives the train ids back

    def relpath(self, rel: str) -> str:
        """The output path (relative to --out) of an input at relative path `rel`."""
        p = PurePosixPath(rel)
        stem = p.stem if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp") else p.name
        if self.name == "cityscapes" and stem.endswith(CITYSCAPES_IMAGE_SUFFIX):
            stem = stem[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        return str(p.with_name(stem + self.suffix))

    def check(self, domain: str, info: dict[str, Any]) -> None:
        """Raise ValueError when this format cannot express the domain's classes."""
        if self.name in ("cityscapes", "bdd100k"):
            classes = list(info["classes"])
            if self.name == "bdd100k" and classes != list(CITYSCAPES_CLASSES):
                raise ValueError(
                    f"--format bdd100k writes BDD100K's train ids (the 19 Cityscapes classes in order); domain "
                    f"{domain!r} has {len(classes)} classes {classes[:5]}...; use --format trainid or color"
                )
            unknown = [c for c in classes if c not in LABEL_ID]
            if unknown:
                raise ValueError(
                    f"--format cityscapes writes Cityscapes label ids; domain {domain!r} has classes Cityscapes "
                    f"does not know: {unknown}; use --format trainid or color"
                )

    def encode(self, pred: np.ndarray, image: np.ndarray | None, info: dict[str, Any]) -> bytes:
        """The file bytes of one HxW uint8 label map of train ids (`image`: the HxWx3 input, for overlays)."""
        buf = io.BytesIO()
        if self.name in ("trainid", "bdd100k"):
            Image.fromarray(pred.astype(np.uint8), mode="L").save(buf, format="PNG")
        elif self.name == "cityscapes":
            Image.fromarray(_train_to_label_id(info)[pred], mode="L").save(buf, format="PNG")
        elif self.name == "color":
            im = Image.fromarray(pred.astype(np.uint8), mode="L").convert("P")
            im.putpalette(_palette_bytes(info))
            im.save(buf, format="PNG")
        else:  # overlay
            colours = _palette_array(info)[pred]
            blend = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours
            Image.fromarray(blend.round().clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def decode(self, data: bytes, info: dict[str, Any]) -> np.ndarray:
        """The train ids (HxW uint8) of a file this format wrote."""
        if not self.readable:
            raise ValueError(f"--format {self.name} is for viewing; it cannot be read back into class indices")
        im = Image.open(io.BytesIO(data))
        arr = np.asarray(im if im.mode in ("L", "P") else im.convert("L"))
        if self.name == "cityscapes":
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            lut[_train_to_label_id(info)[: len(info["classes"])]] = np.arange(len(info["classes"]), dtype=np.uint8)
            return lut[arr]
        return arr.astype(np.uint8)


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("trainid", ".png"),
        OutputFormat("color", ".png"),
        OutputFormat("overlay", ".jpg", readable=False),
        OutputFormat("cityscapes", "_pred.png"),
        OutputFormat("bdd100k", ".png"),
    )
}


def get_format(name: str) -> OutputFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def _train_to_label_id(info: dict[str, Any]) -> np.ndarray:
    """A 256-entry table: train id -> Cityscapes label id by class name (other values -> 0, 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    for i, name in enumerate(info["classes"]):
        lut[i] = LABEL_ID[name]
    return lut


def _palette_array(info: dict[str, Any]) -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.float32)
    pal[: len(info["palette"])] = np.asarray(info["palette"], dtype=np.float32)
    return pal


def _palette_bytes(info: dict[str, Any]) -> list[int]:
    return _palette_array(info).astype(np.uint8).reshape(-1).tolist()
