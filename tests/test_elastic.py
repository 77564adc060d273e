"""Elastic worker counts (`scaling.num_workers: [min, max]`) without Ray: the config rules, the per-worker batch,
and what a run resumed on another worker count reads and draws (data position, per-rank random streams)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymh.config import ConfigError, load_config
from raymh.data.row_blocks import RowBlocks
from raymh.data.worker_batches import train_shards
from raymh.platform.cluster import RayClusterError, check_fits


def _cfg(*overrides: str):
    return load_config("quickstart", list(overrides))


# ------------------------------------------------------------------------------------------- config rules
def test_a_count_keeps_its_meaning_and_a_range_is_elastic():
    fixed = _cfg("scaling.num_workers=2", "data.labeled_batch_size=3")
    assert not fixed.scaling.elastic and fixed.train_workers == 2 and fixed.scaling.worker_range == (2, 2)
    assert fixed.batch_per_worker("labeled", 2) == 3  # per worker, as before
    elastic = _cfg("scaling.num_workers=[1, 2]", "data.labeled_batch_size=4", "data.unlabeled_batch_size=2")
    assert elastic.scaling.elastic and elastic.scaling.num_workers == (1, 2) and elastic.train_workers == 2
    # the batch sizes are global per domain: each worker takes its even part
    assert [elastic.batch_per_worker("labeled", w) for w in (1, 2)] == [4, 2]
    assert [elastic.batch_per_worker("unlabeled", w) for w in (1, 2)] == [2, 1]
    with pytest.raises(ConfigError, match="3 workers cannot split it"):
        elastic.batch_per_worker("labeled", 3)  # outside the range (Ray never starts it; a clear error if so)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[0, 2]", "1 <= min <= max"),
        ("[3, 2]", "1 <= min <= max"),
        ("[1, 2, 3]", "a count \\(e.g. 2\\) or an elastic range \\[min, max\\]"),
        ("[2]", "a count \\(e.g. 2\\) or an elastic range"),
        ("0", ">= 1"),
        ("[a, 2]", "a count \\(e.g. 2\\) or an elastic range"),
        ("true", "a count \\(e.g. 2\\) or an elastic range"),
    ],
)
def test_bad_worker_ranges_name_the_key(value, message):
    with pytest.raises(ConfigError, match="scaling.num_workers") as err:
        _cfg(f"scaling.num_workers={value}")
    assert err.match(message)


def test_counts_that_do_not_divide_the_global_batches_are_named():
    with pytest.raises(ConfigError) as err:
        _cfg("scaling.num_workers=[1, 4]", "data.labeled_batch_size=4", "data.unlabeled_batch_size=2")
    text = str(err.value)
    assert "data.labeled_batch_size=4 is not divisible by 3 worker(s)" in text
    assert "data.unlabeled_batch_size=2 is not divisible by 3, 4 worker(s)" in text
    assert "multiples of 12" in text and "divide them: [1, 2]" in text  # the fixes: batch sizes, or the counts that divide
    _cfg("scaling.num_workers=[1, 4]", "data.labeled_batch_size=12", "data.unlabeled_batch_size=24")  # fine


def test_an_elastic_range_is_refused_with_placement_by_domain():
    place = [f"domains.{i}.placement={{raymh.io/site: s{i}}}" for i in range(3)]
    with pytest.raises(ConfigError, match="elastic\\) is not supported with placement by_domain"):
        _cfg("scaling.placement=by_domain", "scaling.num_workers=[1, 3]", "data.transforms_on=worker",
             "data.labeled_batch_size=6", "data.unlabeled_batch_size=6", *place)  # fmt: skip


def test_cluster_check_needs_room_for_min_workers_and_suggests_a_dividing_range():
    cfg = _cfg("scaling.num_workers=[2, 4]", "scaling.cpus_per_worker=1", "data.labeled_batch_size=12",
               "data.unlabeled_batch_size=12")  # fmt: skip
    check_fits(cfg, {"CPU": 3.0}, [{"CPU": 3.0}])  # 2 workers x 1 CPU + 1 data CPU: the min fits
    with pytest.raises(RayClusterError, match="--set scaling.num_workers=\\[1,4\\]"):
        check_fits(cfg, {"CPU": 2.0}, [{"CPU": 2.0}])
    odd = _cfg("scaling.num_workers=[3, 3]", "scaling.cpus_per_worker=1", "data.labeled_batch_size=3",
               "data.unlabeled_batch_size=3")  # fmt: skip
    with pytest.raises(RayClusterError) as err:  # [2, 3] or [1, 3] would hold a count that does not divide 3
        check_fits(odd, {"CPU": 3.0}, [{"CPU": 3.0}])
    assert "scaling.num_workers=[" not in str(err.value)


# ------------------------------------------------------------------- data position across worker counts
def _rows(n: int, name: str = "toy.labeled") -> RowBlocks:
    rows = [{"id": f"r{i:04d}", "image": b"img%d" % i, "label": None} for i in range(n)]
    tables = [pa.Table.from_pylist(rows[i : i + 40]) for i in range(0, n, 40)]
    return RowBlocks(name, tables, [t.num_rows for t in tables])


def _steps(rows: RowBlocks, *, world: int, global_batch: int, steps: int, start: int = 0) -> list[set[str]]:
    """The rows each global step reads over all `world` ranks (each rank: global_batch / world per step),
    for the steps start .. start + steps - 1, as a run (re)started at `start` reads them."""
    out: list[set[str]] = [set() for _ in range(steps)]
    for rank in range(world):
        get = train_shards({rows.name: rows}, seed=5, rank=rank, world_size=world,
                           consumed_batches={"labeled": start}, get_shard={}.get)  # fmt: skip
        shard, batch = get(rows.name), global_batch // world
        t = 0
        while t < steps:
            for b in shard.iter_epoch(batch_size=batch):
                if t == steps:
                    break
                out[t] |= {str(i) for i in b["id"]}
                t += 1
    return out


@pytest.mark.parametrize("n_rows", [103, 96])
def test_a_step_reads_the_same_rows_on_any_worker_count(n_rows):
    rows = _rows(n_rows)
    one = _steps(rows, world=1, global_batch=4, steps=60)  # 2+ epochs (25 or 24 steps each)
    assert all(len(s) == 4 for s in one)
    for world in (2, 4):
        assert _steps(rows, world=world, global_batch=4, steps=60) == one


def test_a_run_resumed_on_another_worker_count_continues_the_data_position():
    rows = _rows(103)
    uninterrupted = _steps(rows, world=2, global_batch=4, steps=60)
    # 2 workers wrote the checkpoint at step 30 (an epoch is 25 steps: epoch 1, step 5); 1 or 4 workers go on
    for world in (1, 4):
        resumed = _steps(rows, world=world, global_batch=4, steps=30, start=30)
        assert resumed == uninterrupted[30:]
    epoch_1 = set().union(*uninterrupted[25:50])
    assert len(epoch_1) == 100  # nothing replayed, nothing skipped within the epoch of the change
    assert set().union(*uninterrupted[25:30], *_steps(rows, world=1, global_batch=4, steps=20, start=30)) == epoch_1


# ---------------------------------------------------------------- per-rank random streams after a resize
def test_ranks_a_checkpoint_does_not_have_get_streams_from_seed_rank_and_step(tmp_path):
    from ray.train import Checkpoint

    from raymh.train.checkpoint import save_state
    from raymh.train.worker import seed_rank_generators, setup_replica

    cfg = _cfg("model.backbone=resnet18", "model.head_depth=1", "scaling.num_workers=[1, 4]",
               "data.labeled_batch_size=12", "data.unlabeled_batch_size=12")  # fmt: skip
    domains = {"a": {"num_classes": 3}}
    no_ddp = lambda model, parallel_strategy_kwargs: model  # noqa: E731 - one process, no DDP
    written = setup_replica(cfg, domains, rank=0, world=1, prepare=no_ddp)  # the writer: one rank
    save_state(tmp_path, model=written.model, optimizer=written.optimizer, scheduler=written.scheduler, step=7,
               best_score=0.0, config_yaml="")  # fmt: skip
    draws = {}
    for rank in (0, 3):  # rank 3 did not exist when the checkpoint was written
        replica = setup_replica(cfg, domains, rank=rank, world=4, prepare=no_ddp,
                                checkpoint=Checkpoint.from_directory(str(tmp_path)))  # fmt: skip
        assert replica.start == 7
        draws[rank] = (torch.rand(3), np.random.rand(3))
        seed_rank_generators(cfg, rank, 7)
        assert torch.equal(draws[rank][0], torch.rand(3))  # seeded from (seed, rank, step), not the checkpoint
    assert not torch.equal(draws[0][0], draws[3][0])  # distinct per rank
