"""Colour a drawn scene: per-material colour and texture, light, weather, then each domain's camera look.

Domains differ the way the real datasets do: Cityscapes-like muted daylight, BDD100K-like varied light and
weather with motion blur (and JPEG, in the writer), Synscapes-like clean, saturated, sharp renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from raymh.data.synth import materials as M
from raymh.data.synth.canvas import depth_from_code

# condition -> (light, tint rgb, sky rgb or None, fog visibility m or None, shade contrast, glow)
CONDITIONS: dict[str, tuple] = {
    "day": (1.0, (1.0, 1.0, 1.0), None, None, 1.0, False),
    "overcast": (0.85, (0.97, 0.99, 1.03), (0.72, 0.75, 0.78), None, 0.45, False),
    "dusk": (0.55, (1.18, 0.9, 0.72), (0.86, 0.55, 0.42), None, 0.6, True),
    "night": (0.16, (0.8, 0.9, 1.3), (0.04, 0.05, 0.11), None, 0.3, True),
    "fog": (0.9, (1.0, 1.0, 1.0), (0.78, 0.79, 0.8), 70.0, 0.35, False),
}


@dataclass(frozen=True)
class Look:
    """A domain's camera and grading: condition odds, colour grading, texture strength, blur and noise."""

    conditions: tuple[tuple[str, float], ...]
    saturation: float
    contrast: float
    brightness: float
    gamma: float
    tint: tuple[float, float, float]
    texture: float  # scales every material's texture amplitudes
    noise: float  # sensor noise sigma (0-1 scale)
    blur: int  # binomial 3-tap blur passes
    sharpen: float  # unsharp-mask amount
    motion_blur: float  # probability of horizontal motion blur
    haze: float  # aerial-perspective visibility (m)
    wb_jitter: float  # per-image white-balance jitter


LOOKS: dict[str, Look] = {
    "cityscapes": Look(
        conditions=(("day", 0.6), ("overcast", 0.4)), saturation=0.7, contrast=0.82, brightness=0.92,
        gamma=1.05, tint=(0.97, 1.02, 0.97), texture=1.0, noise=0.012, blur=1, sharpen=0.0, motion_blur=0.0,
        haze=450.0, wb_jitter=0.02,
    ),
    "bdd100k": Look(
        conditions=(("day", 0.35), ("overcast", 0.15), ("dusk", 0.15), ("night", 0.2), ("fog", 0.15)),
        saturation=0.95, contrast=1.0, brightness=1.0, gamma=1.0, tint=(1.0, 1.0, 1.0), texture=1.1,
        noise=0.02, blur=0, sharpen=0.0, motion_blur=0.6, haze=300.0, wb_jitter=0.08,
    ),
    "synscapes": Look(
        conditions=(("day", 1.0),), saturation=1.45, contrast=1.15, brightness=1.04, gamma=0.95,
        tint=(1.05, 1.0, 0.94), texture=0.6, noise=0.004, blur=0, sharpen=0.7, motion_blur=0.0, haze=900.0,
        wb_jitter=0.02,
    ),
}  # fmt: skip


