"""One method on any number of workers, past the first step (issue 23, item 6): from a model trained for 20
steps, 5 more steps on 2 ranks x b images per domain equal 5 steps on 1 rank x 2b, in fp64: the Mix Loss
and its diagnostics at every step, the gradients of the first and the last step, the BatchNorm running
statistics, the parameters and AdamW's moments after the 5 optimizer steps.

Covered: train.forward joint and per_domain; placement by domain (one rank per domain, against one rank
forwarding jointly, as tests/test_placement_invariance.py); dropout as configured (the ASPP's 0.1, masks
keyed by the sample: raymh.model.dropout); gamma between the anchors' confidences, so that the direction
masks cut (asserted: some anchors pass, not all).

The 20 steps are trained once (fp32, one rank) and written as a checkpoint; every run resumes from it, the
resume path of `setup_replica` included.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_world_invariance import DOMAINS, SIZE, _cfg

from raymh.config import to_yaml
from raymh.losses.world import World
from raymh.train.checkpoint import save_state, unwrap
from raymh.train.domain_ranks import buffer_sources, by_domain, sync_buffers
from raymh.train.step import dc_weight_at, mix_loss_step
from raymh.train.worker import setup_replica

pytestmark = pytest.mark.slow

RANKS, B_LAB, B_UNL = 2, 2, 1  # per rank
PRETRAIN, STEPS = 20, 5
GAMMA = 0.72  # between the anchors' confidences after PRETRAIN steps (asserted below)
SITE = "raymh.io/site"
PLACED = [("a", {SITE: "a"}), ("b", {SITE: "b"})]
TOL = 1e-5


def _config(forward: str, gamma: float = GAMMA):
    return _cfg({"train.forward": forward, "loss.gamma": gamma, "optim.name": "adamw", "optim.lr": 0.001})


def _batch(step: int) -> dict:
    """Step `step`'s global batch: RANKS x (B_LAB labeled, B_UNL pairs) per domain; random boxes and flips,
    crop 2 partly padded; the second half's labels partly ignored."""
    g = torch.Generator().manual_seed(1000 + step)
    out = {}
    n_lab, n_unl = RANKS * B_LAB, RANKS * B_UNL
    cells = SIZE // 8
    for d, info in DOMAINS.items():
        c = info["num_classes"]
        label = torch.randint(0, c, (n_lab, SIZE, SIZE), generator=g)
        label[B_LAB:, : SIZE // 2] = 255
        dy = torch.randint(-(cells // 2), cells // 2 + 1, (n_unl,), generator=g) * 8
        dx = torch.randint(-(cells // 2), cells // 2 + 1, (n_unl,), generator=g) * 8
        box1 = torch.stack([dy.clamp(min=0), dx.clamp(min=0), (SIZE + dy).clamp(max=SIZE), (SIZE + dx).clamp(max=SIZE)], 1)
        box2 = box1 - torch.stack([dy, dx, dy, dx], 1)
        valid2 = torch.ones(n_unl, SIZE, SIZE, dtype=torch.bool)
        valid2[:, :, -8:] = False  # padding at crop 2's right edge
        out[d] = {
            "labeled": {
                "image": torch.randint(0, 256, (n_lab, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "label": label,
            },
            "unlabeled": {
                "image1": torch.randint(0, 256, (n_unl, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "image2": torch.randint(0, 256, (n_unl, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                "box1": box1.int(), "box2": box2.int(),
                "flip1": torch.rand(n_unl, generator=g) < 0.5, "flip2": torch.rand(n_unl, generator=g) < 0.5,
                "valid1": torch.ones(n_unl, SIZE, SIZE, dtype=torch.bool), "valid2": valid2,
                "label1": torch.randint(0, c, (n_unl, SIZE, SIZE), generator=g).to(torch.uint8),
                "label2": torch.randint(0, c, (n_unl, SIZE, SIZE), generator=g).to(torch.uint8),
            },
        }  # fmt: skip
    return out


def _slice(batch: dict, index: int, count: int, domains=None) -> dict:
    """Rows index*n .. (index+1)*n of every tensor (n = the global rows / count), of `domains` (default all)."""
    out = {}
    for d in domains or batch:
        out[d] = {}
        for part, tensors in batch[d].items():
            n = next(iter(tensors.values())).shape[0] // count
            out[d][part] = {k: v[index * n : (index + 1) * n] for k, v in tensors.items()}
    return out


def _pretrain(root: Path) -> None:
    """PRETRAIN steps on one rank (fp32) over the global batches, saved as a checkpoint at step PRETRAIN."""
    cfg = _config("joint")
    replica = setup_replica(cfg, DOMAINS, rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m)
    model, optimizer, scheduler = replica.model, replica.optimizer, replica.scheduler
    model.train()
    for step in range(PRETRAIN):
        out = mix_loss_step(model, _batch(step), cfg, step=step, dc_weight=dc_weight_at(step, cfg.loss))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
    save_state(
        root / "ckpt", model=model, optimizer=optimizer, scheduler=scheduler, step=PRETRAIN, best_score=0.0,
        config_yaml=to_yaml(cfg),
    )  # fmt: skip


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def _run(root: Path, forward: str, *, rank: int, world: int, prepare, ranks=None, steps=STEPS, dropout=None) -> dict:
    """`steps` steps resumed from the checkpoint; this rank's record of them (dropout: set the ASPP's p)."""
    from ray.train import Checkpoint

    cfg = _config(forward)
    replica = setup_replica(
        cfg, DOMAINS, rank=rank, world=world, prepare=prepare, checkpoint=Checkpoint.from_directory(str(root / "ckpt")),
        domain_ranks=ranks,
    )  # fmt: skip
    model, optimizer, scheduler = replica.model, replica.optimizer, replica.scheduler
    assert replica.start == PRETRAIN
    if dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    model.train()
    record: dict = {"loss": [], "stats": [], "grad": []}
    for step in range(PRETRAIN, PRETRAIN + steps):
        if ranks is None:
            batch = _slice(_batch(step), rank, world)
            domain_worlds = None
        else:
            role = ranks.roles[rank]
            batch = _slice(_batch(step), role.index, len(role.ranks), [role.domain])
            domain_worlds = ranks.worlds
        out = mix_loss_step(
            model, batch, cfg, step=step, dc_weight=dc_weight_at(step, cfg.loss), diagnostics=True, world=World(world), domain_worlds=domain_worlds
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if step in (PRETRAIN, PRETRAIN + steps - 1):
            record["grad"].append(_flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()))
        optimizer.step()
        scheduler.step()
        record["loss"].append(out.parts["loss"])
        record["stats"].append(out.stats)
    if ranks is not None:  # each head's running statistics from a rank of its domain, as a checkpoint has them
        sync_buffers(model, world, buffer_sources(ranks))
    net = unwrap(model)
    record["buffers"] = _flat(b for name, b in net.named_buffers() if "running" in name)
    record["params"] = _flat(net.parameters())
    state = [optimizer.state[p] for p in net.parameters()]
    record["exp_avg"] = _flat(s["exp_avg"] for s in state)
    record["exp_avg_sq"] = _flat(s["exp_avg_sq"] for s in state)
    return record


def _rank_main(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        def prepare(model, parallel_strategy_kwargs):
            return DistributedDataParallel(model.double(), **parallel_strategy_kwargs)

        out = {f: _run(Path(root), f, rank=rank, world=world, prepare=prepare) for f in ("joint", "per_domain")}
        # placement by domain: rank 0 on site b, rank 1 on site a (not the domains' order)
        ranks = by_domain(PLACED, node_labels={SITE: "b" if rank == 0 else "a"}, workers_per_domain=1)
        out["placed"] = _run(Path(root), "joint", rank=rank, world=world, prepare=prepare, ranks=ranks)
        torch.save(out, Path(root, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    _pretrain(root)
    mp.start_processes(_rank_main, args=(RANKS, str(root)), nprocs=RANKS, start_method="spawn", join=True)
    two = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(RANKS)]
    one = {
        f: _run(root, f, rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m.double())
        for f in ("joint", "per_domain")
    }
    return root, two, one


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = {"joint": ("joint", "joint"), "per_domain": ("per_domain", "per_domain"), "placed": ("placed", "joint")}


@pytest.mark.parametrize("case", list(CASES))
def test_five_trained_steps_on_two_ranks_are_those_on_one(runs, case):
    _, two, one = runs
    mine, theirs = CASES[case]
    reference = one[theirs]
    for rank, record in enumerate(two):  # every rank: the whole batch's loss and stats, the same state
        got = record[mine]
        for s in range(STEPS):
            assert got["loss"][s] == pytest.approx(reference["loss"][s], rel=TOL), (rank, s)
            assert set(got["stats"][s]) == set(reference["stats"][s]), (rank, s)
            for key, value in reference["stats"][s].items():  # NaN: no cell counted (e.g. none confident)
                assert got["stats"][s][key] == pytest.approx(value, rel=TOL, abs=1e-9, nan_ok=True), (rank, s, key)
        for i in range(2):
            assert _rel(got["grad"][i], reference["grad"][i]) < TOL, (rank, "grad", i)
        for key in ("params", "exp_avg", "exp_avg_sq"):
            assert _rel(got[key], reference[key]) < TOL, (rank, key)
    assert _rel(two[0][mine]["buffers"], reference["buffers"]) < TOL  # rank 0's: what a checkpoint holds


def test_the_direction_masks_cut_and_the_run_trains(runs):
    """gamma falls between the anchors' confidences: at every step some anchors pass, not all (an anchor
    has at most one of its two directional terms on: passing < 0.5 means some have none), and so in every
    domain at some step; the losses are finite and the AdamW moments non-zero (the optimizer state is
    compared, not empty)."""
    _, _, one = runs
    for forward, record in one.items():
        passing = [[stats[f"passing/{d}"] for d in DOMAINS] for stats in record["stats"]]
        assert all(0.0 < sum(step) / len(step) < 0.5 for step in passing), (forward, passing)
        assert all(any(0.0 < step[i] < 0.5 for step in passing) for i in range(len(DOMAINS))), (forward, passing)
        assert all(math.isfinite(v) for v in record["loss"])
        assert record["exp_avg"].norm() > 0 and record["exp_avg_sq"].norm() > 0


def test_the_dropout_masks_matter(runs):
    """Without the ASPP's dropout the first step differs (so the comparisons above cover dropout)."""
    root, _, one = runs
    record = _run(root, "joint", rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m.double(), steps=1, dropout=0.0)
    assert record["loss"][0] != pytest.approx(one["joint"]["loss"][0], rel=1e-3)
