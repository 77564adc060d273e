"""Worker-side data without Ray: what StepBatches reads per step, RowBlocks' per-epoch order, val sharding.

Shards here are plain objects with `iter_batches` (the DataIterator method StepBatches and val_batches
use) that count what is read, and RowBlocks over in-memory Arrow tables (the same code reads ObjectRefs).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raymh.data import batch_transforms
from raymh.data.row_blocks import RowBlocks
from raymh.data.sets import shard_of
from raymh.data.val_rows import ValRows
from raymh.data.worker_batches import StepBatches, step_images, train_shards, val_batches

CROP = (16, 16)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _encoded_rows(n: int, *, prefix: str, size=(24, 32), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    h, w = size
    return [
        {
            "id": f"{prefix}_{i:04d}",
            "image": _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
            "label": _png(rng.integers(0, 3, (h, w), dtype=np.uint8)),
        }
        for i in range(n)
    ]


class CountingShard:
    """A dataset shard of fixed rows that counts the rows it hands out (and the epochs it starts)."""

    def __init__(self, rows: list[dict]):
        self.rows, self.rows_read, self.epochs_started = rows, 0, 0

    def iter_batches(self, *, batch_size, batch_format, drop_last, prefetch_batches, **_):
        assert batch_format == "numpy"
        self.epochs_started += 1
        stop = len(self.rows) - len(self.rows) % batch_size if drop_last else len(self.rows)
        for start in range(0, stop, batch_size):
            chunk = self.rows[start : start + batch_size]
            self.rows_read += len(chunk)
            yield {k: np.asarray([r[k] for r in chunk], dtype=object) for k in ("id", "image", "label")}


def _counting_transforms(calls: dict[str, int]):
    fns = batch_transforms.train_transforms(crop_size=CROP, scale_range=(1.0, 1.0), unlabeled_scale_range=(1.0, 1.0), seed=0,
                                           rank=0)

    def wrap(part):
        def fn(batch, **keys):
            calls[part] += len(batch["id"])
            return fns[part](batch, **keys)

        return fn

    return {part: wrap(part) for part in fns}


# ------------------------------------------------------------------- item: no unlabeled work before DCLoss
def test_steps_without_unlabeled_read_and_transform_no_unlabeled_row():
    shards = {"toy.labeled": CountingShard(_encoded_rows(8, prefix="l")),
              "toy.unlabeled": CountingShard(_encoded_rows(8, prefix="u"))}  # fmt: skip
    asked: list[str] = []

    def get_shard(name):
        asked.append(name)
        return shards[name]

    calls = {"labeled": 0, "unlabeled": 0}
    steps = StepBatches(["toy"], labeled_batch_size=2, unlabeled_batch_size=2, get_shard=get_shard,
                        transforms=_counting_transforms(calls), shuffle_buffer=0)  # fmt: skip
    try:
        for _ in range(3):  # steps before dc_start_iter
            batch = steps.next_batch(unlabeled=False)
            assert set(batch["toy"]) == {"labeled"}
            assert step_images(batch) == 2  # forwarded images only
        assert asked == ["toy.labeled"]  # the unlabeled shard was never even asked for
        assert shards["toy.unlabeled"].rows_read == 0 and shards["toy.unlabeled"].epochs_started == 0
        assert calls == {"labeled": 6, "unlabeled": 0}

        batch = steps.next_batch(unlabeled=True)  # DCLoss on: the pairs start flowing
        assert set(batch["toy"]) == {"labeled", "unlabeled"}
        assert step_images(batch) == 2 + 2 * 2  # two crops per pair
        assert calls["unlabeled"] == 2 and shards["toy.unlabeled"].rows_read >= 2
    finally:
        steps.close()


def test_ray_data_mode_steps_without_unlabeled_start_no_unlabeled_feeder():
    def decoded(n, prefix):  # what the ray_data mode's shards hold: decoded, augmented batches
        return [{"id": f"{prefix}{i}", "image": np.zeros((3, *CROP), np.uint8), "label": np.zeros(CROP, np.uint8)}
                for i in range(n)]  # fmt: skip

    shards = {"a.labeled": CountingShard(decoded(4, "l")), "a.unlabeled": CountingShard(decoded(4, "u"))}
    steps = StepBatches(["a"], labeled_batch_size=2, unlabeled_batch_size=2, get_shard=shards.get)
    try:
        for _ in range(4):
            assert set(steps.next_batch(unlabeled=False)["a"]) == {"labeled"}
        assert set(steps.epochs) == {("a", "labeled")}
        assert shards["a.unlabeled"].epochs_started == 0  # no execution of the unlabeled pipeline started
    finally:
        steps.close()


# ------------------------------------------------------------------------ item: real shuffling (worker mode)
def _blocks(n: int, *, per_block: int = 50, repeat: int = 1, name: str = "toy.unlabeled") -> RowBlocks:
    rows = [{"id": f"r{i:04d}", "image": b"img%d" % i, "label": None} for i in range(n)]
    tables = [pa.Table.from_pylist(rows[i : i + per_block]) for i in range(0, n, per_block)]
    return RowBlocks(name, tables, [t.num_rows for t in tables], repeat=repeat)


def test_epoch_order_is_a_seeded_permutation_per_epoch_and_rank():
    rows = _blocks(500)
    first = rows.epoch_share(0, seed=3, rank=0, world_size=1)
    assert sorted(first.tolist()) == list(range(500))  # a permutation of every row
    # far beyond any 64-row window of the stored order
    assert np.abs(first - np.arange(500)).max() > 64 and np.median(np.abs(first - np.arange(500))) > 64
    assert (rows.epoch_share(0, seed=3, rank=0, world_size=1) == first).all()  # same seed, same order
    assert (rows.epoch_share(1, seed=3, rank=0, world_size=1) != first).any()  # a new order each epoch
    assert (rows.epoch_share(0, seed=4, rank=0, world_size=1) != first).any()
    assert (_blocks(500, name="other.unlabeled").epoch_share(0, seed=3, rank=0, world_size=1) != first).any()

    shares = [rows.epoch_share(2, seed=3, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shares} == {166}  # equal shares (lockstep), fewer than 3 rows left out
    together = np.concatenate(shares)
    assert len(set(together.tolist())) == len(together) == 498
    assert (rows.epoch_share(2, seed=3, rank=1, world_size=3) == shares[1]).all()

    repeated = _blocks(10, repeat=3)
    assert sorted(repeated.take(repeated.epoch_share(0, seed=0, rank=0, world_size=1))["id"].tolist()) == sorted(
        [f"r{i:04d}" for i in range(10)] * 3
    )
    with pytest.raises(ValueError, match="rank must be in"):
        rows.epoch_share(0, seed=0, rank=2, world_size=2)


def test_worker_mode_steps_read_a_new_permutation_every_epoch():
    rows = _blocks(200, per_block=32)

    def ids_of_epochs(seed, epochs=2, consumed=0, rank=0, world=1):
        get = train_shards({"toy.unlabeled": rows}, seed=seed, rank=rank, world_size=world,
                           consumed_batches={"unlabeled": consumed}, get_shard={}.get)  # fmt: skip
        shard = get("toy.unlabeled")
        return [[str(i) for b in shard.iter_epoch(batch_size=8) for i in b["id"]] for _ in range(epochs)]

    e0, e1 = ids_of_epochs(seed=0)
    stored = [f"r{i:04d}" for i in range(200)]
    assert sorted(e0) == sorted(e1) == stored and e0 != stored and e0 != e1
    assert ids_of_epochs(seed=0) == [e0, e1]  # reproducible from the seed
    # a resumed rank (30 batches taken: 25 per epoch, so epoch 1 at batch 5) reads what an uninterrupted one would
    assert ids_of_epochs(seed=0, epochs=1, consumed=30)[0] == e1[5 * 8 :]
    assert pickle.loads(pickle.dumps(rows)).take([3, 1])["id"].tolist() == ["r0003", "r0001"]


def test_row_shard_smaller_than_a_batch_is_a_clear_error():
    shard = _blocks(6).shard(seed=0, rank=0, world_size=4)
    with pytest.raises(RuntimeError, match="min_rows >= batch_size \\* num_workers"):
        next(shard.iter_epoch(batch_size=2))


# -------------------------------------------------------------------------- item: val sharded before decoding
def _val_files(rows: list[dict], folder) -> ValRows:
    """The rows as a prepared val split: two Parquet files of small row groups."""
    import pyarrow.parquet as pq

    half = len(rows) // 2
    files = []
    for k, part in enumerate((rows[:half], rows[half:])):
        path = folder / f"val-{k}.parquet"
        pq.write_table(pa.Table.from_pylist(part), path, row_group_size=3)
        files.append(path)
    return ValRows.from_files("toy", files)


def test_val_rows_are_filtered_by_rank_before_decoding(monkeypatch, tmp_path):
    rows = _encoded_rows(20, prefix="val", size=(12, 20))
    val = _val_files(rows, tmp_path)
    assert val.num_rows == 20
    decoded: list[str] = []
    real = batch_transforms._decode_pair

    def counting(sample_id, image, label):
        decoded.append(sample_id)
        return real(sample_id, image, label)

    monkeypatch.setattr(batch_transforms, "_decode_pair", counting)
    seen: dict[int, list[str]] = {}
    for rank in range(2):
        decoded.clear()
        seen[rank] = []
        for batch in val_batches(val, rank=rank, world_size=2, batch_size=3, read_rows=4):
            n = len(batch["id"])
            assert n <= 3 and tuple(batch["image"].shape) == (n, 3, 12, 20) and str(batch["label"].dtype) == "torch.int64"
            seen[rank].extend(batch["id"])
        own = [r["id"] for r in rows if shard_of(r["id"], world_size=2) == rank]
        assert decoded == own == seen[rank]  # only this rank's rows were decoded
        assert 0 < len(own) < len(rows)
    assert sorted(seen[0] + seen[1]) == [r["id"] for r in rows]

    (resized,) = list(val_batches(val, rank=0, world_size=1, batch_size=32, size=(8, 16)))
    assert tuple(resized["image"].shape) == (20, 3, 8, 16) and tuple(resized["label"].shape) == (20, 8, 16)


def test_val_rows_read_at_most_read_rows_encoded_rows_at_a_time(tmp_path, monkeypatch):
    """Memory is bounded by the read size, whatever the split's size: every read hands over <= read_rows rows."""
    import pyarrow.parquet as pq

    val = _val_files(_encoded_rows(20, prefix="val", size=(12, 20)), tmp_path)
    sizes: list[int] = []
    real = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    assert sum(len(b["id"]) for b in val.iter_encoded(rank=0, world_size=1, read_rows=4)) == 20
    assert sizes and max(sizes) <= 4 and sum(sizes) == 20


def test_val_rows_name_a_missing_file(tmp_path):
    val = _val_files(_encoded_rows(4, prefix="val", size=(12, 20)), tmp_path)
    Path(val.files[0]).unlink()
    with pytest.raises(FileNotFoundError, match="toy: cannot read val file .*val-0.parquet"):
        list(val.iter_encoded(rank=0, world_size=1))