def _upsampled_noise(rng: np.random.Generator, h: int, w: int, factor: int) -> np.ndarray:
    """Unit-ish Gaussian noise at 1/factor resolution, bilinearly upsampled to h x w."""
    small = rng.standard_normal((h // factor + 2, w // factor + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR)) * 1.4


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur, `passes` times (edges replicated)."""
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
        img = (img[:-2] + 2 * img[1:-1] + img[2:]) * 0.25
    return img


def _motion_blur(img: np.ndarray, k: int) -> np.ndarray:
    """Horizontal box blur of k pixels (camera panning / shaking)."""
    if k < 2:
        return img
    p = np.pad(img, ((0, 0), (k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    c = np.cumsum(p, axis=1, dtype=np.float32)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    return (c[:, k:] - c[:, :-k]) / k


@lru_cache(maxsize=8)
def _patterns(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical stripes (1 x w) and a tile grid (h x w) in [-1, 1], scaled to the image width."""
    stride = max(1, w // 256)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    stripes = (((cols // stride) % 2) * 2.0 - 1.0).astype(np.float32)
    grid = -((((cols // (4 * stride)) % 4) == 0) | (((rows // (2 * stride)) % 3) == 0)).astype(np.float32)
    return stripes, grid


def _grading(look: Look, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The domain's colour grading as one affine map x -> x @ A + b (white balance, saturation, contrast)."""
    wb = np.asarray(look.tint) * (1 + look.wb_jitter * rng.standard_normal(3)) * look.brightness
    luma = np.asarray([0.299, 0.587, 0.114])
    sat = look.saturation * np.eye(3) + (1 - look.saturation) * luma[:, None] * np.ones((1, 3))
    a = np.diag(wb) @ sat * look.contrast
    return a.astype(np.float32), np.full(3, 0.5 * (1 - look.contrast), dtype=np.float32)


def colourise(
    arrays: dict[str, np.ndarray], *, domain: str, horizon: float, rng: np.random.Generator
) -> dict:
    """The image (uint8 HxWx3) of drawn canvases {"mat", "depth", "shade"}; returns {"image", "condition"}.

    Every per-pixel step before blur and noise is affine in the material colour, so light, haze and the
    domain's grading are folded into 256-entry tables and applied with one gather per field.
    """
    look = LOOKS[domain]
    mat, depth, shade = arrays["mat"], arrays["depth"], arrays["shade"]
    h, w = mat.shape
    names, odds = zip(*look.conditions, strict=True)
    condition = names[int(rng.choice(len(names), p=np.asarray(odds) / sum(odds)))]
    light, tint, sky, fog, shade_k, glow = CONDITIONS[condition]

    n = len(M.RGB)
    table = M.RGB * (1.0 + 0.08 * rng.standard_normal((n, 1)) + 0.03 * rng.standard_normal((n, 3)))
    if sky is not None:
        table[M.SKY] = np.asarray(sky) * (1 + 0.05 * rng.standard_normal(3))
    table = np.clip(table, 0.0, 1.0) ** look.gamma * np.asarray(tint) * light
    if glow:
        table[M.GLOWS] = M.GLOW_RGB[M.GLOWS]
    vis = fog if fog is not None else look.haze
    haze_rgb = np.asarray(sky if sky is not None else (0.75, 0.8, 0.86)) ** look.gamma * (
        light if fog else 1.0
    )
    a, b = _grading(look, rng)
    table = np.concatenate([table @ a, np.zeros((256 - n, 3))]).astype(np.float32)
    haze_rgb = (haze_rgb @ a).astype(np.float32)

    codes = np.arange(256, dtype=np.float32)
    haze_lut = (1.0 - np.exp(-depth_from_code(codes.astype(np.uint8)) / vis)).astype(np.float32)
    shade_lut = (1.0 + (codes / 128.0 - 1.0) * shade_k).astype(np.float32)
    amp = np.zeros((256, M.TEXTURE.shape[1]), dtype=np.float32)
    amp[:n] = M.TEXTURE * look.texture
    stripes, grid = _patterns(h, w)
    rows = np.arange(h, dtype=np.float32)[:, None]
    fields = (
        rng.standard_normal((h, w), dtype=np.float32),
        _upsampled_noise(rng, h, w, 4),
        _upsampled_noise(rng, h, w, 16),
        np.clip(1.0 - rows / max(horizon, 1.0), 0.0, 1.0),
        stripes,
        grid,
    )
    factor = np.ones((h, w), dtype=np.float32)
    for k, fld in enumerate(fields):
        if amp[:n, k].any():
            factor += np.take(amp[:, k], mat) * fld
    haze = np.take(haze_lut, depth)
    factor *= np.take(shade_lut, shade)
    factor *= 1.0 - haze
    img = np.take(table, mat, axis=0)
    img *= factor[..., None]
    img += haze[..., None] * haze_rgb + b

    if look.blur:
        img = _blur(img, look.blur)
    if look.sharpen:
        img += look.sharpen * (img - _blur(img, 1))
    if rng.random() < look.motion_blur:
        img = _motion_blur(img, int(rng.integers(2, 6)) * max(1, w // 256))
    sigma = look.noise * (2.5 if condition == "night" else 1.0)
    if sigma:
        img += (sigma * rng.standard_normal((h, w), dtype=np.float32))[..., None]
    img = np.clip(img * 255.0 + 0.5, 0.0, 255.0, out=img)
    return {"image": img.astype(np.uint8), "condition": condition}
