"""Ray Data pipeline: prepared-dir validation, the stable labeled split, worker shards, StepBatches, val."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raymh.data import splits
from raymh.data.batch_transforms import train_transforms
from raymh.data.driver_datasets import build_domain_data, write_split_lists
from raymh.data.sets import dataset_name, shard_of
from raymh.data.val_rows import ValRows
from raymh.data.worker_batches import StepBatches, train_shards, val_batches

N_TRAIN, N_VAL = 12, 5
CROP = (16, 24)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_prepared(
    root: Path, *, domain: str = "toy", n_train: int = N_TRAIN, n_val: int = N_VAL, seed: int = 0
):
    """A tiny prepared dir in the `raymh data prepare` format (train in two part files)."""
    rng = np.random.default_rng(seed)

    def rows(split: str, n: int, sizes) -> list[dict]:
        out = []
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            label = rng.integers(0, 3, size=(h, w), dtype=np.uint8)
            image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            out.append(
                {
                    "id": f"{split}_{i:03d}",
                    "image": _png(image),
                    "label": _png(label),
                    "height": h,
                    "width": w,
                }
            )
        return out

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.binary()),
            ("label", pa.binary()),
            ("height", pa.int32()),
            ("width", pa.int32()),
        ]
    )
    train = rows("train", n_train, [(20, 30), (12, 14), (40, 33)])
    val = rows("val", n_val, [(16, 24), (12, 20)])
    for split, data, parts in (("train", train, 2), ("val", val, 1)):
        (root / split).mkdir(parents=True)
        for p in range(parts):
            chunk = data[p::parts]
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), root / split / f"part-{p:05d}.parquet")
    manifest = {
        "domain": domain, "kind": "folder", "classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3,
        "num_classes": 3, "ignore_index": 255, "counts": {"train": n_train, "val": n_val},
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One small local Ray for the module (building datasets would otherwise auto-start a default one)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"))


def _build(prepared: Path, **kwargs):
    opts = {
        "domain": "toy",
        "labeled_fraction": 1 / 6,
        "crop_size": CROP,
        "shuffle": False,
        "map_batch_size": 2,
        "match_unlabeled": False,  # labeled rows repeat only up to min_rows here, so epochs are short
        "cache_encoded": False,  # building stays lazy (no Ray work) unless a test asks for it
    }
    return build_domain_data(prepared, **{**opts, **kwargs})


def _consume_split(ds, n: int, *, batch_size: int = 1, drop_last: bool = False) -> list[list[str]]:
    """Consume streaming_split(n, equal=True) shards concurrently, as Train workers do; ids per shard."""
    shards, out = ds.streaming_split(n, equal=True), [[] for _ in range(n)]

    def consume(i):
        for batch in shards[i].iter_batches(batch_size=batch_size, drop_last=drop_last):
            out[i].extend(str(x) for x in batch["id"])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "streaming_split consumers deadlocked"
    return out


# ------------------------------------------------------------------------------------------- no Ray needed
def test_names():
    assert dataset_name("city", "labeled") == "city.labeled"
    with pytest.raises(ValueError, match="part"):
        dataset_name("a", "train")


def test_missing_manifest_and_parquet_name_the_path(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        _build(tmp_path)
    (tmp_path / "manifest.json").write_text((prepared / "manifest.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"train.part-\*\.parquet"):
        _build(tmp_path)


def test_crop_off_grid_is_an_error(prepared):
    with pytest.raises(ValueError, match="multiples of 8"):
        _build(prepared, crop_size=(20, 24))


def test_labeled_split_is_stable_across_runs_and_worker_counts(prepared, tmp_path):
    train_ids = [f"train_{i:03d}" for i in range(N_TRAIN)]
    a = _build(prepared, min_rows=1)
    b = _build(prepared, min_rows=8, seed=0)  # e.g. batch 4 x 2 workers
    assert a.labeled_ids == b.labeled_ids == splits.labeled_ids(train_ids, fraction=1 / 6, seed=0)
    assert len(a.labeled_ids) == 2
    assert sorted(a.labeled_ids + a.unlabeled_ids) == train_ids
    assert not set(a.labeled_ids) & set(a.unlabeled_ids)
    other_seed = _build(prepared, seed=1, labeled_fraction=0.5)
    assert other_seed.labeled_ids == splits.labeled_ids(train_ids, fraction=0.5, seed=1)
    paths = write_split_lists(tmp_path, a)
    assert paths["labeled"].read_text().split() == a.labeled_ids
    assert (tmp_path / "toy" / "unlabeled.txt").read_text().split() == a.unlabeled_ids


def test_split_file_and_full_fraction(prepared, tmp_path, caplog):
    split = tmp_path / "split.txt"
    split.write_text("train_003\ntrain_007\n")
    dd = _build(prepared, split_file=split)
    assert dd.labeled_ids == ["train_003", "train_007"] and len(dd.unlabeled_ids) == N_TRAIN - 2
    with caplog.at_level(logging.WARNING, logger="raymh.data.driver_datasets"):
        full = _build(prepared, labeled_fraction=1.0)
    assert len(full.labeled_ids) == N_TRAIN and full.unlabeled_ids == full.labeled_ids
    assert "all train rows as unlabeled" in caplog.text


# --------------------------------------------------------------------------------------------------- Ray
def test_labeled_and_unlabeled_batches(ray_session, prepared):
    # cached encoded rows; 2 labeled rows x5 = the 10 unlabeled rows (repeated after the cache)
    dd = _build(prepared, min_rows=5, match_unlabeled=True, cache_encoded=True)
    lab = dd.labeled.take_batch(12, batch_format="numpy")
    assert lab["image"].shape == (10, 3, *CROP) and lab["image"].dtype == np.uint8
    assert lab["label"].shape == (10, *CROP) and lab["label"].dtype == np.uint8
    assert set(np.unique(lab["label"])) <= {0, 1, 2, 255}
    assert sorted(lab["id"]) == sorted(dd.labeled_ids * 5)

    unl = dd.unlabeled.take_batch(3, batch_format="numpy")
    assert unl["image1"].shape == unl["image2"].shape == (3, 3, *CROP)
    assert unl["box1"].shape == (3, 4) and unl["box1"].dtype == np.int32 and (unl["box1"] % 8 == 0).all()
    assert unl["flip1"].shape == (3,) and unl["flip1"].dtype == bool
    assert unl["valid1"].shape == (3, *CROP) and unl["valid1"].dtype == bool
    assert set(unl["id"]) <= set(dd.unlabeled_ids)


def test_two_worker_shards_are_disjoint_and_cover(ray_session, prepared):
    """DataConfig splits train sets with streaming_split(n, equal=True); 10 unlabeled rows split evenly.

    equal=True drops up to n-1 remainder rows per epoch, so the row count here is divisible by 2.
    """
    dd = _build(prepared, shuffle=True)  # a shuffled set, as in training
    assert len(dd.unlabeled_ids) == 10
    shard0, shard1 = _consume_split(dd.unlabeled, 2)
    assert len(shard0) == len(shard1) == 5
    assert not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == dd.unlabeled_ids


def test_val_set_is_the_val_files_and_nothing_in_ray(ray_session, prepared):
    """Val is the val split's Parquet files: nothing read into the object store; ranks read their own rows."""
    dd = _build(prepared)
    assert isinstance(dd.val, ValRows) and dd.val.num_rows == N_VAL and all(Path(f).is_file() for f in dd.val.files)
    assert set(dd.datasets()) == {"toy.labeled", "toy.unlabeled"}
    (encoded,) = dd.val.iter_encoded(rank=0, world_size=1, read_rows=N_VAL)
    assert set(encoded) == {"id", "image", "label"} and isinstance(encoded["image"][0], bytes)


