"""One procedural street scene: a layout (road, sidewalks, building lines), then drawing far to near.

Layers, back to front: the far backdrop, the ground (road, marks, sidewalks, lawns, rails), the long things
along the street sides (facades with windows, walls, fences, hedges, trains on side tracks; far to near),
then compact things sorted by depth (vehicles, trams, people, riders, bikes, trees, poles, furniture), then
the ego vehicle's hood and the rectification border where the domain has them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raymh.data.synth import actors
from raymh.data.synth.canvas import NEAR_Z, Camera, Canvas
from raymh.data.synth.materials import MAT, pick

KINDS = ("downtown", "suburban", "boulevard")


def make_camera(rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """A dashboard camera: horizon a little above the middle, roughly Cityscapes' field of view."""
    h, w = size
    return Camera(
        width=w,
        height=h,
        f=w * rng.uniform(0.85, 1.05),
        cx=w * (0.5 + rng.uniform(-0.06, 0.06)),
        cy=h * rng.uniform(0.40, 0.48),
        h=rng.uniform(1.3, 1.6),
    )


@dataclass
class _Side:
    sign: float  # +1 right of the camera, -1 left
    edge: float  # kerb line (road edge) x
    lawn: float  # grass strip between kerb and sidewalk (m)
    walk: float  # sidewalk width (m)
    front: float  # front lawn between sidewalk and building line (m)
    parking: bool
    rail: bool  # a railway beyond the sidewalk

    def x(self, out: float) -> float:
        """The x `out` metres outward from the kerb."""
        return self.edge + self.sign * out

    @property
    def prop(self) -> float:
        """Outer edge of the sidewalk (property line)."""
        return self.x(0.25 + self.lawn + self.walk)

    @property
    def face(self) -> float:
        """The building line."""
        return self.x(0.25 + self.lawn + self.walk + self.front + (7.0 if self.rail else 0.0))


@dataclass
class _Street:
    kind: str
    lane_w: float
    same: list[float]  # lane centres, traffic going away
    oncoming: list[float]  # lane centres, traffic coming toward the camera
    centre: float  # x of the centre line (or the near edge of the median)
    median: tuple[float, float] | None
    z_end: float
    sides: dict[float, _Side] = field(default_factory=dict)
    tram: str | None = None  # None | "road" | "median" | "side"
    tram_x: float | None = None  # rails' centre when the tram runs in the road or the median
    crossing: float | None = None  # depth of a zebra crossing
    sun: float = 1.0  # the side (+1 right, -1 left) whose facades face the sun


