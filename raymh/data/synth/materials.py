"""Materials of the synthetic street scenes: each a Cityscapes label, a base colour and a texture recipe.

A scene is drawn as a canvas of material indices; the label map is `LABEL_OF[material]` and the image is
coloured per material, so every pixel's label is the class of what was drawn there.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from raymh.data.labels import LABEL_ID

# The texture fields a material mixes (look.py builds them per image): per-pixel noise, noise at 1/4 and
# 1/16 resolution, a vertical gradient (1 at the top row, 0 at the horizon), vertical stripes, a tile grid.
TEXTURE_FIELDS = ("hi", "mid", "lo", "vgrad", "stripe", "grid")


class Material(NamedTuple):
    name: str  # "group.variant"; scene code picks a random variant of a group
    label: str  # Cityscapes label name
    rgb: tuple[int, int, int]
    tex: tuple[float, float, float, float, float, float] = (0.04, 0.0, 0.05, 0.0, 0.0, 0.0)
    glow: tuple[int, int, int] | None = None  # colour when lit at night (lamps, lit windows)


def _m(name, label, rgb, hi=0.04, mid=0.0, lo=0.05, vgrad=0.0, stripe=0.0, grid=0.0, glow=None) -> Material:
    return Material(name, label, rgb, (hi, mid, lo, vgrad, stripe, grid), glow)


_LEAF = {"hi": 0.16, "mid": 0.22, "lo": 0.08}
_PAINT = {"hi": 0.025, "lo": 0.06}

MATERIALS: tuple[Material, ...] = (
    _m("sky.clear", "sky", (118, 160, 212), hi=0.01, lo=0.06, vgrad=-0.28),
    _m("road.asphalt", "road", (96, 94, 99), hi=0.07, mid=0.03, lo=0.08),
    _m("road.patch", "road", (78, 77, 81), hi=0.06, lo=0.06),
    _m("road_shadow.dark", "road", (46, 45, 48), hi=0.05),
    _m("road_mark.white", "road", (214, 214, 206), hi=0.04),
    _m("road_mark.yellow", "road", (214, 178, 62), hi=0.04),
    _m("road_rail.steel", "road", (150, 146, 140), hi=0.05),
    _m("sidewalk.grey", "sidewalk", (180, 172, 164), hi=0.05, lo=0.06, grid=0.18),
    _m("sidewalk.red", "sidewalk", (178, 128, 112), hi=0.05, lo=0.06, grid=0.16),
    _m("sidewalk.sand", "sidewalk", (190, 176, 148), hi=0.05, lo=0.05, grid=0.16),
    _m("curb.stone", "sidewalk", (196, 192, 186), hi=0.04),
    _m("facade.beige", "building", (196, 176, 146), hi=0.05, lo=0.07),
    _m("facade.brick", "building", (152, 86, 66), hi=0.1, lo=0.06, grid=0.08),
    _m("facade.grey", "building", (142, 142, 147), hi=0.05, lo=0.08),
    _m("facade.white", "building", (214, 209, 199), hi=0.04, lo=0.06),
    _m("facade.glass", "building", (86, 106, 128), hi=0.02, lo=0.16),
    _m("facade.ochre", "building", (200, 152, 92), hi=0.05, lo=0.07),
    _m("window.dark", "building", (56, 66, 80), hi=0.03, lo=0.12),
    _m("window.lit", "building", (64, 72, 84), hi=0.03, lo=0.1, glow=(250, 212, 142)),
    _m("door.wood", "building", (92, 66, 50), hi=0.05),
    _m("shop.front", "building", (70, 82, 92), hi=0.03, lo=0.14, glow=(240, 225, 190)),
    _m("wall.concrete", "wall", (166, 160, 142), hi=0.06, lo=0.1),
    _m("wall.stone", "wall", (138, 126, 110), hi=0.1, lo=0.06, grid=0.1),
    _m("wall.painted", "wall", (176, 170, 120), hi=0.04, lo=0.08),
    _m("fence.metal", "fence", (112, 118, 112), hi=0.05, stripe=0.38),
    _m("fence.wood", "fence", (142, 106, 72), hi=0.06, stripe=0.3),
    _m("fence.green", "fence", (72, 110, 82), hi=0.05, stripe=0.35),
    _m("pole.grey", "pole", (128, 128, 133), hi=0.03),
    _m("pole.dark", "pole", (72, 76, 76), hi=0.03),
    _m("tl_housing.black", "traffic light", (34, 34, 34), hi=0.03),
    _m("tl_off.dim", "traffic light", (62, 62, 56), hi=0.03),
    _m("tl_lamp.red", "traffic light", (222, 42, 30), hi=0.02, glow=(255, 70, 50)),
    _m("tl_lamp.amber", "traffic light", (236, 170, 30), hi=0.02, glow=(255, 190, 60)),
    _m("tl_lamp.green", "traffic light", (40, 202, 104), hi=0.02, glow=(80, 255, 150)),
    _m("sign.red", "traffic sign", (202, 36, 36), **_PAINT),
    _m("sign.white", "traffic sign", (236, 236, 236), **_PAINT),
    _m("sign.blue", "traffic sign", (36, 82, 188), **_PAINT),
    _m("sign.yellow", "traffic sign", (238, 198, 40), **_PAINT),
    _m("leaves.dark", "vegetation", (54, 90, 36), **_LEAF),
    _m("leaves.mid", "vegetation", (80, 120, 46), **_LEAF),
    _m("leaves.light", "vegetation", (110, 142, 60), **_LEAF),
    _m("trunk.brown", "vegetation", (86, 66, 50), hi=0.08),
    _m("hedge.green", "vegetation", (62, 102, 46), hi=0.15, mid=0.16, lo=0.06),
    _m("grass.green", "terrain", (128, 158, 78), hi=0.12, mid=0.08, lo=0.1),
    _m("grass.dry", "terrain", (162, 152, 98), hi=0.12, mid=0.06, lo=0.1),
    _m("grass.dirt", "terrain", (152, 128, 96), hi=0.12, lo=0.1),
    _m("skin.light", "person", (216, 176, 146), hi=0.02),
    _m("skin.dark", "person", (140, 100, 76), hi=0.02),
    _m("hair.dark", "person", (46, 36, 30), hi=0.03),
    _m("shirt.red", "person", (182, 42, 46), hi=0.03),
    _m("shirt.blue", "person", (46, 72, 152), hi=0.03),
    _m("shirt.white", "person", (222, 222, 216), hi=0.03),
    _m("shirt.black", "person", (36, 36, 42), hi=0.03),
    _m("shirt.green", "person", (70, 122, 72), hi=0.03),
    _m("shirt.yellow", "person", (222, 190, 62), hi=0.03),
    _m("pants.black", "person", (40, 42, 56), hi=0.03),
    _m("pants.blue", "person", (60, 82, 124), hi=0.03),
    _m("pants.tan", "person", (152, 132, 102), hi=0.03),
    _m("rider_skin.light", "rider", (214, 172, 142), hi=0.02),
    _m("helmet.white", "rider", (226, 226, 226), hi=0.02),
    _m("helmet.black", "rider", (30, 30, 32), hi=0.02),
    _m("helmet.red", "rider", (192, 32, 32), hi=0.02),
    _m("jacket.red", "rider", (186, 38, 40), hi=0.03),
    _m("jacket.black", "rider", (34, 34, 38), hi=0.03),
    _m("jacket.blue", "rider", (40, 70, 160), hi=0.03),
    _m("jacket.orange", "rider", (226, 120, 36), hi=0.03),
    _m("rider_pants.dark", "rider", (44, 46, 60), hi=0.03),
    _m("car_body.silver", "car", (176, 179, 183), **_PAINT),
    _m("car_body.black", "car", (36, 36, 41), **_PAINT),
    _m("car_body.white", "car", (226, 226, 222), **_PAINT),
    _m("car_body.red", "car", (166, 36, 36), **_PAINT),
    _m("car_body.blue", "car", (42, 66, 142), **_PAINT),
    _m("car_body.grey", "car", (86, 89, 93), **_PAINT),
    _m("car_body.green", "car", (52, 92, 72), **_PAINT),
    _m("car_glass.dark", "car", (44, 54, 66), hi=0.02, lo=0.16),
    _m("car_wheel.black", "car", (22, 22, 22), hi=0.03),
    _m("car_tail.red", "car", (192, 26, 26), hi=0.02, glow=(255, 40, 30)),
    _m("car_head.white", "car", (226, 226, 206), hi=0.02, glow=(255, 250, 220)),
    _m("truck_cab.white", "truck", (222, 222, 216), **_PAINT),
    _m("truck_cab.orange", "truck", (212, 120, 40), **_PAINT),
    _m("truck_cab.green", "truck", (60, 112, 72), **_PAINT),
    _m("truck_box.white", "truck", (214, 212, 204), hi=0.03, lo=0.05, stripe=0.04),
    _m("truck_box.grey", "truck", (152, 152, 152), hi=0.03, lo=0.05, stripe=0.04),
    _m("truck_box.blue", "truck", (56, 86, 130), hi=0.03, lo=0.05, stripe=0.04),
    _m("truck_glass.dark", "truck", (40, 50, 60), hi=0.02, lo=0.12),
    _m("truck_wheel.black", "truck", (24, 24, 24), hi=0.03),
    _m("truck_light.red", "truck", (190, 30, 26), hi=0.02, glow=(255, 50, 40)),
    _m("bus_body.yellow", "bus", (226, 186, 42), **_PAINT),
    _m("bus_body.red", "bus", (186, 46, 40), **_PAINT),
    _m("bus_body.blue", "bus", (46, 96, 172), **_PAINT),
    _m("bus_glass.dark", "bus", (36, 46, 56), hi=0.02, lo=0.12),
    _m("bus_wheel.black", "bus", (24, 24, 24), hi=0.03),
    _m("bus_sign.orange", "bus", (60, 40, 20), hi=0.02, glow=(255, 160, 40)),
    _m("train_body.white", "train", (216, 216, 222), **_PAINT),
    _m("train_body.red", "train", (176, 36, 42), **_PAINT),
    _m("train_body.teal", "train", (40, 126, 128), **_PAINT),
    _m("train_stripe.blue", "train", (40, 80, 152), **_PAINT),
    _m("train_stripe.yellow", "train", (230, 200, 40), **_PAINT),
    _m("train_glass.dark", "train", (40, 50, 62), hi=0.02, lo=0.12, glow=(230, 220, 180)),
    _m("moto_body.black", "motorcycle", (30, 30, 33), hi=0.03),
    _m("moto_body.red", "motorcycle", (176, 26, 26), hi=0.03),
    _m("moto_body.blue", "motorcycle", (36, 62, 152), hi=0.03),
    _m("moto_chrome.steel", "motorcycle", (172, 172, 178), hi=0.04),
    _m("moto_wheel.black", "motorcycle", (18, 18, 18), hi=0.03),
    _m("bike_frame.black", "bicycle", (30, 30, 30), hi=0.03),
    _m("bike_frame.blue", "bicycle", (30, 82, 172), hi=0.03),
    _m("bike_frame.red", "bicycle", (192, 40, 40), hi=0.03),
    _m("bike_frame.green", "bicycle", (50, 132, 82), hi=0.03),
    _m("bike_wheel.black", "bicycle", (26, 26, 26), hi=0.03),
    _m("ego.hood", "ego vehicle", (40, 42, 48), hi=0.02, lo=0.25),
    _m("border.black", "rectification border", (0, 0, 0), hi=0.0, lo=0.0),
    _m("static.bin", "static", (72, 92, 72), hi=0.04),
    _m("static.bollard", "static", (64, 64, 66), hi=0.04),
    _m("ground.gravel", "ground", (124, 114, 98), hi=0.14, lo=0.08),
    _m("parking.paved", "parking", (116, 110, 108), hi=0.06, lo=0.06, grid=0.06),
    _m("rail_bed.gravel", "rail track", (108, 98, 88), hi=0.2, lo=0.08),
    _m("rail_steel.rusty", "rail track", (136, 122, 108), hi=0.05),
)

MAT: dict[str, int] = {m.name: i for i, m in enumerate(MATERIALS)}
GROUPS: dict[str, tuple[int, ...]] = {}
for _i, _mat in enumerate(MATERIALS):
    GROUPS[_mat.name.split(".")[0]] = (*GROUPS.get(_mat.name.split(".")[0], ()), _i)

# Lookup tables indexed by material: label id, base colour in [0, 1], texture amplitudes, night glow.
LABEL_OF = np.array([LABEL_ID[m.label] for m in MATERIALS], dtype=np.uint8)
RGB = np.array([m.rgb for m in MATERIALS], dtype=np.float32) / 255.0
TEXTURE = np.array([m.tex for m in MATERIALS], dtype=np.float32)
GLOWS = np.array([m.glow is not None for m in MATERIALS])
GLOW_RGB = np.array([m.glow or (0, 0, 0) for m in MATERIALS], dtype=np.float32) / 255.0
SKY = np.array([m.label == "sky" for m in MATERIALS])
assert len(MATERIALS) <= 256, "material indices are stored in a uint8 canvas"


def pick(rng: np.random.Generator, group: str) -> int:
    """A random variant (material index) of a material group, e.g. `pick(rng, "car_body")`."""
    ids = GROUPS[group]
    return ids[int(rng.integers(len(ids)))]
