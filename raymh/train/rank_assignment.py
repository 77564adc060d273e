"""Which rank serves which domain under placement by domain (docs/placement.md), from every rank's node
labels: Ray Train numbers ranks by node, not in the order of the per-worker label selectors, so each rank
finds its domain from its own node's labels, and all ranks compute the same answer. No Ray import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raymh.errors import InputError
from raymh.selectors import matches


class PlacementError(InputError):
    """A domain's placement cannot be honoured by the cluster; the message names the domain, its selector
    and every node's labels."""


def match_slots(wants: Sequence[Sequence[int]], n_slots: int) -> list[int] | None:
    """A slot for every item (item i may take a slot of wants[i]; each slot once), or None when there is
    none: bipartite matching by augmenting paths; deterministic (first fit in the given orders)."""
    owner: list[int | None] = [None] * n_slots

    def place(i: int, seen: set[int]) -> bool:
        for s in wants[i]:
            if s in seen:
                continue
            seen.add(s)
            if owner[s] is None or place(owner[s], seen):
                owner[s] = i
                return True
        return False

    for i in range(len(wants)):
        if not place(i, set()):
            return None
    slot_of = [0] * len(wants)
    for s, i in enumerate(owner):
        if i is not None:
            slot_of[i] = s
    return slot_of


@dataclass(frozen=True)
class RankRole:
    """What one rank serves under placement by_domain: a domain, and its index among that domain's ranks."""

    domain: str
    index: int  # 0 .. workers_per_domain - 1
    ranks: tuple[int, ...]  # every rank of this domain, increasing


def assign_ranks(
    domains: Sequence[tuple[str, Mapping[str, str]]], rank_labels: Sequence[Mapping[str, str]], workers_per_domain: int
) -> list[RankRole]:
    """Each rank's role from every rank's node labels (the same answer on every rank): workers_per_domain
    ranks per domain, each on a node its domain's selector matches. Ray placed the workers by the same
    selectors, so such an assignment exists; it is not simply rank order (ranks follow nodes)."""
    seats = [name for name, _ in domains for _ in range(workers_per_domain)]
    selector = dict(domains)
    if len(rank_labels) != len(seats):
        raise ValueError(f"{len(rank_labels)} ranks for {len(domains)} domains x {workers_per_domain} workers")
    wants = [[s for s, name in enumerate(seats) if matches(selector[name], labels)] for labels in rank_labels]
    seat_of = match_slots(wants, len(seats))
    if seat_of is None:
        found = "; ".join(f"rank {r}: {dict(labels)}" for r, labels in enumerate(rank_labels))
        raise PlacementError(f"the train workers' nodes do not fit the domains' placements ({found})")
    by_domain: dict[str, list[int]] = {}
    for rank, seat in enumerate(seat_of):
        by_domain.setdefault(seats[seat], []).append(rank)
    return [
        RankRole(seats[seat_of[r]], by_domain[seats[seat_of[r]]].index(r), tuple(by_domain[seats[seat_of[r]]]))
        for r in range(len(rank_labels))
    ]
