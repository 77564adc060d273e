"""Which domains a rank trains on, and over which ranks each domain's terms are summed (docs/placement.md).

Without placement every rank holds a slice of every domain, and every term is summed over the whole world.
With `scaling.placement: by_domain` a rank serves one domain: it forwards that domain's batches through the
shared trunk and that domain's head only. What keeps the step equal to the default mode's (joint forward,
model.sync_bn on):
- the trunk's BatchNorm statistics are summed over all ranks, i.e. over every domain's images, as one joint
  trunk pass computes them; they use a process group of their own (`bn_group`), so their collectives never
  interleave with DDP's gradient buckets, which ranks with different heads make ready at different times;
- a domain head's BatchNorm, its CE pixel count, its DCLoss masked-anchor counts and negatives are summed
  over that domain's ranks only (the ranks holding its images);
- the loss parts are summed over all ranks (ranks without a domain add 0), every rank back-propagates W
  times its partial loss, and DDP's mean over W ranks restores the sum; heads a rank does not use are
  unused parameters there (zero gradient in the all-reduce);
- DDP does not broadcast buffers (rank 0's running statistics of other domains' heads are stale there);
  `sync_buffers` copies each head's from a rank of its domain before evaluating and checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from raymh.losses.world import World
from raymh.model.sync_bn import WorldBatchNorm2d
from raymh.train.checkpoint import unwrap
from raymh.train.rank_assignment import RankRole, assign_ranks


@dataclass
class DomainRanks:
    """This rank's domains and each domain's world; `roles` is None without placement."""

    served: list[str]
    worlds: dict[str, World] | None = None  # None: every domain over the whole world
    roles: list[RankRole] | None = None
    groups: dict[str, object] = field(default_factory=dict)  # domain -> process group of its ranks
    bn_group: object = None  # all ranks, for the trunk's BatchNorm (placement only)

    def shard(self, rank: int, world: int) -> tuple[int, int]:
        """(index, count) of this rank among the readers of its train sets."""
        if self.roles is None:
            return rank, world
        return self.roles[rank].index, len(self.roles[rank].ranks)

    def val_share(self, domain: str, rank: int, world: int) -> tuple[int, int] | None:
        """(index, count) of this rank among the evaluators of `domain`'s val split; None: not this rank's."""
        if self.roles is None:
            return rank, world
        role = self.roles[rank]
        return (role.index, len(role.ranks)) if role.domain == domain else None


def everywhere(domains: Sequence[str]) -> DomainRanks:
    """No placement: every rank serves every domain."""
    return DomainRanks(served=list(domains))


def by_domain(
    domains: Sequence[tuple[str, Mapping[str, str]]], *, node_labels: Mapping[str, str], workers_per_domain: int
) -> DomainRanks:
    """Placement by domain, inside an initialised process group: every rank shares its node's labels, all
    find the same roles (`assign_ranks`), and create the same process groups in the same order."""
    world = dist.get_world_size()
    labels: list = [None] * world
    dist.all_gather_object(labels, dict(node_labels))
    roles = assign_ranks(domains, labels, workers_per_domain)
    groups = {}
    for name, _ in domains:  # every rank creates every group, in config order
        groups[name] = dist.new_group([r for r, role in enumerate(roles) if role.domain == name])
    bn_group = dist.new_group(list(range(world)))
    mine = roles[dist.get_rank()].domain
    worlds = {mine: World(len(roles[dist.get_rank()].ranks), group=groups[mine])}
    return DomainRanks(served=[mine], worlds=worlds, roles=roles, groups=groups, bn_group=bn_group)


def serving(cfg, domains: Sequence[str], world: int, *, node_labels: Callable[[], Mapping[str, str]]) -> DomainRanks:
    """This rank's domains: all of them, or under placement by_domain the one its node's labels assign it."""
    if cfg.scaling.placement != "by_domain" or world < 2:
        return everywhere(domains)
    return by_domain(
        [(d.name, d.placement) for d in cfg.domains], node_labels=node_labels(),
        workers_per_domain=cfg.scaling.workers_per_domain,
    )  # fmt: skip


def attach_groups(model: torch.nn.Module, ranks: DomainRanks) -> None:
    """Point each WorldBatchNorm2d of a (not yet wrapped) model at its ranks: a head's at its domain's
    group, the rest at `bn_group`. A no-op without placement."""
    if ranks.roles is None:
        return
    in_heads = set()
    for domain, group in ranks.groups.items():
        for m in model.heads[domain].modules():
            if isinstance(m, WorldBatchNorm2d):
                m.group = group
                in_heads.add(id(m))
    for m in model.modules():
        if isinstance(m, WorldBatchNorm2d) and id(m) not in in_heads:
            m.group = ranks.bn_group


def buffer_sources(ranks: DomainRanks) -> dict[str, int]:
    """{state-dict prefix: the rank whose buffers are right}: each head's first rank; "" (the rest): rank 0."""
    if ranks.roles is None:
        return {"": 0}
    first = {}
    for r, role in enumerate(ranks.roles):
        first.setdefault(role.domain, r)
    return {**{f"heads.{d}.": r for d, r in first.items()}, "": 0}


def sync_buffers(model: torch.nn.Module, world: int, sources: Mapping[str, int] | None = None) -> None:
    """Give every rank the buffers (BatchNorm running statistics) of the rank that has them right: by
    default rank 0's (a no-op with model.sync_bn, where they are equal already; without it each rank's
    follow its own batches); with placement, each head's from a rank of its domain (`buffer_sources`)."""
    if world < 2:
        return
    sources = dict(sources or {"": 0})
    prefixes = sorted(sources, key=len, reverse=True)  # the longest prefix wins
    for name, buffer in unwrap(model).named_buffers():
        src = sources[next(p for p in prefixes if name.startswith(p))]
        dist.broadcast(buffer.data, src=src)
