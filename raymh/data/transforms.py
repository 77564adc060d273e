"""Per-sample decoding and augmentation (numpy + Pillow, an explicit `np.random.Generator` per call).

Three pipelines (docs/method.md): labeled images get scale / pad / crop / flip
(`scale_crop_flip`); unlabeled images get two overlapping crops of one rescaled image with their overlap
boxes (`overlap_crop_pair`, the DCLoss input); validation images are decoded untouched or resized to a fixed
size (`val_resize`). Arrays are HWC uint8 images and HW uint8 train-id labels (255 = ignore).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from raymh.conventions import FEATURE_STRIDE, IGNORE_INDEX

MEAN_COLOR = (124, 116, 104)  # ImageNet mean in 0..255: the fill for padded image pixels
BOX_STRIDE = FEATURE_STRIDE  # overlap boxes fall on the projected features' grid (docs/method.md)


# ---------------------------------------------------------------------------------------------- decoding
def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded PNG/JPEG bytes to an (H, W, 3) uint8 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises several types; one clear message
        raise ValueError(f"cannot decode image bytes ({len(data)} bytes): {err}") from err


def decode_label(data: bytes) -> np.ndarray:
    """Decode PNG bytes of train ids (mode 'L', or 'P' read as raw indices) to an (H, W) uint8 array."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:
        raise ValueError(f"cannot decode label bytes ({len(data)} bytes): {err}") from err
    if img.mode not in ("L", "P"):
        raise ValueError(
            f"label PNG has mode {img.mode!r}; expected 8-bit train ids in mode 'L' (re-run `raymh data prepare`)"
        )
    return np.asarray(img, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- helpers
def _check_size(size: Sequence[int], *, name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{name} must be two positive ints (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def _check_range(values: Sequence[float], *, name: str, low: float) -> tuple[float, float]:
    if len(values) != 2 or not (low < values[0] <= values[1]):
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max, got {values!r}")
    return float(values[0]), float(values[1])


def _resize(array: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resize an HWC image (bilinear) or HW label (nearest) to size (h, w)."""
    if array.shape[:2] == size:
        return array
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), method))


def _random_rescale(image: np.ndarray, label: np.ndarray | None, *, rng: np.random.Generator, scale_range):
    scale = rng.uniform(*scale_range)
    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    image = _resize(image, size, nearest=False)
    label = None if label is None else _resize(label, size, nearest=True)
    return image, label


def _pad_to(array: np.ndarray, size: tuple[int, int], *, fill) -> np.ndarray:
    """Pad bottom/right to at least size (h, w) with a constant fill."""
    h, w = array.shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph == 0 and pw == 0:
        return array
    out = np.empty((h + ph, w + pw, *array.shape[2:]), dtype=array.dtype)
    out[...] = np.asarray(fill, dtype=array.dtype)
    out[:h, :w] = array
    return out


# ------------------------------------------------------------------------------------------------ labeled
def scale_crop_flip(
    image: np.ndarray,
    label: np.ndarray,
    *,
    rng: np.random.Generator,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Labeled augmentation (docs/method.md, recipe): random scale, pad (mean colour / 255), crop, flip."""
    crop = _check_size(crop_size, name="crop_size")
    scale_range = _check_range(scale_range, name="scale_range", low=0.0)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    image, label = _random_rescale(image, label, rng=rng, scale_range=scale_range)
    image = _pad_to(image, crop, fill=MEAN_COLOR)
    label = _pad_to(label, crop, fill=IGNORE_INDEX)
    y = int(rng.integers(0, image.shape[0] - crop[0] + 1))
    x = int(rng.integers(0, image.shape[1] - crop[1] + 1))
    image = image[y : y + crop[0], x : x + crop[1]]
    label = label[y : y + crop[0], x : x + crop[1]]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


# --------------------------------------------------------------------------------------------- photometric
def _color_jitter(
    img: Image.Image, *, rng: np.random.Generator, strength=(0.4, 0.4, 0.4, 0.1)
) -> Image.Image:
    """torchvision ColorJitter semantics: brightness/contrast/saturation factors, hue shift, random order."""
    b, c, s, h = strength
    for op in rng.permutation(4):
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(1 - b, 1 + b))
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(rng.uniform(1 - c, 1 + c))
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(rng.uniform(1 - s, 1 + s))
        else:
            shift = int(round(rng.uniform(-h, h) * 255))
            hsv = np.array(img.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift).astype(np.uint8)  # wraps mod 256
            img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img


def photometric_augment(image: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Per-crop photometric augmentation (docs/method.md, DCLoss item 1): jitter p0.8, grey p0.2, blur p0.5."""
    img = Image.fromarray(image)
    if rng.random() < 0.8:
        img = _color_jitter(img, rng=rng)
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- unlabeled
def overlap_box(offset: tuple[int, int], crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Overlap of two equal crops whose top-left corners differ by offset=(dy, dx) (crop 2 minus crop 1).

    Returns ([y0, x0, y1, x1] in crop 1's frame, the same in crop 2's frame), both int32, end-exclusive.
    """
    dy, dx = offset
    h, w = crop
    box1 = np.array([max(0, dy), max(0, dx), min(h, h + dy), min(w, w + dx)], dtype=np.int32)
    box2 = box1 - np.array([dy, dx, dy, dx], dtype=np.int32)
    return box1, box2


def crop_iou(offset: tuple[int, int], crop: tuple[int, int]) -> float:
    """IoU of two equal-size crops offset by (dy, dx)."""
    h, w = crop
    inter = max(0, h - abs(offset[0])) * max(0, w - abs(offset[1]))
    return inter / (2 * h * w - inter)


def _draw_offset(
    pos1: tuple[int, int],
    padded: tuple[int, int],
    crop: tuple[int, int],
    *,
    rng: np.random.Generator,
    iou_range: tuple[float, float],
    tries: int,
    stride: int,
) -> tuple[int, int]:
    """Crop 2's offset from crop 1, in multiples of stride, drawn until the IoU is in iou_range."""
    bounds = []
    for p, size, c in zip(pos1, padded, crop, strict=True):
        # feasible k: 0 <= p + k*stride <= size - c; offsets with |k*stride| >= c cannot overlap at all,
        # so they are left out of the draw (same accepted distribution, far fewer rejections).
        lo = max(-((p) // stride), -((c - 1) // stride))
        hi = min((size - c - p) // stride, (c - 1) // stride)
        bounds.append((lo, hi))
    for _ in range(tries):
        offset = tuple(int(rng.integers(lo, hi + 1)) * stride for lo, hi in bounds)
        if iou_range[0] <= crop_iou(offset, crop) <= iou_range[1]:
            return offset
    return (0, 0)


def overlap_crop_pair(
    image: np.ndarray,
    *,
    rng: np.random.Generator,
    label: np.ndarray | None = None,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.8, 2.0),
    iou_range: Sequence[float] = (0.1, 1.0),
    tries: int = 50,
    stride: int = BOX_STRIDE,
    photometric: bool = True,
    photo_rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray | bool]:
    """Two overlapping crops of one rescaled image with their overlap boxes (docs/method.md, DCLoss item 1).

    Boxes are [y0, x0, y1, x1] (end-exclusive) in each crop's own frame before its flip, multiples of
    stride. image1/2 and valid1/2 are as fed to the network, i.e. flipped when flip1/2 is True.
    label: the image's true train ids, when it has them: cut alongside as label1/2 (padding 255), for
    diagnostics only (the accuracy of the pseudo-labels); training never reads them.
    photo_rng: the generator of the photometric augmentation (default `rng`): the pair's geometry and its
    colours then come from separate streams (`raymh.streams`: unlabeled_pair, unlabeled_photo).
    """
    crop = _check_size(crop_size, name="crop_size")
    if crop[0] % stride or crop[1] % stride:
        raise ValueError(
            f"crop_size {crop} must be a multiple of {stride} so overlap boxes fall on the stride-{stride} "
            f"feature grid; use e.g. {tuple(stride * max(1, round(c / stride)) for c in crop)}"
        )
    scale_range = _check_range(scale_range, name="scale_range", low=0.0)
    iou_range = _check_range(iou_range, name="iou_range", low=-1e-12)
    if label is not None and image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    image, label = _random_rescale(image, label, rng=rng, scale_range=scale_range)
    h, w = image.shape[:2]
    valid = _pad_to(np.ones((h, w), dtype=bool), crop, fill=False)
    image = _pad_to(image, crop, fill=MEAN_COLOR)
    label = None if label is None else _pad_to(label, crop, fill=IGNORE_INDEX)
    padded = image.shape[:2]
    pos1 = (int(rng.integers(0, padded[0] - crop[0] + 1)), int(rng.integers(0, padded[1] - crop[1] + 1)))
    offset = _draw_offset(pos1, padded, crop, rng=rng, iou_range=iou_range, tries=tries, stride=stride)
    pos2 = (pos1[0] + offset[0], pos1[1] + offset[1])
    box1, box2 = overlap_box(offset, crop)
    out: dict[str, np.ndarray | bool] = {"box1": box1, "box2": box2}
    for i, (y, x) in ((1, pos1), (2, pos2)):
        img = image[y : y + crop[0], x : x + crop[1]]
        mask = valid[y : y + crop[0], x : x + crop[1]]
        lab = None if label is None else label[y : y + crop[0], x : x + crop[1]]
        flip = bool(rng.random() < 0.5)
        if flip:
            img, mask = img[:, ::-1], mask[:, ::-1]
            lab = None if lab is None else lab[:, ::-1]
        img = np.ascontiguousarray(img)
        if photometric:
            img = photometric_augment(img, rng=rng if photo_rng is None else photo_rng)
        out[f"image{i}"], out[f"valid{i}"], out[f"flip{i}"] = img, np.ascontiguousarray(mask), flip
        if lab is not None:
            out[f"label{i}"] = np.ascontiguousarray(lab)
    return out


# ------------------------------------------------------------------------------------------------------ val
def val_resize(
    image: np.ndarray, label: np.ndarray | None, *, size: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validation: untouched, or resized to a fixed size (h, w) (image bilinear, label nearest)."""
    if size is None:
        return image, label
    size = _check_size(size, name="val_size")
    return _resize(image, size, nearest=False), None if label is None else _resize(label, size, nearest=True)