def test_val_batches_partition_exactly(ray_session, prepared):
    dd = _build(prepared)
    seen: list[str] = []
    for rank in range(2):
        for batch in val_batches(dd.val, rank=rank, world_size=2, batch_size=4):
            n = len(batch["id"])
            assert batch["image"].shape[:2] == (n, 3) and batch["label"].shape[0] == n
            assert batch["image"].shape[2:] == batch["label"].shape[1:]
            assert str(batch["label"].dtype) == "torch.int64"
            assert all(shard_of(i, world_size=2) == rank for i in batch["id"])
            seen.extend(batch["id"])
    assert sorted(seen) == dd.val_ids  # disjoint (no duplicate) and covering
    (batch,) = val_batches(dd.val, rank=0, world_size=1, batch_size=8, size=(8, 16))
    assert tuple(batch["image"].shape) == (N_VAL, 3, 8, 16)


def test_step_batches_every_domain_and_epoch_rollover(ray_session, prepared, tmp_path):
    other = write_prepared(tmp_path / "other", domain="other", n_train=6, n_val=1, seed=1)
    # worker mode (encoded rows in the object store, decoded here): no Ray Data execution per epoch;
    # StepBatches cycles Ray Data shards the same way (the lockstep test below, and the ray_data e2e run)
    opts = {"min_rows": 2, "cache_encoded": True, "transforms_on": "worker"}
    data = {"toy": _build(prepared, **opts), "other": _build(other, domain="other", **opts)}
    blocks = {name: rb for dd in data.values() for name, rb in dd.row_blocks().items()}
    steps = StepBatches(
        ["toy", "other"], labeled_batch_size=2, unlabeled_batch_size=3, keep_ids=True,
        get_shard=train_shards(blocks, seed=0, rank=0, world_size=1),
        transforms=train_transforms(crop_size=CROP, scale_range=(0.5, 1.5), unlabeled_scale_range=(0.8, 1.2), seed=0,
                                    rank=0),
    )  # fmt: skip
    labeled_seen = {"toy": [], "other": []}
    for _ in range(2):  # each domain's labeled set is one batch per epoch: step 2 starts a new epoch
        batch = next(steps)
        assert set(batch) == {"toy", "other"}
        for domain, parts in batch.items():
            lab, unl = parts["labeled"], parts["unlabeled"]
            assert tuple(lab["image"].shape) == (2, 3, *CROP) and str(lab["label"].dtype) == "torch.int64"
            assert tuple(unl["image1"].shape) == (3, 3, *CROP) and tuple(unl["box2"].shape) == (3, 4)
            assert str(unl["valid1"].dtype) == "torch.bool" and tuple(unl["flip2"].shape) == (3,)
            labeled_seen[domain].extend(lab["id"])
    assert steps.epochs[("toy", "labeled")] >= 1 and steps.epochs[("other", "labeled")] >= 1
    assert sorted(labeled_seen["toy"]) == sorted(data["toy"].labeled_ids * 2)  # the same 2 rows, 2 epochs
    steps.close()


