"""Things standing in the street, each drawn at a world position: vehicles, people, riders, trees, poles.

Every function draws one object on a `Canvas` at ground position (x, z) (metres) with materials picked from
`materials.GROUPS`; parts are drawn back to front so nearer parts occlude farther ones.
"""

from __future__ import annotations

import numpy as np

from raymh.data.synth.canvas import Canvas
from raymh.data.synth.materials import MAT, pick

SIDE_SHADE = 0.78  # vehicle and box sides are darker than faces toward the camera


def _box(cv: Canvas, x: float, z: float, w: float, y0: float, y1: float, length: float, mat: int) -> None:
    """A box whose near face is at depth z: visible side, roof when below the camera, then the near face."""
    if x - w / 2 > 0:
        cv.side(x - w / 2, z, z + length, y0, y1, mat, shade=SIDE_SHADE)
    elif x + w / 2 < 0:
        cv.side(x + w / 2, z, z + length, y0, y1, mat, shade=SIDE_SHADE)
    cv.ground(x - w / 2, x + w / 2, z, z + length, mat, y=y1, solid=True)
    cv.front(x - w / 2, x + w / 2, y0, y1, z, mat)


def _side_x(x: float, w: float) -> float | None:
    """The x of the box side the camera sees, if any."""
    return x - w / 2 if x - w / 2 > 0 else (x + w / 2 if x + w / 2 < 0 else None)


def _wheels(cv: Canvas, x: float, z: float, w: float, length: float, r: float, mat: int, axles) -> None:
    sx = _side_x(x, w)
    if sx is not None:
        for a in axles:
            cv.side(sx, z + a * length - r, z + a * length + r, 0.0, 2 * r * 0.9, mat, shade=1.0)
    for dx in (-w / 2 + 0.04, w / 2 - 0.04 - 0.3):
        cv.front(x + dx, x + dx + 0.3, 0.0, 2 * r * 0.8, z + 0.25, mat)


def shadow(cv: Canvas, x: float, z: float, w: float, length: float) -> None:
    """The dark road patch under a vehicle (road label)."""
    cv.ground(x - w / 2 - 0.15, x + w / 2 + 0.15, z - 0.2, z + length, MAT["road_shadow.dark"])


def car(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, oncoming: bool) -> None:
    """A car (body, cabin, glass, wheels, lights), near face at depth z."""
    w, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.8)
    body, glass = pick(rng, "car_body"), MAT["car_glass.dark"]
    top, roof = rng.uniform(0.85, 1.05), rng.uniform(1.4, 1.6)
    shadow(cv, x, z, w, length)
    _box(cv, x, z, w, 0.28, top, length, body)
    cw, c0, cl = w - 0.2, rng.uniform(0.7, 1.1), length * rng.uniform(0.45, 0.55)
    _box(cv, x, z + c0, cw, top, roof, cl, body)
    sx = _side_x(x, cw)
    if sx is not None:
        cv.side(sx, z + c0 + 0.15, z + c0 + cl - 0.15, top + 0.06, roof - 0.07, glass, shade=0.9)
    cv.front(x - cw / 2 + 0.1, x + cw / 2 - 0.1, top + 0.04, roof - 0.08, z + c0, glass)
    _wheels(cv, x, z, w, length, 0.33, MAT["car_wheel.black"], (0.2, 0.8))
    lamp = MAT["car_head.white"] if oncoming else MAT["car_tail.red"]
    for dx in (-w / 2 + 0.08, w / 2 - 0.38):
        cv.front(x + dx, x + dx + 0.3, top - 0.28, top - 0.1, z, lamp)
    cv.front(x - 0.26, x + 0.26, 0.42, 0.54, z, MAT["car_body.white"])


