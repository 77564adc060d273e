"""Run artifacts: prediction panels (input | ground truth | prediction), confusion matrices as CSV and PNG."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from raymh.data.labels import IGNORE_INDEX


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H,W) train ids -> (H,W,3) uint8 colours; the ignore index is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[IGNORE_INDEX] = 0
    return lut[label.astype(np.uint8)]


def prediction_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette) -> np.ndarray:
    """One row: the input (H,W,3 uint8), its ground truth and the prediction, side by side with 4-px gaps."""
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, colorize(label, palette), gap, colorize(pred, palette)], axis=1)


def save_panels(rows: list[np.ndarray], path: Path) -> Path:
    """Stack panel rows vertically into one PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)
    return path


def save_confusion(mat: np.ndarray, classes: Sequence[str], directory: Path, stem: str) -> list[Path]:
    """`<stem>.csv` (raw counts, rows = ground truth) and `<stem>.png` (row-normalised heat map)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gt\\pred", *classes])
        for name, row in zip(classes, mat.tolist(), strict=True):
            writer.writerow([name, *row])
    rows = mat.sum(1, keepdims=True).astype(np.float64)
    norm = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=np.float64), where=rows > 0)
    cell, margin = 16, 110
    n = len(classes)
    img = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        draw.text((2, margin + i * cell + 3), classes[i][:16], fill="black")
        for j in range(n):
            v = int(255 * (1 - norm[i, j]))
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(v, v, 255))
    for j in range(n):  # column labels: the first letters, top-down
        for k, ch in enumerate(classes[j][:9]):
            draw.text((margin + j * cell + 4, 2 + k * 11), ch, fill="black")
    png_path = directory / f"{stem}.png"
    img.save(png_path)
    return [csv_path, png_path]


def save_predictions(items: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], palette, directory: Path) -> Path:
    """Raw (id, image, label, prediction) triplets of one domain as PNGs, `<id>.image.png`, `<id>.label.png`,
    `<id>.pred.png` (train ids, mode L), with `palette.json`: what figures comparing runs are drawn from."""
    directory.mkdir(parents=True, exist_ok=True)
    for sample_id, image, label, pred in items:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", sample_id)
        Image.fromarray(image).save(directory / f"{stem}.image.png")
        Image.fromarray(label.astype(np.uint8)).save(directory / f"{stem}.label.png")
        Image.fromarray(pred.astype(np.uint8)).save(directory / f"{stem}.pred.png")
    (directory / "palette.json").write_text(json.dumps([list(map(int, c)) for c in palette]))
    return directory
