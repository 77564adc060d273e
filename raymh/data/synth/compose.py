"""Compose one scene: lay out the street, draw its layers, place and draw the compact things far to near."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from raymh.data.synth import actors
from raymh.data.synth.canvas import Camera, Canvas
from raymh.data.synth.materials import MAT, pick
from raymh.data.synth.scene import _backdrop, _ground, _layout, _Street, _street_sides, make_camera

Thing = tuple[float, Callable[[], None]]  # (depth of its near face, how to draw it)


def _depths(rng: np.random.Generator, z0: float, z1: float, n: int, power: float = 1.4) -> np.ndarray:
    """n depths in [z0, z1], denser near the camera (objects near are big, as in street scenes)."""
    return z0 + (z1 - z0) * rng.random(n) ** power


def _traffic(cv: Canvas, rng: np.random.Generator, st: _Street, zb: float) -> list[Thing]:
    """Vehicles in the lanes (a truck and a bus in most scenes), parked cars, a tram."""
    things: list[Thing] = []
    forced = [t for t, p in (("truck", 0.8), ("bus", 0.75)) if rng.random() < p]
    lanes = [(x, False) for x in st.same] + [(x, True) for x in st.oncoming]
    order = rng.permutation(len(lanes))
    slots = {int(order[i % len(lanes)]): t for i, t in enumerate(forced)}
    draw = {"car": actors.car, "truck": actors.truck, "bus": actors.bus}
    for i, (x, oncoming) in enumerate(lanes):
        if st.tram == "road" and st.tram_x is not None and abs(x - st.tram_x) < 0.1:
            z = rng.uniform(max(zb, 6.0), 35.0)
            length = rng.uniform(25.0, 40.0)
            things.append((z, lambda x=x, z=z, length=length: actors.train(cv, rng, x, z, length=length)))
            continue
        z = rng.uniform(zb + 2.0, 25.0) if abs(x) > 0.1 else rng.uniform(max(zb + 4.0, 10.0), 35.0)
        while z < 110.0:
            kind = slots.pop(i, None) if z > 11.0 else None
            kind = kind or str(rng.choice(["car", "truck", "bus"], p=[0.88, 0.07, 0.05]))
            length = {"car": 4.6, "truck": 10.0, "bus": 13.0}[kind]
            jitter = rng.uniform(-0.3, 0.3)
            things.append(
                (z, lambda k=kind, x=x + jitter, z=z, o=oncoming: draw[k](cv, rng, x, z, oncoming=o))
            )
            z += length + rng.uniform(6.0, 45.0)
    for side in st.sides.values():
        if not (side.parking or rng.random() < 0.3):
            continue
        z = rng.uniform(zb, 20.0)
        for _ in range(int(rng.integers(1, 6))):
            x = side.x(-1.15)
            things.append((z, lambda x=x, z=z: actors.car(cv, rng, x, z, oncoming=bool(rng.random() < 0.5))))
            z += rng.uniform(5.5, 16.0)
    if st.tram in ("median", "side"):
        side = st.sides[-1.0] if st.sides[-1.0].rail else st.sides[1.0]
        x = st.tram_x if st.tram == "median" else side.x(0.25 + side.lawn + side.walk + 3.5)
        z, length = rng.uniform(max(zb, 6.0), 40.0), rng.uniform(25.0, 45.0)
        things.append((z, lambda x=x, z=z, length=length: actors.train(cv, rng, x, z, length=length)))
    return things


def _people(cv: Canvas, rng: np.random.Generator, st: _Street, zb: float) -> list[Thing]:
    """Pedestrians on the sidewalks and crossings; riders on bicycles and motorcycles; parked bikes."""
    things: list[Thing] = []
    sides = list(st.sides.values())
    for z in _depths(rng, zb, 32.0, int(rng.integers(4, 12)), power=1.5):
        side = sides[int(rng.integers(2))]
        x = side.x(0.25 + side.lawn + rng.uniform(0.3, max(side.walk - 0.3, 0.4)))
        things.append((z, lambda x=x, z=z: actors.person(cv, rng, x, z)))
    if st.crossing is not None:
        for _ in range(int(rng.integers(1, 5))):
            x, z = rng.uniform(st.sides[-1.0].edge, st.sides[1.0].edge), st.crossing + rng.uniform(0.5, 2.5)
            things.append((z, lambda x=x, z=z: actors.person(cv, rng, x, z)))
    kinds = ["bicycle", "motorcycle"] + list(
        rng.choice(["bicycle", "motorcycle"], size=int(rng.integers(0, 3)))
    )
    if rng.random() < 0.15:
        kinds.pop(int(rng.integers(2)))
    for kind in kinds:
        draw = actors.bicycle if kind == "bicycle" else actors.motorcycle
        z = float(_depths(rng, zb + 1.0, 28.0, 1)[0])
        side = st.sides[1.0] if rng.random() < 0.7 else st.sides[-1.0]
        if rng.random() < 0.3:  # along the kerb, seen from behind or obliquely
            x, squeeze = side.x(-rng.uniform(0.6, 1.3)), rng.uniform(0.35, 0.7)
        elif rng.random() < 0.5:  # on a bike lane at the edge of the sidewalk, obliquely
            x, squeeze = side.x(0.25 + side.lawn + 0.6), rng.uniform(0.5, 0.9)
        else:  # crossing, seen from the side
            x, squeeze = rng.uniform(st.sides[-1.0].edge + 1, st.sides[1.0].edge - 1), rng.uniform(0.8, 1.0)
        things.append((z, lambda d=draw, x=x, z=z, s=squeeze: d(cv, rng, x, z, rider=True, squeeze=s)))
    for kind, p in (("bicycle", 0.7), ("motorcycle", 0.45)):  # parked on the sidewalk
        if rng.random() < p:
            side = sides[int(rng.integers(2))]
            z = rng.uniform(zb + 1.0, 30.0)
            draw = actors.bicycle if kind == "bicycle" else actors.motorcycle
            for k in range(int(rng.integers(1, 4))):
                x = side.x(0.25 + side.lawn + side.walk * rng.uniform(0.2, 0.8))
                things.append((z + 0.7 * k, lambda d=draw, x=x, z=z + 0.7 * k: d(
                    cv, rng, x, z, rider=False, squeeze=rng.uniform(0.6, 1.0))))  # fmt: skip
    return things


def _furniture(cv: Canvas, rng: np.random.Generator, st: _Street, zb: float) -> list[Thing]:
    """Trees, poles with lamps, signs and traffic lights, a mast over the road, bins and bollards."""
    things: list[Thing] = []
    p_trees = {"downtown": 0.5, "suburban": 0.75, "boulevard": 1.0}[st.kind]
    kinds: list[str] = []
    for side in st.sides.values():
        if rng.random() < p_trees:
            out = 0.25 + side.lawn / 2 if side.lawn else 0.25 + side.walk - 0.6
            for z in np.arange(rng.uniform(zb, 14.0), 95.0, rng.uniform(7.0, 15.0)):
                things.append((z, lambda x=side.x(out), z=z: actors.tree(cv, rng, x, z)))
        for z in np.arange(rng.uniform(zb + 1.0, 12.0), 90.0, rng.uniform(10.0, 22.0)):
            kind = str(rng.choice(["lamp", "sign", "light"], p=[0.3, 0.4, 0.3]))
            kinds.append(kind)
            x = side.x(rng.uniform(0.4, 0.7))
            things.append(
                (z, lambda x=x, z=z, k=kind, s=side.sign: actors.pole(cv, rng, x, z, kind=k, side=s))
            )
    extra = ["mast"] if rng.random() < 0.7 else []
    extra += [k for k in ("light", "sign") if k not in kinds]
    for kind in extra:
        side = st.sides[1.0] if rng.random() < 0.65 else st.sides[-1.0]
        z = rng.uniform(max(zb + 3.0, 10.0), 40.0)
        x = side.x(rng.uniform(0.4, 0.7))
        things.append((z, lambda x=x, z=z, k=kind, s=side.sign: actors.pole(cv, rng, x, z, kind=k, side=s)))
    if rng.random() < 0.45:  # a pedestrian railing along the kerb, in short pieces so depth order holds
        side = st.sides[1.0] if rng.random() < 0.5 else st.sides[-1.0]
        x, h, mat = side.x(0.35), rng.uniform(0.9, 1.2), pick(rng, "fence")
        z = cv.cam.z_in_view(x) + rng.uniform(0.0, 10.0)
        for z0 in np.arange(z, z + rng.uniform(8.0, 30.0), 3.0):
            things.append((z0, lambda z0=z0: cv.side(x, z0, z0 + 3.0, 0.0, h, mat, shade=0.95)))
    for _ in range(int(rng.integers(0, 3))):
        side = st.sides[1.0] if rng.random() < 0.5 else st.sides[-1.0]
        x, z = side.x(0.25 + side.lawn + side.walk - 0.5), rng.uniform(zb, 40.0)
        things.append((z, lambda x=x, z=z: actors.bin_or_bollard(cv, rng, x, z)))
    return things


def _ego_hood(cv: Canvas, rng: np.random.Generator) -> None:
    """The bonnet of the recording car along the bottom edge (label 'ego vehicle')."""
    w, h = cv.cam.width, cv.cam.height
    depth = h * rng.uniform(0.07, 0.12)
    xs = np.linspace(-0.05 * w, 1.05 * w, 17)
    ys = h - depth * (1.0 - 0.45 * ((xs - w / 2) / (w / 2)) ** 2)
    xy = np.concatenate([np.stack([xs, ys], 1).ravel(), [1.05 * w, h + 1, -0.05 * w, h + 1]])
    cv.polygon(xy.tolist(), MAT["ego.hood"], z=1.0, shade=1.0)


def _border(cv: Canvas) -> None:
    """Cityscapes' rectification border: thin black strips at the left and right edges."""
    w, h = cv.cam.width, cv.cam.height
    b = max(1, round(w * 0.004))
    for x0 in (0, w - b):
        cv.polygon([x0, 0, x0 + b - 1, 0, x0 + b - 1, h, x0, h], MAT["border.black"], z=0.7, shade=1.0)


def draw_scene(rng: np.random.Generator, size: tuple[int, int], *, ego_hood: bool, border: bool) -> dict:
    """Draw one street scene; returns {"canvas", "camera", "kind"} (materials, depth and shade canvases)."""
    cam: Camera = make_camera(rng, size)
    ground = pick(rng, "grass") if rng.random() < 0.7 else MAT["ground.gravel"]
    cv = Canvas(cam, sky=MAT["sky.clear"], ground=ground)
    st = _layout(rng)
    _backdrop(cv, rng, st)
    _ground(cv, rng, st)
    _street_sides(cv, rng, st)
    zb = cam.z_bottom
    things = _traffic(cv, rng, st, zb) + _people(cv, rng, st, zb) + _furniture(cv, rng, st, zb)
    for _, draw in sorted(things, key=lambda t: -t[0]):
        draw()
    if ego_hood:
        _ego_hood(cv, rng)
    if border:
        _border(cv)
    return {"canvas": cv, "camera": cam, "kind": st.kind}
