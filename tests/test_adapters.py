"""Dataset adapters on tiny fixtures in each kind's native layout."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import BUILDERS, CITYSCAPES_PROBE, FOLDER_CLASSES, make_folder, make_synscapes, write_classes

from raymh.data.adapters import ADAPTERS, AdapterError, Sample, generated_palette, get_adapter
from raymh.data.labels import CITYSCAPES_CLASSES


def test_registry_names_every_kind_and_unknown_kind_lists_them():
    assert set(ADAPTERS) == {"cityscapes", "bdd100k", "synscapes", "folder"}
    assert all(get_adapter(kind).kind == kind for kind in ADAPTERS)
    with pytest.raises(
        AdapterError, match="unknown dataset kind 'kitti'.*bdd100k, cityscapes, folder, synscapes"
    ):
        get_adapter("kitti")


def test_get_adapter_rejects_options_the_kind_does_not_take():
    assert get_adapter("synscapes", val_fraction=0.5, seed=3).val_fraction == 0.5
    with pytest.raises(AdapterError, match=r"'cityscapes' takes no option\(s\) \['val_fraction'\]"):
        get_adapter("cityscapes", val_fraction=0.5)


@pytest.mark.parametrize("kind", ["cityscapes", "bdd100k", "folder"])
def test_official_splits_list_every_sample_with_its_label(kind, tmp_path):
    fx = BUILDERS[kind](tmp_path / kind, train=3, val=2)
    adapter = get_adapter(kind)
    assert adapter.splits(fx["root"]) == ["train", "val"]
    for split in ("train", "val"):
        samples = adapter.samples(fx["root"], split)
        expected = fx["samples"][split]
        assert [s.id for s in samples] == sorted(expected)
        for s in samples:
            assert isinstance(s, Sample)
            assert s.image == expected[s.id]["image"] and s.label == expected[s.id]["label"]


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_adapter_has_a_consistent_label_map(kind, tmp_path):
    root = BUILDERS[kind](tmp_path / kind)["root"]
    adapter = get_adapter(kind)
    classes, palette = adapter.classes(root), adapter.palette(root)
    lut, valid = adapter.label_lut(root), adapter.label_values(root)
    assert len(classes) == len(palette) and len(set(classes)) == len(classes)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert valid.shape == (256,) and valid.dtype == bool
    # valid raw values land on a class or on ignore; every class is reachable from some valid value
    assert set(lut[valid].tolist()) == set(range(len(classes))) | {255}


def test_cityscapes_maps_label_ids_by_the_official_table(tmp_path):
    root = BUILDERS["cityscapes"](tmp_path / "cs")["root"]
    adapter = get_adapter("cityscapes")
    lut, valid = adapter.label_lut(root), adapter.label_values(root)
    assert (lut[7], lut[26], lut[1], lut[33]) == (0, 13, 255, 18)
    assert (lut[8], lut[24], lut[0]) == (1, 11, 255)
    assert valid[:34].all() and not valid[34:].any()  # 40 is "not in the label map"
    assert adapter.classes(root) == list(CITYSCAPES_CLASSES) and len(adapter.classes(root)) == 19
    assert adapter.palette(root)[0] == (128, 64, 128)


def test_cityscapes_fixture_labels_map_pixel_by_pixel(tmp_path):
    fx = BUILDERS["cityscapes"](tmp_path / "cs")
    lut = get_adapter("cityscapes").label_lut(fx["root"])
    raw = next(iter(fx["samples"]["train"].values()))["raw"]
    assert raw[0, : len(CITYSCAPES_PROBE)].tolist() == list(CITYSCAPES_PROBE)
    assert lut[raw][0, :4].tolist() == [0, 13, 255, 18]


def test_cityscapes_ids_are_city_seq_frame(tmp_path):
    adapter = get_adapter("cityscapes")
    assert adapter.id_from_image("x/aachen/aachen_000000_000019_leftImg8bit.png") == "aachen_000000_000019"
    samples = adapter.samples(BUILDERS["cityscapes"](tmp_path / "cs")["root"], "val")
    assert [s.id for s in samples] == ["frankfurt_000000_000019"]
    assert samples[0].label.name == "frankfurt_000000_000019_gtFine_labelIds.png"


def test_bdd100k_labels_are_train_ids_with_255_ignore(tmp_path):
    root = BUILDERS["bdd100k"](tmp_path / "bdd")["root"]
    adapter = get_adapter("bdd100k")
    lut, valid = adapter.label_lut(root), adapter.label_values(root)
    assert lut[:19].tolist() == list(range(19)) and lut[255] == 255
    assert valid[:19].all() and valid[255] and not valid[19:255].any()


def _split_ids(root, **options):
    adapter = get_adapter("synscapes", **options)
    return {split: [s.id for s in adapter.samples(root, split)] for split in ("train", "val")}


def test_synscapes_split_is_seeded_recorded_and_covers_every_sample(tmp_path):
    root = make_synscapes(tmp_path / "syn", n=10)["root"]
    ids = _split_ids(root)
    assert sorted(ids["train"] + ids["val"]) == sorted(str(i) for i in range(1, 11))
    assert len(ids["val"]) == 2  # round(0.2 * 10)
    assert _split_ids(root) == ids
    # same data written in another order -> same split
    other = make_synscapes(tmp_path / "syn2", order=[7, 3, 10, 1, 9, 2, 8, 4, 6, 5])["root"]
    assert _split_ids(other) == ids
    assert len({tuple(_split_ids(root, seed=s)["val"]) for s in range(6)}) > 1
    assert len(_split_ids(root, val_fraction=0.5)["val"]) == 5
    info = get_adapter("synscapes", seed=4).split_info(root)
    assert info["seed"] == 4 and info["val_fraction"] == 0.2


def test_synscapes_keeps_at_least_one_val_and_one_train_sample(tmp_path):
    root = make_synscapes(tmp_path / "syn", n=2)["root"]
    for fraction in (0.01, 0.99):
        ids = _split_ids(root, val_fraction=fraction)
        assert len(ids["val"]) == 1 and len(ids["train"]) == 1
    with pytest.raises(AdapterError, match="val_fraction must be in"):
        get_adapter("synscapes", val_fraction=1.0)


def test_folder_with_seven_named_coloured_classes(tmp_path):
    fx = make_folder(tmp_path / "mine", train=3, val=1)
    adapter = get_adapter("folder")
    root = fx["root"]
    assert adapter.classes(root) == [c["name"] for c in FOLDER_CLASSES]
    assert adapter.palette(root) == [tuple(c["color"]) for c in FOLDER_CLASSES]
    lut, valid = adapter.label_lut(root), adapter.label_values(root)
    assert lut[:7].tolist() == list(range(7)) and lut[255] == 255
    assert valid[:7].all() and valid[255] and not valid[7:255].any()
    assert {s.image.suffix for s in adapter.samples(root, "train")} == {".png", ".jpg"}
    assert adapter.default_domain(root) == "mine"


def test_folder_names_only_gets_a_generated_palette_and_custom_ignore(tmp_path):
    root = make_folder(tmp_path / "f", names_only=True, ignore_index=200)["root"]
    adapter = get_adapter("folder")
    palette = adapter.palette(root)
    assert palette == generated_palette(7) and len(set(palette)) == 7
    lut, valid = adapter.label_lut(root), adapter.label_values(root)
    assert lut[200] == 255 and valid[200] and not valid[255]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("classes: [road, car", "not valid YAML"),
        ({"names": ["road"]}, "mapping with a `classes` list"),
        ({"classes": []}, "non-empty list"),
        ({"classes": ["road", "road"]}, r"unique; repeated: \['road'\]"),
        ({"classes": [{"name": "road", "color": [1, 2]}]}, r"classes\[0\]: color must be three integers"),
        ({"classes": [{"name": "road", "colour": [1, 2, 3]}]}, r"classes\[0\]: expected a name or"),
        ({"classes": ["road"], "ignore": 255}, r"unknown key\(s\) \['ignore'\]"),
        ({"classes": ["road", "car"], "ignore_index": 1}, "ignore_index must be an integer in 2..255"),
        ({"classes": [{"name": "road", "color": [1, 2, 3]}, "car"]}, "for every class or for none"),
    ],
)
def test_folder_rejects_a_malformed_classes_yaml_naming_it(tmp_path, content, message):
    path = write_classes(tmp_path / "f", content)
    with pytest.raises(AdapterError, match=message) as err:
        get_adapter("folder").classes(path.parent)
    assert str(path) in str(err.value)


def test_folder_without_classes_yaml_says_what_to_write(tmp_path):
    (tmp_path / "f" / "images" / "train").mkdir(parents=True)
    with pytest.raises(AdapterError, match=r"classes.yaml not found; write it, e\.g\. classes: \["):
        get_adapter("folder").samples(tmp_path / "f", "train")


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_no_samples_names_the_root_and_the_expected_layout(kind, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    if kind == "folder":
        write_classes(root, {"classes": ["a"]})
    adapter = get_adapter(kind)
    with pytest.raises(AdapterError, match="no 'train' samples found") as err:
        adapter.samples(root, "train")
    assert str(root) in str(err.value) and adapter.layout.format(split="train") in str(err.value)
    with pytest.raises(AdapterError, match="is not a directory"):
        adapter.samples(tmp_path / "absent", "train")
    with pytest.raises(AdapterError, match="unknown split 'test'"):
        adapter.samples(root, "test")


def test_duplicate_ids_in_a_split_are_an_error(tmp_path):
    fx = make_folder(tmp_path / "f", train=1)
    first = fx["samples"]["train"]["train_0"]["image"]
    (first.parent / "train_0.jpg").write_bytes(b"x")
    with pytest.raises(AdapterError, match="'train_0'"):
        get_adapter("folder").samples(fx["root"], "train")
