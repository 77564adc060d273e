"""Random streams (raymh.streams) and what they guarantee a paired comparison: streams never collide across
(seed, rank, step); a supervised and a semi-supervised run of one seed train on bit-identical labeled
batches; the worker and task modes augment the n-th batch alike; unlabeled images' labels reach no loss."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymh import streams
from raymh.config import load_config
from raymh.data.batch_transforms import augment_part, part_kwargs, train_transforms
from raymh.data.row_blocks import RowBlocks
from raymh.data.task_decode import decode_rows
from raymh.data.worker_batches import StepBatches, train_shards
from raymh.train.digest import DIGEST_STEPS, LabeledDigest
from raymh.train.step import dc_weight_at, mix_loss_step
from raymh.train.worker import consumed_batches, setup_replica
from tests.test_worker_batches import _encoded_rows, _png

CROP = (16, 16)
KW = {"crop_size": CROP, "scale_range": (0.5, 1.5), "unlabeled_scale_range": (0.8, 1.5)}


def test_no_two_seed_rank_step_keys_share_a_stream():
    """6 seeds x 8 ranks x 10,000 steps: 480,000 distinct streams (the old seed + rank + 7919 * step gave
    seed 1 on rank 0 the streams of seed 0 on rank 1)."""
    seen = {
        streams.int_seed(seed, "rank_torch", rank=rank, index=step)
        for seed in range(6) for rank in range(8) for step in range(10_000)
    }  # fmt: skip
    assert len(seen) == 6 * 8 * 10_000


def test_purposes_and_domains_are_separate_streams():
    firsts = {
        (p, d): streams.generator(0, p, domain=d, rank=1, index=2).integers(0, 2**63)
        for p in streams.PURPOSES for d in ("cityscapes", "bdd100k", streams.NO_DOMAIN)
    }  # fmt: skip
    assert len(set(firsts.values())) == len(firsts)
    again = streams.generator(0, "labeled_aug", domain="cityscapes", rank=1, index=2).integers(0, 2**63)
    assert again == firsts[("labeled_aug", "cityscapes")]  # a stream is a function of its key
    with pytest.raises(ValueError, match="purpose"):
        streams.generator(0, "labelled")
    with pytest.raises(ValueError, match="rank"):
        streams.generator(0, "init", rank=-1)


def _blocks(name: str, rows: list[dict]) -> RowBlocks:
    return RowBlocks(name, [pa.Table.from_pylist(rows)], [len(rows)])


def _sets(unlabeled_rows: list[dict] | None = None) -> dict[str, RowBlocks]:
    return {
        "toy.labeled": _blocks("toy.labeled", _encoded_rows(6, prefix="l", seed=1)),
        "toy.unlabeled": _blocks("toy.unlabeled", unlabeled_rows or _encoded_rows(10, prefix="u", seed=2)),
    }


def _step_batches(sets, cfg, *, rank=0, start=0) -> StepBatches:
    consumed = consumed_batches(cfg, start)
    return StepBatches(
        ["toy"], labeled_batch_size=2, unlabeled_batch_size=2, keep_ids=True, first_batches=consumed,
        transforms=train_transforms(**KW, seed=cfg.train.seed, rank=rank),
        get_shard=train_shards(sets, seed=cfg.train.seed, rank=rank, world_size=1, consumed_batches=consumed),
    )  # fmt: skip


def _cfg(*overrides: str):
    return load_config("quickstart", ["loss.dc_start_iter=10", *overrides])


def _labeled_run(cfg, steps: int, *, start: int = 0) -> list[dict]:
    batches = _step_batches(_sets(), cfg, start=start)
    try:
        return [batches.next_batch(unlabeled=dc_weight_at(s, cfg.loss) > 0)["toy"]["labeled"] for s in range(start, steps)]
    finally:
        batches.close()


def test_supervised_and_semi_runs_of_one_seed_train_on_the_same_labeled_batches():
    """50 steps: the semi run also decodes crop pairs from step 10 on; its labeled crops stay bit-identical
    to the supervised run's (before, one generator drove both parts), and their digests agree."""
    semi, sup = _cfg(), _cfg("loss.dc_weight=0")
    a, b = _labeled_run(semi, 50), _labeled_run(sup, 50)
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x["id"] == y["id"], step
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]), step
    digests = []
    for run in (a, b, _labeled_run(_cfg("train.seed=1"), DIGEST_STEPS)):
        digest = LabeledDigest()
        done = [digest.add(s, {"toy": {"labeled": lab}}) for s, lab in enumerate(run[:DIGEST_STEPS])]
        assert done == [False] * (DIGEST_STEPS - 1) + [True]
        digests.append(digest.tags())
    assert digests[0] == digests[1] and digests[0] != digests[2]  # same seed: same digest; other seed: not
    assert set(digests[0]) == {"raymh.labeled_digest", "raymh.labeled_digest.toy"}