def test_worker_transforms_mode_yields_encoded_rows_and_seeded_batches(ray_session, prepared):
    """transforms_on="worker": the train sets are encoded rows (repeated) in the object store (RowBlocks);
    StepBatches decodes and augments them with train_transforms, whose stream is fixed by its seed."""
    dd = _build(prepared, min_rows=5, match_unlabeled=True, cache_encoded=True, transforms_on="worker")
    assert not dd.datasets() and set(dd.row_blocks()) == {"toy.labeled", "toy.unlabeled"}
    rows = dd.labeled.take(range(dd.labeled.num_rows))
    assert set(rows) == {"id", "image", "label"} and isinstance(rows["image"][0], bytes)
    assert sorted(rows["id"]) == sorted(dd.labeled_ids * 5)  # repeated, like the ray_data mode
    assert set(dd.unlabeled.take([0])) == {"id", "image", "label"}  # label: diagnostics

    def first_steps(seed, n=3):
        fns = train_transforms(crop_size=CROP, scale_range=(0.5, 1.5), unlabeled_scale_range=(0.8, 1.2), seed=seed,
                               rank=0)
        shards = train_shards(dd.row_blocks(), seed=0, rank=0, world_size=1)  # the same row order every time
        steps = StepBatches(["toy"], labeled_batch_size=2, unlabeled_batch_size=2, get_shard=shards,
                            transforms=fns, keep_ids=True)  # fmt: skip
        out = [next(steps)["toy"] for _ in range(n)]
        steps.close()
        return out

    a, b, c = first_steps(0), first_steps(0), first_steps(1)
    lab, unl = a[0]["labeled"], a[0]["unlabeled"]
    assert tuple(lab["image"].shape) == (2, 3, *CROP) and str(lab["image"].dtype) == "torch.uint8"
    assert str(lab["label"].dtype) == "torch.int64" and set(lab["label"].unique().tolist()) <= {0, 1, 2, 255}
    assert tuple(unl["image1"].shape) == (2, 3, *CROP) and tuple(unl["box1"].shape) == (2, 4)
    assert set(lab["id"]) <= set(dd.labeled_ids) and set(unl["id"]) <= set(dd.unlabeled_ids)
    # the same row order (RowBlocks' seed), so the transforms' seed alone decides the crops
    for x, y in zip(a, b, strict=True):
        assert x["labeled"]["id"] == y["labeled"]["id"]
        assert (x["labeled"]["image"] == y["labeled"]["image"]).all()
        assert (x["unlabeled"]["box1"] == y["unlabeled"]["box1"]).all()
    assert any((x["labeled"]["image"] != z["labeled"]["image"]).any() for x, z in zip(a, c, strict=True))