def truck(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, oncoming: bool) -> None:
    """A truck: a cab and a cargo box; the cab faces the camera when oncoming."""
    w, cab, box = 2.45, pick(rng, "truck_cab"), pick(rng, "truck_box")
    cab_len, box_len, box_top = 2.2, rng.uniform(5.5, 8.5), rng.uniform(3.2, 3.9)
    shadow(cv, x, z, w, cab_len + box_len)
    if oncoming:
        _box(cv, x, z + cab_len + 0.2, w + 0.05, 0.9, box_top, box_len, box)
        _box(cv, x, z, w, 0.5, 2.9, cab_len, cab)
        cv.front(x - w / 2 + 0.12, x + w / 2 - 0.12, 1.75, 2.75, z, MAT["truck_glass.dark"])
        sx = _side_x(x, w)
        if sx is not None:
            cv.side(sx, z + 0.2, z + 1.4, 1.75, 2.7, MAT["truck_glass.dark"], shade=0.9)
    else:
        _box(cv, x, z + box_len + 0.2, w, 0.5, 2.9, cab_len, cab)
        _box(cv, x, z, w + 0.05, 0.9, box_top, box_len, box)
        for dx in (-w / 2 + 0.05, w / 2 - 0.35):
            cv.front(x + dx, x + dx + 0.3, 0.95, 1.15, z - 0.02, MAT["truck_light.red"])
    _wheels(cv, x, z, w, cab_len + box_len, 0.5, MAT["truck_wheel.black"], (0.12, 0.75, 0.88))


def bus(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, oncoming: bool) -> None:
    """A city bus with a window band, near face at depth z."""
    w, length, body, glass = 2.55, rng.uniform(11.0, 13.5), pick(rng, "bus_body"), MAT["bus_glass.dark"]
    shadow(cv, x, z, w, length)
    _box(cv, x, z, w, 0.32, 3.15, length, body)
    sx = _side_x(x, w)
    if sx is not None:
        cv.side(sx, z + 0.3, z + length - 0.5, 1.25, 2.55, glass, shade=0.9)
    if oncoming:
        cv.front(x - w / 2 + 0.1, x + w / 2 - 0.1, 1.0, 2.6, z, glass)
        cv.front(x - 0.8, x + 0.8, 2.7, 3.0, z, MAT["bus_sign.orange"])
    else:
        cv.front(x - w / 2 + 0.25, x + w / 2 - 0.25, 1.7, 2.7, z, glass)
    _wheels(cv, x, z, w, length, 0.5, MAT["bus_wheel.black"], (0.18, 0.78))


def train(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, length: float) -> None:
    """A tram or train `length` metres long on rails centred at x, near face at depth z."""
    w, body, stripe, glass = 2.65, pick(rng, "train_body"), pick(rng, "train_stripe"), MAT["train_glass.dark"]
    _box(cv, x, z, w, 0.4, 3.6, length, body)
    sx = _side_x(x, w)
    if sx is not None:
        cv.side(sx, z, z + length, 0.75, 1.05, stripe, shade=SIDE_SHADE)
        for k in np.arange(z + 1.0, z + length - 1.5, 2.6):
            cv.side(sx, k, k + 1.8, 1.55, 2.75, glass, shade=0.9)
    cv.front(x - w / 2, x + w / 2, 0.75, 1.05, z, stripe)
    cv.front(x - w / 2 + 0.2, x + w / 2 - 0.2, 1.6, 2.9, z, glass)


def rails(cv: Canvas, x: float, z0: float, z1: float, *, mat: int, bed: int | None = None) -> None:
    """A pair of rails (gauge 1.435 m) centred at x, optionally on a gravel bed."""
    if bed is not None:
        cv.ground(x - 2.0, x + 2.0, z0, z1, bed)
    for dx in (-0.75, 0.75):
        cv.ground(x + dx - 0.05, x + dx + 0.05, z0, z1, mat)