def _layout(rng: np.random.Generator) -> _Street:
    kind = KINDS[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
    lane_w = rng.uniform(3.0, 3.6)
    n_same, n_on = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    j = int(rng.integers(n_same))  # the camera's lane, counted from the centre line
    same = [(k - j) * lane_w for k in range(n_same)]
    centre = -(j + 0.5) * lane_w
    median = (centre - rng.uniform(3.0, 6.0), centre) if kind == "boulevard" else None
    left0 = median[0] if median else centre
    oncoming = [left0 - (k + 0.5) * lane_w for k in range(n_on)]
    street = _Street(kind, lane_w, same, oncoming, centre, median, z_end=rng.uniform(90.0, 260.0))
    street.sun = float(rng.choice([-1.0, 1.0]))
    if rng.random() < 0.7:
        street.tram = {"downtown": "road", "boulevard": "median", "suburban": "side"}[kind]
    rail_side = float(rng.choice([-1.0, 1.0]))
    for sign, edge in ((1.0, same[-1] + lane_w / 2), (-1.0, oncoming[-1] - lane_w / 2)):
        parking = kind != "suburban" and rng.random() < 0.3
        if parking:
            edge += sign * 2.3
        walk = rng.uniform(2.5, 5.0) if kind != "suburban" else rng.uniform(1.5, 3.0)
        lawn = rng.uniform(1.0, 2.5) if rng.random() < (0.7 if kind == "boulevard" else 0.35) else 0.0
        front = (
            rng.uniform(3.0, 9.0) if kind == "suburban" else (rng.uniform(0, 3) if rng.random() < 0.3 else 0)
        )
        rail = street.tram == "side" and sign == rail_side
        street.sides[sign] = _Side(sign, edge, lawn, walk, front, parking, rail)
    return street


# -- layer 1: backdrop and ground ---------------------------------------------------------------------
def _backdrop(cv: Canvas, rng: np.random.Generator, st: _Street) -> None:
    z = st.z_end
    for _ in range(int(rng.integers(8, 16))):  # distant tree line
        x = rng.uniform(-90, 90)
        r = rng.uniform(4.0, 9.0)
        cv.front_ellipse(x, r * rng.uniform(0.4, 1.0), r * 1.5, r, z + 20, pick(rng, "leaves"))
    if rng.random() < (0.75 if st.kind == "downtown" else 0.4):  # a skyline across the end of the street
        x = -rng.uniform(40, 90)
        while x < 90:
            w, h = rng.uniform(8, 28), rng.uniform(8, 40)
            if rng.random() < 0.85:
                facade = pick(rng, "facade")
                cv.front(x, x + w, 0.0, h, z, facade, shade=rng.uniform(0.8, 1.05))
                _front_windows(cv, rng, x, x + w, h, z)
            x += w


def _front_windows(cv: Canvas, rng: np.random.Generator, x0: float, x1: float, h: float, z: float) -> None:
    s = cv.cam.f / z
    floor, step = rng.uniform(2.9, 3.5), rng.uniform(2.4, 4.0)
    if floor * s < 3.0:
        return
    mat = MAT["window.dark"]
    for y in np.arange(3.2, h - 1.5, floor):
        for x in np.arange(x0 + 0.8, x1 - 1.5, step):
            cv.front(x, x + 1.3, y, y + 1.5, z, mat, solid=False)


def _ground(cv: Canvas, rng: np.random.Generator, st: _Street) -> None:
    z1 = st.z_end
    right, left = st.sides[1.0], st.sides[-1.0]
    for side in (right, left):
        walk = pick(rng, "sidewalk")
        lo, hi = sorted((side.edge, side.prop))
        cv.ground(lo, hi, 0, z1, walk)
        if side.lawn:
            lo, hi = sorted((side.x(0.25), side.x(0.25 + side.lawn)))
            cv.ground(lo, hi, 0, z1, pick(rng, "grass"))
        lo, hi = sorted((side.edge, side.x(0.25)))
        cv.ground(lo, hi, 0, z1, MAT["curb.stone"])
        if side.rail:
            mid = side.x(0.25 + side.lawn + side.walk + 3.5)
            actors.rails(cv, mid, 0, z1, mat=MAT["rail_steel.rusty"], bed=MAT["rail_bed.gravel"])
    cv.ground(left.edge, right.edge, 0, z1, MAT["road.asphalt"])
    for _ in range(int(rng.integers(0, 4))):  # repaired patches
        x, z = rng.uniform(left.edge, right.edge), rng.uniform(5, 60)
        cv.ground(x, x + rng.uniform(1, 3), z, z + rng.uniform(2, 8), MAT["road.patch"])
    for side in (right, left):
        if side.parking and rng.random() < 0.5:
            lo, hi = sorted((side.edge, side.x(-2.3)))
            cv.ground(lo, hi, 0, z1, MAT["parking.paved"])
    white, yellow = MAT["road_mark.white"], MAT["road_mark.yellow"]
    period, dash = rng.uniform(9, 13), rng.uniform(2.5, 4.0)
    phase = rng.uniform(0, period)
    lanes = sorted(st.same) + sorted(st.oncoming)
    bounds = [a + (b - a) / 2 for a, b in zip(sorted(st.same), sorted(st.same)[1:], strict=False)]
    bounds += [a + (b - a) / 2 for a, b in zip(sorted(st.oncoming), sorted(st.oncoming)[1:], strict=False)]
    for x in bounds:
        for z in np.arange(phase, z1, period):
            cv.ground(x - 0.07, x + 0.07, z, z + dash, white)
    if st.median is None:
        mark = yellow if rng.random() < 0.25 else white
        if rng.random() < 0.5:
            cv.ground(st.centre - 0.08, st.centre + 0.08, 0, z1, mark)
        else:
            for z in np.arange(phase, z1, period / 2):
                cv.ground(st.centre - 0.08, st.centre + 0.08, z, z + dash, mark)
    else:
        lo, hi = st.median
        cv.ground(lo, hi, 0, z1, MAT["curb.stone"])
        cv.ground(lo + 0.25, hi - 0.25, 0, z1, pick(rng, "grass"))
    if rng.random() < 0.6:
        for side in (right, left):
            x = side.x(-0.35)
            cv.ground(x - 0.07, x + 0.07, 0, z1, white)
    st.crossing = rng.uniform(8, 30) if rng.random() < 0.55 else None
    if st.crossing is not None:
        for x in np.arange(min(lanes) - st.lane_w / 2 + 0.4, max(lanes) + st.lane_w / 2 - 0.5, 1.0):
            cv.ground(x, x + 0.5, st.crossing, st.crossing + 3.0, white)
    if st.tram == "road":
        x = st.oncoming[0] if rng.random() < 0.5 or len(st.same) == 1 else st.same[0]
        st.tram_x = x
        actors.rails(cv, x, 0, z1, mat=MAT["road_rail.steel"])
    elif st.tram == "median":
        st.tram_x = (st.median[0] + st.median[1]) / 2
        actors.rails(cv, st.tram_x, 0, z1, mat=MAT["rail_steel.rusty"], bed=MAT["rail_bed.gravel"])


# -- layer 2: the street sides --------------------------------------------------------------------------
def _facade(
    cv: Canvas, rng: np.random.Generator, side: _Side, x, z0, z1, h, *, kind: str, sun: float
) -> None:
    """One building: side facade, windows, ground floor, and its end face toward the camera."""
    cam = cv.cam
    facade = pick(rng, "facade")
    lit = 1.0 if side.sign == sun else 0.8
    cv.side(x, z0, z1, 0.0, h, facade, shade=lit)
    lo, hi = sorted((x, x + side.sign * 14.0))
    cv.front(lo, hi, 0.0, h, z0, facade, shade=lit * 0.85)
    if z1 < cam.z_in_view(x):
        return
    floor, step = rng.uniform(2.9, 3.5), rng.uniform(2.4, 4.0)
    win_w, win_h = rng.uniform(1.0, 1.6), rng.uniform(1.2, 1.8)
    zs = np.arange(z0 + 0.8, z1 - win_w - 0.4, step)
    ys = np.arange(3.4, h - win_h - 0.6, floor)
    if zs.size and ys.size:
        zz, yy = np.meshgrid(zs, ys)
        zz, yy = zz.ravel(), yy.ravel()
        za, zb = np.maximum(zz, NEAR_Z), zz + win_w
        xa, xb = cam.x(x, za), cam.x(x, zb)
        ok = (np.maximum(xa, xb) > 0) & (np.minimum(xa, xb) < cam.width) & (cam.f * win_h / zb > 1.5)
        ok &= zz > NEAR_Z
        lit_mask = rng.random(zz.size) < 0.3
        y0a, y1a, y0b, y1b = cam.y(yy, za), cam.y(yy + win_h, za), cam.y(yy, zb), cam.y(yy + win_h, zb)
        for i in np.flatnonzero(ok):
            mat = MAT["window.lit"] if lit_mask[i] else MAT["window.dark"]
            cv.polygon([xa[i], y0a[i], xa[i], y1a[i], xb[i], y1b[i], xb[i], y0b[i]], mat)
    if kind == "downtown" and rng.random() < 0.55:
        cv.side(x, z0 + 0.5, z1 - 0.5, 0.4, 2.8, MAT["shop.front"], solid=False)
    else:
        for zd in np.arange(z0 + rng.uniform(1, 4), z1 - 1.5, rng.uniform(6, 14)):
            cv.side(x, zd, zd + 1.2, 0.0, 2.3, MAT["door.wood"], solid=False)


def _barrier(
    cv: Canvas, rng: np.random.Generator, x: float, z0: float, z1: float, what: str, sign: float
) -> None:
    """A wall, fence or hedge along x from z0 to z1, with its end toward the camera."""
    h = {"wall": rng.uniform(1.6, 3.2), "fence": rng.uniform(1.2, 2.2), "hedge": rng.uniform(0.9, 1.6)}[what]
    mat = pick(rng, {"wall": "wall", "fence": "fence", "hedge": "hedge"}[what])
    cv.side(x, z0, z1, 0.0, h, mat, shade=0.95)
    t = 0.5 if what == "hedge" else 0.25
    cv.front(min(x, x + sign * t), max(x, x + sign * t), 0.0, h, z0, mat, shade=0.85)


def _street_sides(cv: Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Facades and gaps along both sides, drawn far to near; walls, fences, hedges in front of them."""
    cam = cv.cam
    height = {"downtown": (12.0, 30.0), "suburban": (5.0, 9.5), "boulevard": (10.0, 24.0)}[st.kind]
    parts: list[tuple[float, Callable[[], None]]] = []
    want = {"wall": rng.random() < 0.88, "fence": rng.random() < 0.88}
    for side in st.sides.values():
        z = max(NEAR_Z, cam.z_in_view(side.face) - 25.0)
        while z < st.z_end + 10:
            length = rng.uniform(8.0, 28.0)
            roll = rng.random()
            what = (
                "building" if roll < 0.8 else ("gap" if roll < 0.88 else ("wall" if roll < 0.95 else "fence"))
            )
            x = side.face + side.sign * (
                rng.uniform(0.0, 1.2) if st.kind != "suburban" else rng.uniform(0, 4)
            )
            if what == "building":
                h = rng.uniform(*height)
                parts.append((z, lambda x=x, z=z, length=length, h=h, side=side: _facade(
                    cv, rng, side, x, z, z + length, h, kind=st.kind, sun=st.sun)))  # fmt: skip
            elif what != "gap":
                want[what] = want[what] and z > 50.0  # far ones are small: still force a near one
                parts.append((z, lambda x=x, z=z, length=length, what=what, side=side: _gap_barrier(
                    cv, rng, side, x, z, z + length, what)))  # fmt: skip
            else:
                parts.append((z, lambda x=x, z=z, length=length, side=side: _gap_trees(
                    cv, rng, side, x, z, z + length)))  # fmt: skip
            z += length + (rng.uniform(2.0, 8.0) if rng.random() < 0.2 else 0.0)
    for _, draw in sorted(parts, key=lambda p: -p[0]):
        draw()
    # property-line barriers in front of the buildings (suburban front yards; forced walls/fences elsewhere)
    for side in st.sides.values():
        x = side.prop + side.sign * 0.2
        z = cam.z_in_view(x) + rng.uniform(0.0, 12.0)
        while z < min(st.z_end, 90.0):
            length = rng.uniform(6.0, 24.0)
            if st.kind == "suburban" and not side.rail:
                what = str(rng.choice(["wall", "fence", "hedge", "none"], p=[0.3, 0.35, 0.2, 0.15]))
            else:
                pending = [k for k, v in want.items() if v]
                what = pending[0] if pending and rng.random() < 0.6 else "none"
            if what != "none":
                want[what] = False
                _barrier(cv, rng, x, z, z + length, what, side.sign)
            z += length + rng.uniform(2.5, 12.0)


def _gap_trees(cv: Canvas, rng: np.random.Generator, side: _Side, x: float, z0: float, z1: float) -> None:
    for z in np.arange(z1 - 2, z0, -rng.uniform(4, 8)):
        actors.tree(cv, rng, x + side.sign * rng.uniform(2, 10), z)


def _gap_barrier(
    cv: Canvas, rng: np.random.Generator, side: _Side, x: float, z0: float, z1: float, what: str
):
    if rng.random() < 0.6:
        _gap_trees(cv, rng, side, x, z0, z1)
    _barrier(cv, rng, x, z0, z1, what, side.sign)