def test_tasks_mode_decodes_the_worker_modes_rows_in_ray_tasks_with_seeded_batches(ray_session, prepared):
    """transforms_on="tasks": the same RowBlocks and per-epoch row order as the worker mode, each batch
    decoded by a Ray task; batch b of epoch e is augmented from (stream seed, set, e, b), so the batches do
    not depend on which task finished first, and a resumed shard continues with the very same batches."""
    from raymh.data.task_decode import decode_rows, task_shards

    dd = _build(prepared, min_rows=4, cache_encoded=True, transforms_on="tasks", shuffle=True)
    assert not dd.datasets() and set(dd.row_blocks()) == {"toy.labeled", "toy.unlabeled"}
    kw = {"crop_size": CROP, "scale_range": (0.5, 1.5), "unlabeled_scale_range": (0.8, 1.2)}
    rows = dd.unlabeled
    per_epoch = rows.num_rows // 2  # batches of 2 on one rank

    def batches(seed, *, epochs=2, consumed=0, in_flight=2):
        wrap = task_shards(**kw, seed=seed, rank=0, in_flight=in_flight)
        shard = train_shards(dd.row_blocks(), seed=0, rank=0, world_size=1, wrap=wrap,
                             consumed_batches={"unlabeled": consumed})("toy.unlabeled")  # fmt: skip
        return [b for _ in range(epochs) for b in shard.iter_epoch(batch_size=2)]

    a, b, c = batches(7), batches(7, in_flight=1), batches(8)
    assert len(a) == 2 * per_epoch
    reader = rows.shard(seed=0, rank=0, world_size=1)
    order = [[str(i) for i in rows.take(pos)["id"]] for _ in range(2) for pos in reader.next_epoch(batch_size=2)[2]]
    assert [list(x["id"]) for x in a] == order  # the worker mode's rows, in its order, across the epoch end
    for e, i in ((0, 0), (1, per_epoch - 1)):  # one batch computed here, from its rows and its seed
        k = e * per_epoch + i
        want = decode_rows(rows, rows.epoch_share(e, seed=0, rank=0, world_size=1)[2 * i : 2 * i + 2], "unlabeled",
                           {"crop_size": CROP, "scale_range": (0.8, 1.2)}, seed=7, domain="toy", rank=0, index=k)  # fmt: skip
        for key in ("image1", "image2", "box1", "box2", "flip1"):
            assert np.array_equal(a[k][key], want[key]), (k, key)
    for x, y in zip(a, b, strict=True):  # one task at a time or two: the same batches
        assert np.array_equal(x["image1"], y["image1"]) and np.array_equal(x["box2"], y["box2"])
    assert any(not np.array_equal(x["box1"], z["box1"]) for x, z in zip(a, c, strict=True))  # the seed matters
    resumed = batches(7, epochs=1, consumed=per_epoch + 1)  # after the first epoch and one batch of the second
    assert len(resumed) == per_epoch - 1
    for x, y in zip(resumed, a[per_epoch + 1 :], strict=True):
        assert list(x["id"]) == list(y["id"]) and np.array_equal(x["image2"], y["image2"])


def test_a_placed_domains_rows_are_owned_by_its_site_store_and_the_driver_holds_no_reference(ray_session, prepared):
    """site=...: a SiteStore actor on the matching node reads the rows and owns them; the driver gets a
    SiteRows (counts and the store's handle, no ObjectRef), which a worker of the domain resolves."""
    import ray

    from raymh.data.site_store import SiteRows

    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    dd = _build(prepared, min_rows=2, cache_encoded=True, transforms_on="worker", site=here)
    assert isinstance(dd.labeled, SiteRows) and isinstance(dd.unlabeled, SiteRows)
    assert dd.labeled.num_rows >= 2 and not dd.datasets() and set(dd.row_blocks()) == {"toy.labeled", "toy.unlabeled"}
    ray.cloudpickle.dumps(dd.labeled)  # it travels to the workers
    assert not [v for v in vars(dd.labeled).values() if isinstance(v, ray.ObjectRef) or (isinstance(v, list | tuple) and any(isinstance(x, ray.ObjectRef) for x in v))]

    @ray.remote(label_selector=here)
    def worker_side(rows):
        blocks = rows.resolve()
        return sorted(str(i) for i in blocks.take(range(blocks.num_rows))["id"])

    assert set(ray.get(worker_side.remote(dd.labeled))) == set(dd.labeled_ids)
    where = dd.labeled.store.__ray_call__.remote(lambda store: ray.get_runtime_context().get_node_id())
    assert ray.get(where) == here["ray.io/node-id"]  # the store runs on the matching node
    with pytest.raises(ValueError, match="store actor"):
        _build(prepared, min_rows=2, cache_encoded=True, transforms_on="ray_data", site=here)