# -- sprites: flat figures facing the camera, (u, v) in metres, u along the figure's heading ------------
class _Sprite:
    """Maps sprite coordinates (u forward, v up) to the world plane z; `squeeze` < 1 turns it away."""

    def __init__(self, cv: Canvas, x: float, z: float, *, heading: float, squeeze: float, shade: float = 1.0):
        self.cv, self.x, self.z, self.k, self.shade = cv, x, z, heading * squeeze, shade

    def poly(self, pts, mat: int) -> None:
        p = np.asarray(pts, dtype=np.float64)
        self.cv.front_poly(self.x + self.k * p[:, 0], p[:, 1], self.z, mat, shade=self.shade)

    def line(self, pts, width: float, mat: int) -> None:
        p = np.asarray(pts, dtype=np.float64)
        self.cv.front_line(self.x + self.k * p[:, 0], p[:, 1], self.z, width, mat, shade=self.shade)

    def ellipse(self, u: float, v: float, ru: float, rv: float, mat: int, ring: float = 0.0) -> None:
        k = abs(self.k)
        self.cv.front_ellipse(self.x + self.k * u, v, max(ru * k, ring * 0.6), rv, self.z, mat, ring=ring)


def person(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A pedestrian about 1.6-1.95 m tall, walking or standing."""
    h = rng.uniform(1.6, 1.95)
    s = _Sprite(cv, x, z, heading=rng.choice([-1.0, 1.0]), squeeze=rng.uniform(0.75, 1.0))
    skin, shirt, pants = pick(rng, "skin"), pick(rng, "shirt"), pick(rng, "pants")
    stride = rng.uniform(-0.22, 0.22)
    hip, shoulder = 0.52 * h, 0.81 * h
    for sgn in (1, -1):
        foot = sgn * stride
        s.poly(
            [(-0.075 + sgn * 0.06, hip), (0.075 + sgn * 0.06, hip), (foot + 0.07, 0), (foot - 0.07, 0)], pants
        )
    low = hip - (0.25 * h if rng.random() < 0.3 else 0.0)  # coats and dresses reach lower
    s.poly([(-0.2, shoulder), (0.2, shoulder), (0.17, low), (-0.17, low)], shirt)
    for sgn in (1, -1):
        hand = (sgn * 0.2 - stride * sgn * 0.8, 0.44 * h)
        s.line([(sgn * 0.17, shoulder - 0.04), hand], 0.085, shirt)
        s.ellipse(hand[0], hand[1] - 0.03, 0.045, 0.05, skin)
    s.line([(0.0, shoulder - 0.02), (0.0, h - 0.2)], 0.09, skin)
    s.ellipse(0.0, h - 0.115, 0.095, 0.115, skin)
    s.ellipse(-0.01, h - 0.06, 0.1, 0.065, MAT["hair.dark"])


def _rider(s: _Sprite, rng: np.random.Generator, hip, shoulder, hand, knee, foot, head_r: float) -> None:
    jacket, pants = pick(rng, "jacket"), MAT["rider_pants.dark"]
    s.line([hip, knee, foot], 0.14, pants)
    s.poly([(hip[0] - 0.14, hip[1] - 0.05), (hip[0] + 0.14, hip[1] + 0.02), (shoulder[0] + 0.12, shoulder[1]),
            (shoulder[0] - 0.14, shoulder[1] + 0.02)], jacket)  # fmt: skip
    s.line([shoulder, hand], 0.09, jacket)
    s.ellipse(hand[0], hand[1], 0.05, 0.05, MAT["rider_skin.light"])
    s.ellipse(shoulder[0] + 0.05, shoulder[1] + 0.16, 0.09, 0.11, MAT["rider_skin.light"])
    s.ellipse(shoulder[0] + 0.03, shoulder[1] + 0.21, head_r, head_r * 0.8, pick(rng, "helmet"))


def bicycle(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, rider: bool, squeeze: float) -> None:
    """A bicycle seen from the side (`squeeze` 1) to nearly from behind (small `squeeze`), maybe ridden."""
    s = _Sprite(cv, x, z, heading=rng.choice([-1.0, 1.0]), squeeze=squeeze)
    frame, tyre = pick(rng, "bike_frame"), MAT["bike_wheel.black"]
    r = 0.34
    for u in (-0.52, 0.52):
        s.ellipse(u, r, r, r, tyre, ring=0.09)
    s.line([(-0.52, r), (0.0, 0.3), (-0.16, 0.86), (-0.52, r)], 0.08, frame)
    s.line([(0.0, 0.3), (0.4, 0.9), (-0.16, 0.86)], 0.08, frame)
    s.line([(0.52, r), (0.42, 1.02), (0.34, 1.05)], 0.06, frame)
    s.line([(-0.26, 0.9), (-0.06, 0.9)], 0.07, tyre)
    if rider:
        _rider(s, rng, hip=(-0.18, 0.98), shoulder=(0.12, 1.52), hand=(0.38, 1.04), knee=(0.16, 0.72),
               foot=(0.02, 0.3), head_r=0.14)  # fmt: skip


def motorcycle(
    cv: Canvas, rng: np.random.Generator, x: float, z: float, *, rider: bool, squeeze: float
) -> None:
    """A motorcycle from the side to nearly from behind, maybe ridden."""
    s = _Sprite(cv, x, z, heading=rng.choice([-1.0, 1.0]), squeeze=squeeze)
    body, chrome, tyre = pick(rng, "moto_body"), MAT["moto_chrome.steel"], MAT["moto_wheel.black"]
    r = 0.32
    for u in (-0.72, 0.72):
        s.ellipse(u, r, r, r, tyre)
        s.ellipse(u, r, 0.14, 0.14, chrome)
    s.line([(-0.75, 0.35), (-0.1, 0.35)], 0.09, chrome)
    s.poly(
        [(-0.78, 0.62), (-0.5, 0.92), (0.05, 0.96), (0.38, 1.02), (0.62, 0.78), (0.55, 0.5), (-0.25, 0.38)],
        body,
    )
    s.poly([(-0.2, 0.45), (0.25, 0.45), (0.3, 0.75), (-0.15, 0.75)], chrome)
    s.line([(0.62, 0.78), (0.72, r)], 0.07, chrome)
    s.line([(0.5, 1.0), (0.6, 1.18)], 0.05, chrome)
    if rider:
        _rider(s, rng, hip=(-0.2, 1.0), shoulder=(0.14, 1.5), hand=(0.55, 1.15), knee=(0.22, 0.8),
               foot=(0.05, 0.48), head_r=0.16)  # fmt: skip


def tree(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A street tree: trunk and a crown of overlapping ellipses."""
    trunk_h, r = rng.uniform(2.0, 3.8), rng.uniform(1.4, 2.9)
    tw = rng.uniform(0.25, 0.45)
    cv.front(x - tw / 2, x + tw / 2, 0.0, trunk_h + r * 0.6, z, MAT["trunk.brown"])
    leaves = pick(rng, "leaves")
    for _ in range(int(rng.integers(3, 6))):
        dx, dy = rng.uniform(-0.7, 0.7) * r, rng.uniform(0.5, 1.4) * r
        cv.front_ellipse(
            x + dx, trunk_h + dy, r * rng.uniform(0.6, 0.9), r * rng.uniform(0.55, 0.85), z, leaves
        )


def traffic_light(cv: Canvas, rng: np.random.Generator, x: float, top: float, z: float) -> None:
    """A three-lamp traffic light housing hanging with its top at height `top`, one lamp lit."""
    w, h = 0.5, 1.2
    cv.front(x - w / 2, x + w / 2, top - h, top, z, MAT["tl_housing.black"])
    lit = int(rng.integers(3))
    lamps = (MAT["tl_lamp.red"], MAT["tl_lamp.amber"], MAT["tl_lamp.green"])
    for i in range(3):
        mat = lamps[i] if i == lit else MAT["tl_off.dim"]
        cv.front_ellipse(x, top - 0.2 - i * 0.39, 0.14, 0.14, z, mat)


def traffic_sign(cv: Canvas, rng: np.random.Generator, x: float, y: float, z: float) -> None:
    """A road sign centred at height y: a round, triangular, square or octagonal plate."""
    r = rng.uniform(0.45, 0.6)
    kind = int(rng.integers(5))
    red, white, blue, yellow = MAT["sign.red"], MAT["sign.white"], MAT["sign.blue"], MAT["sign.yellow"]
    if kind == 0:  # prohibition: red ring on white
        cv.front_ellipse(x, y, r, r, z, red)
        cv.front_ellipse(x, y, r * 0.72, r * 0.72, z, white)
    elif kind == 1:  # mandatory: blue disc, white arrow
        cv.front_ellipse(x, y, r, r, z, blue)
        cv.front(x - 0.06, x + 0.06, y - r * 0.6, y + r * 0.3, z, white)
    elif kind == 2:  # warning: white triangle with a red border
        cv.front_poly([x - r, x + r, x], [y - r * 0.8, y - r * 0.8, y + r], z, red)
        cv.front_poly([x - r * 0.65, x + r * 0.65, x], [y - r * 0.6, y - r * 0.6, y + r * 0.55], z, white)
    elif kind == 3:  # information: blue or yellow square
        cv.front(x - r, x + r, y - r, y + r, z, blue if rng.random() < 0.6 else yellow)
        cv.front(x - r * 0.5, x + r * 0.5, y - r * 0.5, y + r * 0.5, z, white)
    else:  # stop: red octagon
        a = np.pi / 8 + np.arange(8) * np.pi / 4
        cv.front_poly(x + r * np.cos(a), y + r * np.sin(a), z, red)
        cv.front(x - r * 0.55, x + r * 0.55, y - 0.07, y + 0.07, z, white)


def pole(cv: Canvas, rng: np.random.Generator, x: float, z: float, *, kind: str, side: float) -> None:
    """A pole at the kerb: `kind` is 'lamp', 'sign', 'light' (traffic light on top) or 'mast' (arm over the road)."""
    mat = pick(rng, "pole")
    w = rng.uniform(0.2, 0.32)
    height = {"lamp": rng.uniform(6.5, 8.5), "sign": rng.uniform(2.8, 3.6), "light": rng.uniform(3.6, 4.6),
              "mast": rng.uniform(5.8, 6.8)}[kind]  # fmt: skip
    cv.front(x - w / 2, x + w / 2, 0.0, height, z, mat)
    inward = -side  # toward the road
    if kind == "lamp":
        arm = rng.uniform(1.0, 2.2)
        cv.front_line([x, x + inward * arm], [height - 0.1, height + 0.2], z, 0.12, mat)
        cv.front(x + inward * arm - 0.35, x + inward * arm + 0.35, height, height + 0.2, z, mat)
    elif kind == "sign":
        traffic_sign(cv, rng, x, height - 0.45, z - 0.05)
        if rng.random() < 0.5:
            traffic_sign(cv, rng, x, height - 1.45, z - 0.05)
    elif kind == "light":
        traffic_light(cv, rng, x + inward * 0.1, height + 1.0, z - 0.1)
        if rng.random() < 0.4:
            traffic_sign(cv, rng, x, height - 1.6, z - 0.05)
    else:
        arm = rng.uniform(3.0, 7.0)
        cv.front_line([x, x + inward * arm], [height - 0.2, height - 0.2], z, 0.16, mat)
        for k in range(int(rng.integers(1, 3))):
            traffic_light(cv, rng, x + inward * (arm - 0.3 - 2.5 * k), height - 0.3, z - 0.1)
        if rng.random() < 0.5:
            traffic_sign(cv, rng, x + inward * (arm * 0.45), height + 0.3, z - 0.05)


def bin_or_bollard(cv: Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """Street furniture labelled 'static' (void in training)."""
    if rng.random() < 0.5:
        cv.front(x - 0.3, x + 0.3, 0.0, 1.0, z, MAT["static.bin"])
    else:
        for k in range(3):
            cv.front(x - 0.07, x + 0.07, 0.0, 0.9, z + 1.4 * k, MAT["static.bollard"])
