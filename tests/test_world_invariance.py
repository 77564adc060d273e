"""One method on any number of workers: 2 ranks x b images per domain give the Mix Loss and the gradient of
1 rank x 2b (BatchNorm over all ranks, gathered negatives, global normalisers), on CPU with gloo and DDP.

The model runs in fp64 here. In fp32 the two computations round differently (other reduction orders), and
with about a million ReLU inputs per step one of them near zero lands on the other side: that one unit's
gradient then differs by its whole size (seen here: 0.5% of the total norm, from one channel). fp64 rounding
is 1e-16, so the comparison tests the arithmetic of the method, not the luck of the rounding.

Dropout is on as configured (the ASPP's 0.1): in a step, each sample's masks are drawn from the sample's own
stream (raymh.model.dropout), so they do not depend on the rank holding it. The DCLoss diagnostics are
compared too: rank 0 logs those of the whole batch.

Each switch is also shown to matter: without model.sync_bn, or without loss.gather_negatives, the two
differ. (Before these existed, the ranks' per-rank means, BatchNorm statistics and negatives made every
one of the comparisons below fail.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raymh.config import load_config
from raymh.losses import crops
from raymh.losses.world import World
from raymh.train.step import dc_weight_at, mix_loss_step
from raymh.train.worker import setup_replica

DOMAINS = {"a": {"num_classes": 19}, "b": {"num_classes": 7}}
RANKS, B_LAB, B_UNL, SIZE = 2, 2, 1, 32  # the two-rank case; labeled and unlabeled pairs per rank
DIAGNOSTIC_ANCHORS = 5  # of the 12 anchors per domain (6 per rank): the hardest negatives of a subsample
VARIANTS = {
    "all_on": {},
    "no_sync_bn": {"model.sync_bn": "false"},
    "local_negatives": {"loss.gather_negatives": "false"},
}


def _cfg(overrides: dict) -> object:
    base = {
        "model.backbone": "resnet18", "model.head_depth": 1, "model.proj_dim": 16, "model.sync_bn": "auto",
        "loss.dc_weight": 0.5, "loss.dc_start_iter": 0, "loss.gamma": 0.01, "train.precision": "fp32",
        "train.channels_last": "false",
    }  # fmt: skip
    return load_config("quickstart", [f"{k}={v}" for k, v in {**base, **overrides}.items()])


def _global_batch() -> dict:
    """RANKS x (B_LAB labeled, B_UNL pairs) per domain, seeded; the second rank's labels are partly ignored,
    so ranks hold different counts of labeled pixels (and of masked anchors)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    n_lab, n_unl = RANKS * B_LAB, RANKS * B_UNL
    for d, info in DOMAINS.items():
        label = torch.randint(0, info["num_classes"], (n_lab, SIZE, SIZE), generator=g)
        label[B_LAB:, : SIZE // 2] = 255
        box1 = torch.tensor([[0, 8, SIZE // 2, SIZE]] * n_unl, dtype=torch.int32)
        box2 = torch.tensor([[16, 0, 16 + SIZE // 2, SIZE - 8]] * n_unl, dtype=torch.int32)
        out[d] = {
            "labeled": {
                "image": torch.randint(0, 256, (n_lab, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "label": label,
            },
            "unlabeled": {
                "image1": torch.randint(0, 256, (n_unl, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "image2": torch.randint(0, 256, (n_unl, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "box1": box1, "box2": box2,
                "flip1": torch.rand(n_unl, generator=g) < 0.5, "flip2": torch.rand(n_unl, generator=g) < 0.5,
                "valid1": torch.ones(n_unl, SIZE, SIZE, dtype=torch.bool),
                "valid2": torch.ones(n_unl, SIZE, SIZE, dtype=torch.bool),
                "label1": torch.randint(0, info["num_classes"], (n_unl, SIZE, SIZE), generator=g).to(torch.uint8),
                "label2": torch.randint(0, info["num_classes"], (n_unl, SIZE, SIZE), generator=g).to(torch.uint8),
            },
        }  # fmt: skip
    return out


def _slice(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of every tensor of the global batch (all of them on one rank)."""
    out = {}
    for d, parts in batch.items():
        out[d] = {}
        for part, tensors in parts.items():
            n = (B_LAB if part == "labeled" else B_UNL) * RANKS // world
            out[d][part] = {k: v[rank * n : (rank + 1) * n] for k, v in tensors.items()}
    return out


def _step(cfg, *, rank: int, world: int, prepare) -> dict:
    """One Mix Loss step of this rank's slice; the loss of the whole batch and the (DDP-averaged) gradient."""
    replica = setup_replica(cfg, DOMAINS, rank=rank, world=world, prepare=prepare)
    model = replica.model  # dropout as configured: each sample's masks come from the sample's own stream
    model.train()
    batch = _slice(_global_batch(), rank, world)
    kept = crops.DIAGNOSTIC_ANCHORS
    crops.DIAGNOSTIC_ANCHORS = DIAGNOSTIC_ANCHORS
    try:
        out = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss), world=World(world),
                            diagnostics=True)  # fmt: skip
    finally:
        crops.DIAGNOSTIC_ANCHORS = kept
    out.loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    return {"loss": out.parts["loss"], "grad": torch.cat([g.detach().flatten() for g in grads]), "stats": out.stats}


def _rank_main(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        def prepare(model, parallel_strategy_kwargs):
            return DistributedDataParallel(model.double(), **parallel_strategy_kwargs)

        results = {name: _step(_cfg(over), rank=rank, world=world, prepare=prepare) for name, over in VARIANTS.items()}
        if rank == 0:
            torch.save(results, Path(root, "two.pt"))  # ~11M gradient values per variant: binary, not JSON
    finally:
        dist.destroy_process_group()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def two_vs_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    mp.start_processes(_rank_main, args=(RANKS, str(root)), nprocs=RANKS, start_method="spawn", join=True)
    two = torch.load(root / "two.pt", weights_only=True)
    torch.set_num_threads(1)
    one = {
        name: _step(_cfg(over), rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m.double())
        for name, over in VARIANTS.items()
    }
    return two, one


def test_two_ranks_give_the_loss_and_gradient_of_one(two_vs_one):
    two, one = two_vs_one
    assert math.isfinite(one["all_on"]["loss"]) and one["all_on"]["loss"] > 0
    assert two["all_on"]["loss"] == pytest.approx(one["all_on"]["loss"], rel=1e-5)
    assert _rel(two["all_on"]["grad"], one["all_on"]["grad"]) < 1e-5


def test_two_ranks_log_the_diagnostics_of_one(two_vs_one):
    """Pseudo-label accuracy, similarities and the passing fraction are over every rank's crops (one
    all-reduce of sums), the hardest negatives among the gathered negatives, of anchors subsampled over the
    whole batch (DIAGNOSTIC_ANCHORS, split across the ranks): rank 0 logs the whole batch's."""
    two, one = two_vs_one
    for variant in ("all_on", "local_negatives"):
        stats, reference = two[variant]["stats"], one[variant]["stats"]
        assert set(stats) == set(reference)
        assert {k.split("/")[0] for k in stats} == {
            "passing", "pos_sim", "hard_neg_sim", "pseudo_acc", "pseudo_acc_confident"
        }  # fmt: skip
        for key, value in reference.items():
            if variant == "local_negatives" and key.startswith("hard_neg_sim"):
                continue  # each rank's own negatives, as its loss: the hardest ones depend on the split
            assert math.isfinite(value), key
            assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (variant, key)


@pytest.mark.parametrize("variant", ["no_sync_bn", "local_negatives"])
def test_each_switch_matters(two_vs_one, variant):
    """Turned off, the two-rank step is no longer the one-rank step (one rank never syncs or gathers)."""
    two, one = two_vs_one
    assert one[variant]["loss"] == pytest.approx(one["all_on"]["loss"], rel=1e-12)  # one rank: the same step
    assert _rel(two[variant]["grad"], one[variant]["grad"]) > 1e-3


def _train_forward(replica) -> torch.Tensor:
    """The logits of one fixed input in train mode: dropout (ASPP) draws from the rank's torch stream."""
    x = torch.linspace(-1, 1, 2 * 3 * SIZE * SIZE).reshape(2, 3, SIZE, SIZE)
    replica.model.train()
    with torch.no_grad():
        return replica.model(x, "a")["logits"]


def test_each_rank_draws_its_own_dropout_masks_fresh_and_resumed(tmp_path):
    """The same initial weights on every rank, then per-rank streams: seeded after the model is built (and
    after a checkpoint is restored), never left at the weights' seed."""
    from ray.train import Checkpoint

    from raymh.config import to_yaml
    from raymh.train.checkpoint import save_state

    cfg = _cfg({"model.sync_bn": "false"})

    def replica(rank, checkpoint=None):
        return setup_replica(
            cfg, DOMAINS, rank=rank, world=2, checkpoint=checkpoint, prepare=lambda m, parallel_strategy_kwargs: m
        )

    fresh = [replica(0), replica(1)]  # built one after the other, as two processes would
    states = [r.model.state_dict() for r in fresh]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    outs = []
    for rank in (0, 1):
        outs.append(_train_forward(replica(rank)))
    assert not torch.allclose(outs[0], outs[1]), "ranks 0 and 1 drew the same dropout masks"
    assert torch.equal(_train_forward(replica(0)), outs[0]), "a rank's stream is reproducible"

    save_state(
        tmp_path, model=fresh[0].model, optimizer=fresh[0].optimizer, scheduler=fresh[0].scheduler, step=5,
        best_score=0.0, config_yaml=to_yaml(cfg),
    )  # fmt: skip
    resumed = [replica(r, Checkpoint.from_directory(str(tmp_path))) for r in (0, 1)]
    assert [r.start for r in resumed] == [5, 5]
    outs_resumed = []
    for rank in (0, 1):
        outs_resumed.append(_train_forward(replica(rank, Checkpoint.from_directory(str(tmp_path)))))
    assert not torch.allclose(outs_resumed[0], outs_resumed[1])
    assert not torch.allclose(outs_resumed[0], outs[0]), "after a resume the streams continue from the step"