def test_an_unlabeled_set_read_without_labels_holds_none_and_its_crops_carry_none(ray_session, prepared):
    """unlabeled_labels=False (placement's default): the unlabeled rows are read without their label column,
    so their true labels never leave the files, and the crop pairs carry no label1/label2."""
    from raymh.data.batch_transforms import augment_part

    for with_labels in (True, False):
        dd = _build(prepared, min_rows=2, cache_encoded=True, transforms_on="worker", unlabeled_labels=with_labels)
        rows = dd.unlabeled.take([0, 1])
        assert all((lab is not None) == with_labels for lab in rows["label"])
        pair = augment_part("unlabeled", rows, seed=0, domain="toy", rank=0, index=0, crop_size=CROP, scale_range=(1, 1))
        assert ("label1" in pair) == with_labels


def test_tasks_mode_steps_and_placed_domains_tasks_carry_their_selector(ray_session, prepared):
    from raymh.data.task_decode import TaskShard, task_shards

    dd = _build(prepared, min_rows=4, cache_encoded=True, transforms_on="tasks")
    wrap = task_shards(crop_size=CROP, scale_range=(0.5, 1.5), unlabeled_scale_range=(0.8, 1.2), seed=0, rank=0)
    steps = StepBatches(["toy"], labeled_batch_size=2, unlabeled_batch_size=2, keep_ids=True,
                        get_shard=train_shards(dd.row_blocks(), seed=0, rank=0, world_size=1, wrap=wrap))  # fmt: skip
    first = next(steps)["toy"]
    assert tuple(first["labeled"]["image"].shape) == (2, 3, *CROP) and str(first["labeled"]["label"].dtype) == "torch.int64"
    assert tuple(first["unlabeled"]["image1"].shape) == (2, 3, *CROP) and set(first["labeled"]["id"]) <= set(dd.labeled_ids)
    assert "unlabeled" not in steps.next_batch(unlabeled=False)["toy"]
    steps.close()
    placed = task_shards(crop_size=CROP, scale_range=(0.5, 1.5), unlabeled_scale_range=(0.8, 1.2), seed=0, rank=0,
                         selectors={"toy": {"raymh.io/site": "a"}})  # fmt: skip
    shard = placed("toy.labeled", dd.labeled.shard(seed=0, rank=0, world_size=1))
    assert isinstance(shard, TaskShard) and shard.part == "labeled"
    assert shard._options["label_selector"] == {"raymh.io/site": "a"}
    with pytest.raises(ValueError, match="cache_encoded=True"):
        _build(prepared, transforms_on="tasks", cache_encoded=False)


def test_transforms_on_is_checked(prepared):
    with pytest.raises(ValueError, match="transforms_on must be 'ray_data', 'worker' or 'tasks'"):
        _build(prepared, transforms_on="gpu")
    with pytest.raises(ValueError, match="transforms needs 'labeled' and 'unlabeled'"):
        StepBatches(["toy"], labeled_batch_size=1, unlabeled_batch_size=1, get_shard={}.get,
                    transforms={"labeled": lambda b: b})  # fmt: skip


@pytest.mark.slow
def test_step_batches_two_ranks_in_lockstep_past_epochs(ray_session, prepared):
    """Two 'ranks' consume streaming_split shards through StepBatches across epoch ends without deadlock,
    the unlabeled sets starting only at the second step (DCLoss on from there), on both ranks."""
    dd = _build(prepared, min_rows=4)  # 2 labeled rows x2 -> each rank: 2 rows = 1 batch of 2 per epoch
    split = {
        name: ds.streaming_split(2, equal=True)
        for name, ds in dd.datasets().items()
        if not name.endswith("val")
    }
    seen = [[], []]

    def rank(r):
        steps = StepBatches(
            ["toy"],
            labeled_batch_size=2,
            unlabeled_batch_size=2,
            get_shard=lambda n: split[n][r],
            keep_ids=True,
        )
        for step in range(3):
            batch = steps.next_batch(unlabeled=step >= 1)["toy"]
            assert ("unlabeled" in batch) == (step >= 1)
            seen[r].append(batch["labeled"]["id"])
        steps.close()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "ranks deadlocked at an epoch boundary"
    assert len(seen[0]) == len(seen[1]) == 3
