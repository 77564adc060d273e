"""The synthetic street-scene renderer: native layouts and encodings, determinism, distinct looks, classes."""

from __future__ import annotations

import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymh.data.labels import CITYSCAPES_LABELS, IGNORE_INDEX, LABEL_ID, label_id_to_train_id_lut
from raymh.data.synth import DOMAINS, render_dataset, render_sample

TINY = {"images": 3, "val_images": 2, "size": (64, 128)}
VALID_IDS = {lab.id for lab in CITYSCAPES_LABELS}
VOID_IDS = {lab.id for lab in CITYSCAPES_LABELS if lab.train_id == IGNORE_INDEX}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    return out, render_dataset(out, seed=0, **TINY)


def _values(paths) -> set[int]:
    return set().union(*(np.unique(np.asarray(Image.open(p))).tolist() for p in paths))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_summary_counts_and_paths(tiny):
    out, summary = tiny
    assert set(summary["domains"]) == set(DOMAINS)
    assert summary["domains"]["cityscapes"]["counts"] == {"train": 3, "val": 2}
    assert summary["domains"]["bdd100k"]["counts"] == {"train": 3, "val": 2}
    assert summary["domains"]["synscapes"]["counts"] == {"all": 5}
    assert summary["images_written"] == 15 and summary["images_per_s"] > 0
    for info in summary["domains"].values():
        assert Path(info["images"]).is_dir() and Path(info["labels"]).is_dir()
        assert Path(info["root"]).parent == out


def test_cityscapes_layout_and_label_ids(tiny):
    root = tiny[0] / "cityscapes"
    for split, n in (("train", 3), ("val", 2)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == n
        labels = []
        for img in images:
            city = img.parent.name
            stem = img.name.removesuffix("_leftImg8bit.png")
            assert stem.startswith(city + "_") and [len(p) for p in stem.split("_")[1:]] == [6, 6]
            lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            assert lab.is_file(), lab
            with Image.open(img) as im, Image.open(lab) as lm:
                assert (im.mode, lm.mode, im.size, lm.size) == ("RGB", "L", (128, 64), (128, 64))
            labels.append(lab)
        values = _values(labels)
        assert values <= VALID_IDS, values - VALID_IDS
        assert {LABEL_ID["ego vehicle"], LABEL_ID["rectification border"]} <= values
        assert values & VOID_IDS and values - VOID_IDS
    assert {p.parent.name for p in (root / "leftImg8bit").glob("*/*/*.png")} >= {"aachen", "frankfurt"}


def test_bdd100k_layout_and_train_ids(tiny):
    root = tiny[0] / "bdd100k"
    for split, n in (("train", 3), ("val", 2)):
        images = sorted((root / "images" / "10k" / split).glob("*.jpg"))
        masks = sorted((root / "labels" / "sem_seg" / "masks" / split).glob("*.png"))
        assert len(images) == n and [p.stem for p in images] == [p.stem for p in masks]
        for img, mask in zip(images, masks, strict=True):
            with Image.open(img) as im, Image.open(mask) as mm:
                assert (im.format, im.mode, mm.mode, im.size, mm.size) == (
                    "JPEG",
                    "RGB",
                    "L",
                    (128, 64),
                    (128, 64),
                )
        values = _values(masks)
        assert values <= set(range(19)) | {255}, values
        assert 255 in values and len(values - {255}) >= 8  # the hood is void; many classes are drawn


def test_synscapes_layout_and_label_ids(tiny):
    root = tiny[0] / "synscapes"
    names = sorted(p.name for p in (root / "img" / "rgb").glob("*.png"))
    assert names == sorted(f"{n}.png" for n in range(1, 6))
    assert sorted(p.name for p in (root / "img" / "class").glob("*.png")) == names
    assert not any(p.is_dir() for p in (root / "img" / "rgb").iterdir())  # no split folders
    with Image.open(root / "img" / "rgb" / "1.png") as im, Image.open(root / "img" / "class" / "1.png") as lm:
        assert (im.mode, lm.mode) == ("RGB", "L")
    values = _values((root / "img" / "class").glob("*.png"))
    assert values <= VALID_IDS and LABEL_ID["ego vehicle"] not in values


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    out, _ = tiny
    render_dataset(tmp_path / "again", seed=0, **TINY)
    render_dataset(tmp_path / "other", seed=1, **TINY)
    first, again, other = (
        _tree_hashes(out),
        _tree_hashes(tmp_path / "again"),
        _tree_hashes(tmp_path / "other"),
    )
    assert first == again
    images = [k for k in first if k.endswith((".jpg", "leftImg8bit.png")) or "/rgb/" in k]
    shared = [k for k in images if k in other]  # BDD ids depend on the seed, so their names differ
    assert len(shared) == 10 and all(first[k] != other[k] for k in shared)
    assert set(first) != set(other)


def test_render_sample_is_deterministic_and_consistent():
    a = render_sample("bdd100k", index=4, split="val", size=(64, 128), seed=3)
    b = render_sample("bdd100k", index=4, split="val", size=(64, 128), seed=3)
    c = render_sample("bdd100k", index=5, split="val", size=(64, 128), seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "label_ids", "train_ids"))
    assert not np.array_equal(a["label_ids"], c["label_ids"])
    assert a["image"].shape == (64, 128, 3) and a["label_ids"].shape == (64, 128)
    assert np.array_equal(a["train_ids"], label_id_to_train_id_lut()[a["label_ids"]])


