"""`prepare_domain` and the `raymh data` CLI: Parquet shards, manifest, bad-file reports, no partial output."""

from __future__ import annotations

import io
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fixtures import BUILDERS, make_cityscapes, make_synscapes
from PIL import Image

from raymh.data.adapters import Sample, get_adapter
from raymh.data.cli import data_group
from raymh.data.prepare import (
    PrepareError,
    check_sample,
    label_histogram,
    prepare_domain,
    read_manifest,
    split_files,
)


def _rows(out, split):
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / split).glob("part-*.parquet"))])


def _decode(png):
    return np.asarray(Image.open(io.BytesIO(png)))


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_parquet_columns_types_and_contents(tmp_path):
    fx = make_cityscapes(tmp_path / "cs", train=3, val=1)
    out = tmp_path / "prepared" / "cs"
    manifest = prepare_domain(kind="cityscapes", root=fx["root"], out=out, shard_rows=2, workers=2)
    assert [p.name for p in sorted((out / "train").iterdir())] == ["part-00000.parquet", "part-00001.parquet"]
    lut = get_adapter("cityscapes").label_lut(fx["root"])
    for split in ("train", "val"):
        table = _rows(out, split)
        assert table.schema.names == ["id", "image", "label", "height", "width"]
        assert [f.type for f in table.schema] == [
            pa.string(),
            pa.binary(),
            pa.binary(),
            pa.int32(),
            pa.int32(),
        ]
        assert table.column("id").to_pylist() == sorted(fx["samples"][split])
        for row in table.to_pylist():
            src = fx["samples"][split][row["id"]]
            assert row["image"] == src["image"].read_bytes()  # original bytes, no re-encode
            label = Image.open(io.BytesIO(row["label"]))
            assert label.mode == "L" and label.format == "PNG"
            np.testing.assert_array_equal(np.asarray(label), lut[src["raw"]])
            assert np.asarray(label)[0, :4].tolist() == [0, 13, 255, 18]  # raw 7, 26, 1, 33
            assert (row["height"], row["width"]) == (16, 32)
    assert manifest == read_manifest(out)
    assert manifest["domain"] == "cityscapes" and manifest["kind"] == "cityscapes"
    assert manifest["num_classes"] == 19 == len(manifest["classes"]) == len(manifest["palette"])
    assert manifest["ignore_index"] == 255 and manifest["format_version"] == 1
    assert manifest["counts"] == {"train": 3, "val": 1}
    assert manifest["shards"]["train"] == ["part-00000.parquet", "part-00001.parquet"]
    assert manifest["source_root"] == str(fx["root"].resolve())
    assert split_files(out, "val") == [out / "val" / "part-00000.parquet"]
    assert _leftovers(out.parent, "cs") == []


@pytest.mark.parametrize("kind", ["bdd100k", "synscapes", "folder"])
def test_every_kind_prepares_to_train_ids(kind, tmp_path):
    fx = BUILDERS[kind](tmp_path / "raw")
    adapter = get_adapter(kind)
    lut = adapter.label_lut(fx["root"])
    raw = {i: s for split in fx["samples"].values() for i, s in split.items()}
    manifest = prepare_domain(kind=kind, root=fx["root"], out=tmp_path / "out", domain="d1", workers=1)
    assert manifest["domain"] == "d1" and manifest["classes"] == adapter.classes(fx["root"])
    assert sum(manifest["counts"].values()) == len(raw)
    for split in ("train", "val"):
        for row in _rows(tmp_path / "out", split).to_pylist():
            assert row["image"] == raw[row["id"]]["image"].read_bytes()
            np.testing.assert_array_equal(_decode(row["label"]), lut[raw[row["id"]]["raw"]])


def test_content_hash_is_stable_and_covers_the_pixels(tmp_path):
    fx = make_cityscapes(tmp_path / "cs")
    hashes = [
        prepare_domain(kind="cityscapes", root=fx["root"], out=tmp_path / f"o{i}")["content_hash"]
        for i in (1, 2)
    ]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64
    sample = fx["samples"]["train"]["aachen_000000_000019"]
    raw = sample["raw"].copy()
    raw[5, 5] = 26 if raw[5, 5] != 26 else 7
    Image.fromarray(raw).save(sample["label"])
    changed = prepare_domain(kind="cityscapes", root=fx["root"], out=tmp_path / "o3")["content_hash"]
    assert changed != hashes[0]