def test_a_resumed_run_reads_and_augments_the_batches_of_an_uninterrupted_one():
    cfg = _cfg()
    whole, resumed = _labeled_run(cfg, 30), _labeled_run(cfg, 30, start=17)
    for x, y in zip(whole[17:], resumed, strict=True):
        assert x["id"] == y["id"] and torch.equal(x["image"], y["image"])


def test_the_task_mode_augments_the_nth_batch_as_the_worker_mode_does():
    sets, kwargs = _sets(), part_kwargs(**KW)
    for part in ("labeled", "unlabeled"):
        rows = sets[f"toy.{part}"]
        positions = rows.epoch_share(1, seed=3, rank=0, world_size=1)[:2]
        in_task = decode_rows(rows, positions, part, kwargs[part], seed=3, domain="toy", rank=1, index=7)
        in_worker = train_transforms(**KW, seed=3, rank=1)[part](rows.take(positions), domain="toy", index=7)
        other = augment_part(part, rows.take(positions), seed=3, domain="toy", rank=1, index=8, **kwargs[part])
        key = "image" if part == "labeled" else "image1"
        assert np.array_equal(in_task[key], in_worker[key])
        assert not np.array_equal(in_task[key], other[key])


def test_scrambled_labels_of_unlabeled_images_change_no_loss_and_no_gradient():
    """The built-in domains label every image, and the unlabeled crops carry their labels for the
    pseudo-label diagnostic: scrambling those label files changes the diagnostic, never the Mix Loss or
    its gradient."""
    cfg = _cfg("loss.dc_start_iter=0", "loss.gamma=0.2", "model.head_depth=1", "model.proj_dim=16",
               "train.precision=fp32", "train.channels_last=false")  # fmt: skip
    rows = _encoded_rows(10, prefix="u", seed=2)
    rng = np.random.default_rng(5)
    scrambled = [{**r, "label": _png(rng.integers(0, 3, (24, 32), dtype=np.uint8))} for r in rows]
    domains = {"toy": {"num_classes": 3}}
    no_ddp = lambda model, parallel_strategy_kwargs: model  # noqa: E731 - one process
    results = []
    for unlabeled in (rows, scrambled):
        batches = _step_batches(_sets(unlabeled), cfg)
        batch = batches.next_batch()
        batches.close()
        assert "label1" in batch["toy"]["unlabeled"]  # the labels travel with the crops (diagnostics only)
        model = setup_replica(cfg, domains, rank=0, world=1, prepare=no_ddp).model.train()
        out = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss), diagnostics=True)
        out.loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.parts, out.stats, grad, batch["toy"]["unlabeled"]["label1"]))
    (parts_a, stats_a, grad_a, lab_a), (parts_b, stats_b, grad_b, lab_b) = results
    assert not torch.equal(lab_a, lab_b)  # the scramble reached the crops
    assert parts_a["dc/toy"] > 0 and parts_a == parts_b
    assert torch.allclose(grad_a, grad_b, rtol=0, atol=1e-7)
    assert stats_a["pseudo_acc/toy"] != stats_b["pseudo_acc/toy"]  # only the diagnostic read them