def _mean_saturation(domain: str) -> float:
    split = "all" if domain == "synscapes" else "train"
    sats = []
    for i in range(6):
        x = render_sample(domain, index=i, split=split, size=(64, 128), seed=0)["image"].astype(np.float32)
        hi, lo = x.max(-1), x.min(-1)
        sats.append(float(np.mean((hi - lo) / np.maximum(hi, 1.0))))
    return float(np.mean(sats))


def test_domains_look_different():
    sat = {d: _mean_saturation(d) for d in DOMAINS}
    assert sat["cityscapes"] < sat["bdd100k"] < sat["synscapes"], sat  # muted < varied < saturated
    for a, b in combinations(DOMAINS, 2):
        assert abs(sat[a] - sat[b]) > 0.06, (a, b, sat)


def test_every_class_appears_at_default_size(tmp_path):
    summary = render_dataset(tmp_path, images=8, val_images=0, domains=["cityscapes"])
    labels = sorted(Path(summary["domains"]["cityscapes"]["labels"]).rglob("*_labelIds.png"))
    assert len(labels) == 8
    lut = label_id_to_train_id_lut()
    with Image.open(labels[0]) as lm:
        assert lm.size == (512, 256)
    present = set().union(*(np.unique(lut[np.asarray(Image.open(p))]).tolist() for p in labels))
    assert set(range(19)) <= present, sorted(set(range(19)) - present)


def _edge_contrast(domain: str, shift: int) -> float:
    """Mean image gradient on label boundaries over that off them (labels shifted right by `shift` px)."""
    split = "all" if domain == "synscapes" else "train"
    ratios = []
    for i in range(1, 5):
        sample = render_sample(domain, index=i, split=split, size=(64, 128), seed=0)
        lab, img = np.roll(sample["label_ids"], shift, axis=1), sample["image"].astype(np.float32)
        edge = lab[:, 1:] != lab[:, :-1]
        grad = np.abs(img[:, 1:] - img[:, :-1]).sum(-1)
        ratios.append(grad[edge].mean() / grad[~edge].mean())
    return float(np.mean(ratios))


@pytest.mark.parametrize("domain", DOMAINS)
def test_label_boundaries_are_image_edges(domain):
    """Labels are exactly what is drawn: class boundaries sit on image edges, and stop doing so when shifted."""
    aligned, shifted = _edge_contrast(domain, 0), _edge_contrast(domain, 5)
    assert aligned > shifted + 0.3, (aligned, shifted)
    if domain != "bdd100k":  # BDD's night, fog and motion blur soften edges on purpose
        assert aligned > 2.0, aligned


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="size"):
        render_dataset(tmp_path / "a", size=(8, 16))
    with pytest.raises(ValueError, match="kitti"):
        render_dataset(tmp_path / "b", domains=["kitti"])
    with pytest.raises(ValueError, match="images"):
        render_dataset(tmp_path / "c", images=0)
    render_dataset(tmp_path / "d", images=1, val_images=0, size=(32, 64), domains=["synscapes"])
    with pytest.raises(FileExistsError, match="overwrite"):
        render_dataset(tmp_path / "d", images=1, val_images=0, size=(32, 64), domains=["synscapes"])
    render_dataset(
        tmp_path / "d", images=1, val_images=0, size=(32, 64), domains=["synscapes"], overwrite=True
    )


def test_cityscapes_layout_ships_instance_ids_and_colour_images_as_the_real_dataset(tiny):
    from raymh.data.labels import CITYSCAPES_LABELS

    out, _ = tiny
    gt = out / "cityscapes" / "gtFine"
    labels = sorted(gt.rglob("*_gtFine_labelIds.png"))
    assert labels
    colour = {lab.id: lab.color for lab in CITYSCAPES_LABELS}
    seen_instances = 0
    for lab_path in labels:
        ids = np.asarray(Image.open(lab_path))
        inst = np.asarray(Image.open(str(lab_path).replace("_labelIds", "_instanceIds")))
        rgb = np.asarray(Image.open(str(lab_path).replace("_labelIds", "_color")).convert("RGB"))
        assert inst.shape == ids.shape and rgb.shape == (*ids.shape, 3)
        # cityscapesScripts' rule: an instance id >= 1000 encodes label_id * 1000 + index; below, the label id
        np.testing.assert_array_equal(np.where(inst >= 1000, inst // 1000, inst), ids)
        assert (inst[ids >= 24] >= 1000).all() and (inst[ids < 24] < 1000).all()
        seen_instances += len(np.unique(inst[inst >= 1000]))
        for label_id in np.unique(ids):
            assert (rgb[ids == label_id] == colour[int(label_id)]).all()
    assert seen_instances > 0
