"""`raymh predict` output formats: names, and label values that read back to the same classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raymh.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, label_id_to_train_id_lut
from raymh.infer.formats import FORMATS, get_format

CITYSCAPES = {"classes": list(CITYSCAPES_CLASSES), "palette": [list(c) for c in CITYSCAPES_PALETTE]}
CUSTOM = {"classes": ["flat", "sky", "thing"], "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}


def _pred(num_classes: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, num_classes, size=(24, 40)).astype(np.uint8)


@pytest.mark.parametrize("name", ["trainid", "color", "cityscapes", "bdd100k"])
def test_readable_formats_round_trip_to_the_same_classes(name):
    pred = _pred(19)
    f = get_format(name)
    data = f.encode(pred, None, CITYSCAPES)
    np.testing.assert_array_equal(f.decode(data, CITYSCAPES), pred)


def test_cityscapes_format_holds_official_label_ids():
    pred = _pred(19)
    ids = np.asarray(Image.open(io.BytesIO(get_format("cityscapes").encode(pred, None, CITYSCAPES))))
    np.testing.assert_array_equal(label_id_to_train_id_lut()[ids], pred)  # the official table maps them back
    assert ids.max() <= 33 and 7 in np.unique(ids)  # road is label id 7


def test_color_is_a_palette_png_in_the_domain_colours():
    pred = _pred(3)
    im = Image.open(io.BytesIO(get_format("color").encode(pred, None, CUSTOM)))
    assert im.mode == "P"
    rgb = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rgb, np.asarray(CUSTOM["palette"], dtype=np.uint8)[pred])


def test_overlay_blends_image_and_colours_as_jpeg():
    pred = np.zeros((16, 16), np.uint8)
    image = np.full((16, 16, 3), 200, np.uint8)
    im = Image.open(io.BytesIO(get_format("overlay").encode(pred, image, CITYSCAPES)))
    assert im.format == "JPEG" and im.size == (16, 16)
    assert np.abs(np.asarray(im).astype(int) - [164, 132, 164]).max() <= 3  # (200 + road colour) / 2
    with pytest.raises(ValueError, match="cannot be read back"):
        get_format("overlay").decode(b"", CITYSCAPES)


def test_output_names_mirror_inputs():
    assert get_format("cityscapes").relpath("frankfurt/frankfurt_000000_000019_leftImg8bit.png") == (
        "frankfurt/frankfurt_000000_000019_pred.png"
    )
    assert get_format("bdd100k").relpath("val/0a1b-2c3d.jpg") == "val/0a1b-2c3d.png"
    assert get_format("overlay").relpath("a/b/c.png") == "a/b/c.jpg"
    assert get_format("trainid").relpath("val/aachen_000000_000019") == "val/aachen_000000_000019.png"
    assert set(FORMATS) == {"trainid", "color", "overlay", "cityscapes", "bdd100k"}


def test_formats_refuse_classes_they_cannot_express():
    with pytest.raises(ValueError, match=r"--format cityscapes.*domain 'coarse'.*\['flat', 'thing'\]"):
        get_format("cityscapes").check("coarse", CUSTOM)
    with pytest.raises(ValueError, match=r"--format bdd100k.*19 Cityscapes classes"):
        get_format("bdd100k").check("coarse", CUSTOM)
    get_format("cityscapes").check("cs", CITYSCAPES)
    get_format("trainid").check("coarse", CUSTOM)
    with pytest.raises(ValueError, match="unknown output format 'png'"):
        get_format("png")
