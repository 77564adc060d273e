"""Draw docs/figures/crop_pair.png: one DCLoss crop pair cut by raymh's own `overlap_crop_pair`.

Run from the repository root: `.venv/bin/python docs/figures/crop_pair.py`. Panels, left to right: crop 1
and crop 2 as the network sees them (flips and photometric augmentation included) with their overlap box
in red and its stride-8 cells; then the overlap cut from each crop with its flip undone: the same image
cells, which become the aligned anchors a1, a2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from raymh.data.synth import render_sample
from raymh.data.transforms import BOX_STRIDE, overlap_crop_pair

OUT = Path(__file__).with_suffix(".png")
CROP = (160, 160)
ZOOM = 2
GAP = 12


def _box_as_fed(box: np.ndarray, flip: bool, width: int) -> tuple[int, int, int, int]:
    """[y0, x0, y1, x1] in the unflipped frame -> (x0, y0, x1, y1) in the frame fed to the network."""
    y0, x0, y1, x1 = (int(v) for v in box)
    if flip:
        x0, x1 = width - x1, width - x0
    return x0, y0, x1, y1


def _panel(image: np.ndarray, box: tuple[int, int, int, int] | None) -> Image.Image:
    img = Image.fromarray(image).resize((image.shape[1] * ZOOM, image.shape[0] * ZOOM), Image.NEAREST)
    if box is not None:
        draw = ImageDraw.Draw(img)
        x0, y0, x1, y1 = (v * ZOOM for v in box)
        for x in range(x0, x1, BOX_STRIDE * ZOOM):
            draw.line([(x, y0), (x, y1)], fill=(255, 200, 200), width=1)
        for y in range(y0, y1, BOX_STRIDE * ZOOM):
            draw.line([(x0, y), (x1, y)], fill=(255, 200, 200), width=1)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(230, 0, 0), width=3)
    return img


def main() -> None:
    scene = render_sample("cityscapes", index=3, size=(256, 512), seed=0)["image"]
    rng = np.random.default_rng(2)
    pair = overlap_crop_pair(scene, rng=rng, crop_size=CROP, scale_range=(1.0, 1.0), iou_range=(0.25, 0.5))
    panels = []
    for k in (1, 2):
        panels.append(_panel(pair[f"image{k}"], _box_as_fed(pair[f"box{k}"], bool(pair[f"flip{k}"]), CROP[1])))
    for k in (1, 2):
        image = pair[f"image{k}"][:, ::-1] if pair[f"flip{k}"] else pair[f"image{k}"]
        y0, x0, y1, x1 = (int(v) for v in pair[f"box{k}"])
        panels.append(_panel(np.ascontiguousarray(image[y0:y1, x0:x1]), None))
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + GAP
    canvas.save(OUT, optimize=True)
    print(f"wrote {OUT} (flips: crop 1 {pair['flip1']}, crop 2 {pair['flip2']}; boxes {pair['box1'].tolist()} "
          f"{pair['box2'].tolist()})")


if __name__ == "__main__":
    main()
