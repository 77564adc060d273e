"""A pinhole camera over a flat street, and the canvases a scene is drawn on (material, depth, shade).

World coordinates in metres: x to the right, y up (0 on the ground), z forward from the camera. Shapes are
given in the world and projected; every shape writes its material, and objects also write their depth and
shade, so the label map, fog and lighting follow exactly what was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

NEAR_Z = 0.6  # metres; nearer geometry is clipped
DEPTH_SCALE = 30.0  # depth code = 255 * z / (z + DEPTH_SCALE): fine near, coarse far, 255 = infinitely far


def depth_code(z: float) -> int:
    """The uint8 code of depth z (metres)."""
    return int(round(255.0 * z / (z + DEPTH_SCALE)))


def depth_from_code(code: np.ndarray) -> np.ndarray:
    """Depth in metres from uint8 codes (255 -> very far)."""
    c = code.astype(np.float32)
    return DEPTH_SCALE * c / np.maximum(255.0 - c, 0.05)


def shade_code(shade: float) -> int:
    """The uint8 code of a brightness factor (128 = 1.0)."""
    return int(min(255, max(0, round(128.0 * shade))))


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height `h` looking along +z; (cx, cy) is the vanishing point, f the focal length in px."""

    width: int
    height: int
    f: float
    cx: float
    cy: float
    h: float

    def x(self, x, z):
        return self.cx + self.f * x / z

    def y(self, y, z):
        return self.cy + self.f * (self.h - y) / z

    @property
    def z_bottom(self) -> float:
        """Depth of the ground seen at the bottom row."""
        return self.f * self.h / max(self.height - self.cy, 1.0)

    def z_in_view(self, x: float) -> float:
        """The nearest depth at which lateral offset x is inside the image."""
        edge = self.cx if x < 0 else self.width - self.cx
        return max(NEAR_Z, self.f * abs(x) / max(edge, 1.0))


class Canvas:
    """Material, depth-code and shade-code canvases of one image, drawn with PIL on 'L' images."""

    def __init__(self, cam: Camera, *, sky: int, ground: int) -> None:
        self.cam = cam
        rows = np.arange(cam.height, dtype=np.float32) + 0.5
        below = rows > cam.cy
        z_row = cam.f * cam.h / np.maximum(rows - cam.cy, 1e-3)
        depth_row = np.where(below, np.round(255.0 * z_row / (z_row + DEPTH_SCALE)), 255.0)
        full = np.ones((1, cam.width), dtype=np.uint8)
        self.mat = Image.fromarray(np.where(below, ground, sky).astype(np.uint8)[:, None] * full)
        self.depth = Image.fromarray(depth_row.astype(np.uint8)[:, None] * full)
        self.shade = Image.new("L", (cam.width, cam.height), 128)
        self._draw = [ImageDraw.Draw(im) for im in (self.mat, self.depth, self.shade)]

    def _fills(self, mat: int, z: float | None, shade: float | None):
        yield self._draw[0], mat
        if z is not None:
            yield self._draw[1], depth_code(z)
        if shade is not None:
            yield self._draw[2], shade_code(shade)

    def polygon(self, xy: Sequence[float], mat: int, *, z: float | None = None, shade: float | None = None):
        """A filled polygon in pixel coordinates [x0, y0, x1, y1, ...]."""
        for draw, fill in self._fills(mat, z, shade):
            draw.polygon(xy, fill=fill)

    # -- world-space primitives -------------------------------------------------------------------------
    def ground(self, x0: float, x1: float, z0: float, z1: float, mat: int, *, y: float = 0.0, solid=False):
        """A horizontal rectangle [x0, x1] x [z0, z1] at height y (road surface, marks, roofs when solid)."""
        cam = self.cam
        z0 = max(z0, NEAR_Z)
        if z1 <= z0 or y >= cam.h:
            return
        ya, yb = cam.y(y, z0), cam.y(y, z1)
        xy = [cam.x(x0, z0), ya, cam.x(x1, z0), ya, cam.x(x1, z1), yb, cam.x(x0, z1), yb]
        self.polygon(xy, mat, z=z0 if solid else None, shade=1.12 if solid else None)

    def side(self, x: float, z0: float, z1: float, y0: float, y1: float, mat: int, *, shade=1.0, solid=True):
        """A vertical rectangle in the plane x = const, from depth z0 to z1 (facades, vehicle sides)."""
        cam = self.cam
        z0 = max(z0, NEAR_Z)
        if z1 <= z0:
            return
        xa, xb = cam.x(x, z0), cam.x(x, z1)
        xy = [xa, cam.y(y0, z0), xa, cam.y(y1, z0), xb, cam.y(y1, z1), xb, cam.y(y0, z1)]
        zc = max(z0, min(z1, cam.z_in_view(x)))
        self.polygon(xy, mat, z=zc if solid else None, shade=shade if solid else None)

    def front(self, x0: float, x1: float, y0: float, y1: float, z: float, mat: int, *, shade=1.0, solid=True):
        """A rectangle facing the camera at depth z."""
        if z < NEAR_Z:
            return
        cam = self.cam
        xa, xb, ya, yb = cam.x(x0, z), cam.x(x1, z), cam.y(y0, z), cam.y(y1, z)
        self.polygon(
            [xa, ya, xb, ya, xb, yb, xa, yb], mat, z=z if solid else None, shade=shade if solid else None
        )

    def front_poly(self, xs, ys, z: float, mat: int, *, shade=1.0):
        """A polygon facing the camera at depth z, corners in world x, y."""
        if z < NEAR_Z:
            return
        cam = self.cam
        px = cam.x(np.asarray(xs, dtype=np.float64), z)
        py = cam.y(np.asarray(ys, dtype=np.float64), z)
        self.polygon(np.stack([px, py], 1).ravel().tolist(), mat, z=z, shade=shade)

    def front_ellipse(self, xc, yc, rx, ry, z: float, mat: int, *, ring: float = 0.0, shade=1.0):
        """An ellipse (or a ring `ring` metres thick) facing the camera at depth z."""
        if z < NEAR_Z:
            return
        cam = self.cam
        s = cam.f / z
        box = [cam.x(xc - abs(rx), z), cam.y(yc + abs(ry), z), cam.x(xc + abs(rx), z), cam.y(yc - abs(ry), z)]
        width = max(1, int(round(ring * s))) if ring > 0 else 0
        for draw, fill in self._fills(mat, z, shade):
            if width:
                draw.ellipse(box, outline=fill, width=width)
            else:
                draw.ellipse(box, fill=fill)

    def front_line(self, xs, ys, z: float, width: float, mat: int, *, shade=1.0):
        """A polyline `width` metres thick facing the camera at depth z (frames, limbs, arms of masts)."""
        if z < NEAR_Z:
            return
        cam = self.cam
        px = cam.x(np.asarray(xs, dtype=np.float64), z)
        py = cam.y(np.asarray(ys, dtype=np.float64), z)
        w = max(1, int(round(width * cam.f / z)))
        xy = np.stack([px, py], 1).ravel().tolist()
        for draw, fill in self._fills(mat, z, shade):
            draw.line(xy, fill=fill, width=w, joint="curve" if w > 2 else None)

    def arrays(self) -> dict[str, np.ndarray]:
        """The canvases as uint8 arrays: material, depth code, shade code."""
        return {"mat": np.asarray(self.mat), "depth": np.asarray(self.depth), "shade": np.asarray(self.shade)}
