"""Per-sample transforms: decoding, the labeled scale/crop/flip, the overlapping crop pair, val resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raymh.data.transforms import (
    IGNORE_INDEX,
    MEAN_COLOR,
    crop_iou,
    decode_image,
    decode_label,
    overlap_crop_pair,
    scale_crop_flip,
    val_resize,
)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _unflip(array: np.ndarray, flip: bool) -> np.ndarray:
    return array[:, ::-1] if flip else array


# ------------------------------------------------------------------------------------------------ decoding
def test_decode_round_trip_and_label_mode_error():
    rng = np.random.default_rng(0)
    image = _noise(rng, 7, 9)
    label = rng.integers(0, 19, size=(7, 9), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_png(image)), image)
    assert decode_image(_png(image)).shape == (7, 9, 3)
    np.testing.assert_array_equal(decode_label(_png(label, "L")), label)
    with pytest.raises(ValueError, match="mode 'RGB'"):
        decode_label(_png(image))
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"not a png")


# ------------------------------------------------------------------------------------------------ labeled
def test_scale_crop_flip_shapes_values_and_padding():
    rng = np.random.default_rng(1)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(5, 60, size=2))
        image = _noise(rng, h, w)
        label = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(h, w))
        img, lab = scale_crop_flip(image, label, rng=rng, crop_size=(24, 32))
        assert img.shape == (24, 32, 3) and img.dtype == np.uint8
        assert lab.shape == (24, 32) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 3, 7, IGNORE_INDEX}

    # no rescale, image smaller than the crop: the source sits in a corner, the rest is padding
    image, label = _noise(rng, 10, 12), np.full((10, 12), 4, dtype=np.uint8)
    img, lab = scale_crop_flip(image, label, rng=rng, crop_size=(16, 16), scale_range=(1.0, 1.0))
    assert (lab == 4).sum() == 10 * 12
    assert (lab[10:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(
        img[lab == IGNORE_INDEX], np.broadcast_to(MEAN_COLOR, ((lab == 255).sum(), 3))
    )


def test_scale_crop_flip_is_identity_or_flip_at_crop_size():
    rng = np.random.default_rng(2)
    image = _noise(rng, 16, 24)
    label = rng.integers(0, 19, size=(16, 24), dtype=np.uint8)
    seen = set()
    for _ in range(20):
        img, lab = scale_crop_flip(image, label, rng=rng, crop_size=(16, 24), scale_range=(1.0, 1.0))
        flipped = np.array_equal(img, image[:, ::-1])
        assert flipped or np.array_equal(img, image)
        np.testing.assert_array_equal(lab, label[:, ::-1] if flipped else label)
        seen.add(flipped)
    assert seen == {True, False}


def test_scale_crop_flip_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="sizes differ"):
        scale_crop_flip(
            np.zeros((4, 5, 3), np.uint8),
            np.zeros((4, 6), np.uint8),
            rng=np.random.default_rng(),
            crop_size=(8, 8),
        )


# ---------------------------------------------------------------------------------------------- unlabeled
@pytest.mark.parametrize("crop", [(16, 16), (24, 40)])
def test_overlap_boxes_cut_the_same_content(crop):
    """Box regions of both crops (flips undone) hold the same pixels; boxes on the 8-grid; IoU in range."""
    rng = np.random.default_rng(3)
    moved = 0
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(6, 70, size=2))  # some need padding, some are large
        out = overlap_crop_pair(_noise(rng, h, w), rng=rng, crop_size=crop, photometric=False)
        assert out["image1"].shape == out["image2"].shape == (*crop, 3)
        assert out["valid1"].shape == out["valid2"].shape == crop and out["valid1"].dtype == bool
        b1, b2 = out["box1"], out["box2"]
        assert b1.dtype == b2.dtype == np.int32
        assert (b1 % 8 == 0).all() and (b2 % 8 == 0).all()
        assert (b1[2:] - b1[:2] == b2[2:] - b2[:2]).all() and (b1[2:] > b1[:2]).all()
        assert (b1[:2] >= 0).all() and b1[2] <= crop[0] and b1[3] <= crop[1]
        area = int((b1[2] - b1[0]) * (b1[3] - b1[1]))
        iou = area / (2 * crop[0] * crop[1] - area)
        assert 0.1 <= iou <= 1.0
        moved += area < crop[0] * crop[1]
        for key in ("image", "valid"):
            a = _unflip(out[f"{key}1"], out["flip1"])[b1[0] : b1[2], b1[1] : b1[3]]
            b = _unflip(out[f"{key}2"], out["flip2"])[b2[0] : b2[2], b2[1] : b2[3]]
            np.testing.assert_array_equal(a, b)
        # padding is invalid and carries the mean colour
        img1 = out["image1"]
        np.testing.assert_array_equal(
            img1[~out["valid1"]], np.broadcast_to(MEAN_COLOR, ((~out["valid1"]).sum(), 3))
        )
    assert moved > 50  # crop 2 really moves in most draws, so the checks above are not vacuous


def test_overlap_pair_falls_back_to_the_same_crop():
    """No stride-8 offset of a 16x16 crop has IoU in [0.9, 0.99]: after the tries, crop 2 = crop 1."""
    rng = np.random.default_rng(4)
    assert crop_iou((8, 0), (16, 16)) < 0.9 and crop_iou((0, 0), (16, 16)) > 0.99
    for _ in range(10):
        out = overlap_crop_pair(
            _noise(rng, 40, 50), rng=rng, crop_size=(16, 16), iou_range=(0.9, 0.99), photometric=False
        )
        assert out["box1"].tolist() == out["box2"].tolist() == [0, 0, 16, 16]
        np.testing.assert_array_equal(
            _unflip(out["image1"], out["flip1"]), _unflip(out["image2"], out["flip2"])
        )


def test_overlap_pair_valid_counts_source_pixels():
    rng = np.random.default_rng(5)
    out = overlap_crop_pair(_noise(rng, 10, 13), rng=rng, crop_size=(16, 16), scale_range=(1.0, 1.0))
    assert out["valid1"].sum() == out["valid2"].sum() == 10 * 13


def test_overlap_pair_photometric_changes_pixels_but_not_geometry():
    rng = np.random.default_rng(6)
    image = _noise(rng, 32, 32)
    changed = 0
    for seed in range(6):
        plain = overlap_crop_pair(
            image, rng=np.random.default_rng(seed), crop_size=(16, 16), photometric=False
        )
        aug = overlap_crop_pair(image, rng=np.random.default_rng(seed), crop_size=(16, 16), photometric=True)
        for key in ("box1", "box2", "flip1", "valid1"):
            np.testing.assert_array_equal(plain[key], aug[key])
        assert aug["image1"].dtype == np.uint8 and aug["image1"].shape == (16, 16, 3)
        changed += not np.array_equal(plain["image1"], aug["image1"])
    assert changed >= 3


def test_overlap_pair_rejects_crop_off_grid():
    with pytest.raises(ValueError, match="multiple of 8"):
        overlap_crop_pair(np.zeros((30, 30, 3), np.uint8), rng=np.random.default_rng(), crop_size=(20, 16))


# ---------------------------------------------------------------------------------------------------- val
def test_val_resize_untouched_or_fixed_size():
    rng = np.random.default_rng(7)
    image, label = _noise(rng, 10, 14), rng.choice(np.array([1, 2, 255], np.uint8), size=(10, 14))
    same_img, same_lab = val_resize(image, label)
    assert same_img is image and same_lab is label
    img, lab = val_resize(image, label, size=(16, 24))
    assert img.shape == (16, 24, 3) and lab.shape == (16, 24)
    assert set(np.unique(lab)) <= {1, 2, 255}