def test_synscapes_split_options_are_recorded(tmp_path):
    root = make_synscapes(tmp_path / "syn", n=6)["root"]
    manifest = prepare_domain(
        kind="synscapes", root=root, out=tmp_path / "o", options={"val_fraction": 0.5, "seed": 2}
    )
    assert manifest["counts"] == {"train": 3, "val": 3}
    assert manifest["split_rule"]["seed"] == 2 and manifest["split_rule"]["val_fraction"] == 0.5


def _break(fx):
    """Four bad train samples, one of each kind of fault; returns {path: reason fragment}."""
    root = fx["root"]
    train = fx["samples"]["train"]
    corrupt, missing, mismatch, outside = (train[i] for i in sorted(train)[:4])
    corrupt["image"].write_bytes(corrupt["image"].read_bytes()[:40])
    missing["label"].unlink()
    Image.fromarray(np.full((16, 30), 7, dtype=np.uint8)).save(mismatch["label"])
    raw = outside["raw"].copy()
    raw[3, 3] = 40
    Image.fromarray(raw).save(outside["label"])
    assert root.is_dir()
    return {
        str(corrupt["image"]): "unreadable image: ",
        str(missing["image"]): "missing label",
        str(mismatch["label"]): "size mismatch: image 32x16 vs label 30x16",
        str(outside["label"]): "value 40 not in the label map",
    }


def test_bad_files_are_each_reported_and_nothing_is_written(tmp_path):
    fx = make_cityscapes(tmp_path / "cs", train=5, val=1)
    expected = _break(fx)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(PrepareError) as err:
        prepare_domain(kind="cityscapes", root=fx["root"], out=out)
    message = str(err.value)
    assert message.startswith("4 bad file(s)")
    for path, reason in expected.items():
        assert f"{path}: {reason}" in message
    assert {b["path"] for b in err.value.bad} == set(expected)
    assert not (tmp_path / "new").exists()  # no output, no temp dir, not even the parents it made
    assert _leftovers(tmp_path, "cs") == []


def test_bad_files_through_the_cli_exit_nonzero_and_leave_nothing(tmp_path):
    fx = make_cityscapes(tmp_path / "cs", train=5, val=1)
    expected = _break(fx)
    out = tmp_path / "out"
    args = ["prepare", "--kind", "cityscapes", "--root", str(fx["root"]), "--out", str(out)]
    result = CliRunner().invoke(data_group, args)
    assert result.exit_code == 1
    for path, reason in expected.items():
        assert f"{path}: {reason}" in result.stderr
    assert not out.exists() and _leftovers(tmp_path, "out") == []

    result = CliRunner().invoke(data_group, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bad_files.json").read_text())
    assert {b["path"]: b["reason"] for b in report}.keys() == expected.keys()
    assert all(b["split"] == "train" for b in report)
    manifest = read_manifest(out)
    good = sorted(fx["samples"]["train"])[4:]
    assert manifest["counts"] == {"train": 1, "val": 1} and manifest["bad_files"] == 4
    assert _rows(out, "train").column("id").to_pylist() == good
    assert "Bad files left out: 4" in result.output


def test_check_sample_unlabeled_and_non_single_channel_labels(tmp_path):
    adapter = get_adapter("bdd100k")
    lut, valid = adapter.label_lut(tmp_path), adapter.label_values(tmp_path)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(image)
    unlabeled = check_sample("train", Sample("a", image, None), lut=lut, valid=valid)
    assert (
        unlabeled.reason is None
        and unlabeled.label_png is None
        and (unlabeled.height, unlabeled.width) == (4, 6)
    )
    rgb_label = tmp_path / "a_label.png"
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(rgb_label)
    checked = check_sample("train", Sample("a", image, rgb_label), lut=lut, valid=valid)
    assert checked.bad_path == rgb_label and checked.reason.startswith(
        "label has mode RGB; expected one channel"
    )
    several = tmp_path / "b_label.png"
    Image.fromarray(np.array([[19, 20, 3, 7, 200, 0]] * 4, dtype=np.uint8)).save(several)
    checked = check_sample("train", Sample("a", image, several), lut=lut, valid=valid)
    assert checked.reason == "values 19, 20, 200 not in the label map (it holds 0..18, 255)"


def test_skip_bad_still_refuses_an_emptied_split(tmp_path):
    fx = make_cityscapes(tmp_path / "cs", train=2, val=1)
    val_image = next(iter(fx["samples"]["val"].values()))["image"]
    val_image.write_bytes(b"not a png")
    with pytest.raises(PrepareError, match=r"no good samples left in split\(s\) \['val'\]") as err:
        prepare_domain(kind="cityscapes", root=fx["root"], out=tmp_path / "out", skip_bad=True)
    assert f"{val_image}: unreadable image: not a recognised image file" in str(err.value)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, "out") == []


