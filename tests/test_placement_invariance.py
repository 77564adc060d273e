"""Placement by domain computes the default mode's step: ranks serving one domain each (its batch, its head,
its BatchNorm and DCLoss sums over its own ranks) give the Mix Loss and gradient of one rank forwarding
every domain jointly (tests/test_world_invariance.py's one-rank step), on CPU with gloo and DDP, in fp64.

Two layouts: one rank per domain, and two ranks per domain (the domain's batch split between them, so its
head's BatchNorm and its negatives are gathered over a group of two). Ranks are deliberately listed in
the other order than the domains: a rank finds its domain from its node's labels, not from its rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_world_invariance import DOMAINS, _cfg, _global_batch, _slice, _step

from raymh.losses.world import World
from raymh.train.domain_ranks import by_domain
from raymh.train.step import dc_weight_at, mix_loss_step
from raymh.train.worker import setup_replica

SITE = "raymh.io/site"
PLACED = [("a", {SITE: "a"}), ("b", {SITE: "b"})]


def _labels(rank: int, world: int) -> dict:
    """The node labels of a rank: the first half of the ranks on site b, the rest on site a."""
    return {SITE: "b" if rank < world // 2 else "a"}


def _placed_step(rank: int, world: int, root: str) -> None:
    """One placement-mode step of this rank in a fresh process group of `world` ranks; its result to a file."""
    dist.init_process_group("gloo", init_method=f"file://{root}/pg{world}", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        def prepare(model, parallel_strategy_kwargs):
            return DistributedDataParallel(model.double(), **parallel_strategy_kwargs)

        per_domain = world // len(PLACED)
        ranks = by_domain(PLACED, node_labels=_labels(rank, world), workers_per_domain=per_domain)
        role = ranks.roles[rank]
        cfg = _cfg({})
        replica = setup_replica(cfg, DOMAINS, rank=rank, world=world, prepare=prepare, domain_ranks=ranks)
        model = replica.model  # dropout as configured: masks follow the samples (raymh.model.dropout)
        model.train()
        batch = {role.domain: _slice(_global_batch(), role.index, per_domain)[role.domain]}
        out = mix_loss_step(model, batch, cfg, step=0, dc_weight=dc_weight_at(0, cfg.loss), world=World(world), domain_worlds=ranks.worlds)
        out.loss.backward()
        Path(root, f"placed{world}-{rank}.json").write_text(
            json.dumps({"loss": out.parts["loss"], "parts": out.parts, "domain": role.domain})
        )
        if rank in (0, world - 1):  # one rank of each domain (DDP leaves every rank the same gradient)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            torch.save(torch.cat([g.flatten() for g in grads]), Path(root, f"grad{world}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, root: str) -> None:
    """Four processes: two ranks per domain, then (the first two, in a new group) one rank per domain."""
    torch.set_num_threads(1)
    _placed_step(rank, 4, root)
    if rank < 2:
        _placed_step(rank, 2, root)


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    root = tmp_path_factory.mktemp("placed")
    mp.start_processes(_rank_main, args=(str(root),), nprocs=4, start_method="spawn", join=True)
    out = {w: [json.loads((root / f"placed{w}-{r}.json").read_text()) for r in range(w)] for w in (2, 4)}
    for w, results in out.items():
        for r in (0, w - 1):
            results[r]["grad"] = torch.load(root / f"grad{w}-{r}.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def one_rank():
    torch.set_num_threads(1)
    one = _step(_cfg({}), rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m.double())
    return {"loss": one["loss"], "grad": one["grad"].double()}


@pytest.mark.parametrize("world", [2, 4])
def test_placement_gives_the_default_modes_loss_and_gradient(placed, one_rank, world):
    results = placed[world]
    assert [r["domain"] for r in results] == ["b"] * (world // 2) + ["a"] * (world // 2)
    reference = one_rank["grad"]
    for r in results:  # every rank: the whole step's loss, and (after DDP's all-reduce) the same gradient
        assert r["loss"] == pytest.approx(one_rank["loss"], rel=1e-5)
        if "grad" in r:
            assert float((r["grad"] - reference).norm() / reference.norm()) < 1e-5
    parts = results[0]["parts"]
    assert parts["ce/a"] > 0 and parts["ce/b"] > 0 and parts["dc/a"] > 0 and parts["dc/b"] > 0