def test_out_must_be_empty_unless_overwrite(tmp_path):
    fx = make_cityscapes(tmp_path / "cs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(PrepareError, match=f"output directory {out} is not empty.*--overwrite"):
        prepare_domain(kind="cityscapes", root=fx["root"], out=out)
    assert (out / "keep.txt").exists()
    prepare_domain(kind="cityscapes", root=fx["root"], out=out, overwrite=True)
    assert not (out / "keep.txt").exists() and read_manifest(out)["counts"]["train"] == 2
    assert _leftovers(tmp_path, "out") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_domain(kind="cityscapes", root=fx["root"], out=empty)["counts"]["val"] == 1


def test_no_samples_names_the_root_and_layout(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(
        PrepareError, match=r"no 'train' samples found under .*raw; expected leftImg8bit/train/"
    ):
        prepare_domain(kind="cityscapes", root=tmp_path / "raw", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_domain_name_and_shard_rows_are_errors(tmp_path):
    root = make_cityscapes(tmp_path / "cs")["root"]
    with pytest.raises(PrepareError, match="domain name 'my domain'"):
        prepare_domain(kind="cityscapes", root=root, out=tmp_path / "o", domain="my domain")
    with pytest.raises(PrepareError, match="shard_rows must be >= 1"):
        prepare_domain(kind="cityscapes", root=root, out=tmp_path / "o", shard_rows=0)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(PrepareError, match="manifest.json not found; run `raymh data prepare"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PrepareError, match="not readable JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"domain": "x"}))
    with pytest.raises(PrepareError, match=r"lacks \['kind'"):
        read_manifest(tmp_path)


def test_inspect_prints_the_summary_and_class_frequencies(tmp_path):
    fx = make_cityscapes(tmp_path / "cs", train=2, val=1)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        data_group, ["prepare", "--kind", "cityscapes", "--root", str(fx["root"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Domain 'cityscapes': train 2, val 1 samples, 19 classes" in result.output

    lut = get_adapter("cityscapes").label_lut(fx["root"])
    expected = sum(np.bincount(lut[s["raw"]].ravel(), minlength=256) for s in fx["samples"]["train"].values())
    hist = label_histogram(out)
    assert hist["images"] == 2
    np.testing.assert_array_equal(hist["pixels"], expected)
    assert label_histogram(out, limit=1)["images"] == 1

    result = runner.invoke(data_group, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "domain:  cityscapes" in result.output and "samples: train 2, val 1" in result.output
    road_line = next(line for line in result.output.splitlines() if line.split()[:2] == ["0", "road"])
    assert int(road_line.split()[2]) == expected[0]
    assert f"{100 * expected[0] / expected.sum():.2f}%" in road_line
    assert "(ignore)" in result.output

    result = runner.invoke(data_group, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.json not found" in result.stderr


def test_synth_command_passes_its_options(tmp_path, monkeypatch):
    calls = []

    def render_dataset(out, *, images=24, val_images=8, size=(256, 512), seed=0):
        calls.append((out, images, val_images, size, seed))
        return {"domains": ["cityscapes"], "out": str(out)}

    monkeypatch.setitem(sys.modules, "raymh.data.synth", types.SimpleNamespace(render_dataset=render_dataset))
    result = CliRunner().invoke(
        data_group, ["synth", "--out", str(tmp_path), "--images", "3", "--size", "64x128"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path, 3, 8, (64, 128), 0)]
    assert "3 train + 8 val images each, 64x128, seed 0" in result.output and '"domains"' in result.output
    result = CliRunner().invoke(data_group, ["synth", "--out", str(tmp_path), "--size", "64by128"])
    assert result.exit_code == 2 and "expected HxW like 256x512" in result.output


@pytest.mark.slow
def test_synthetic_domains_prepare_through_their_adapters(tmp_path):
    synth = pytest.importorskip("raymh.data.synth")
    synth.render_dataset(tmp_path / "raw", images=4, val_images=2, size=(64, 128), seed=0)
    for kind in ("cityscapes", "bdd100k", "synscapes"):
        manifest = prepare_domain(kind=kind, root=tmp_path / "raw" / kind, out=tmp_path / "prepared" / kind)
        assert manifest["num_classes"] == 19 and all(n > 0 for n in manifest["counts"].values())
