"""Placement by domain (`scaling.placement: by_domain`, docs/placement.md): where each domain's workers and
data may run, checked against the live nodes before anything starts (which rank then serves which domain is
`raymh.train.rank_assignment`'s).

A domain's `placement` is a Ray node-label selector, {label: value}, with Ray's value forms: `v` (the label
equals v), `!v` (absent or not v), `in(a,b)` (one of them), `!in(a,b)` (absent or none of them); a node
matches when every entry does. The same selector goes to Ray (per-worker `ScalingConfig(label_selector=)`,
the domain's read tasks), so Ray enforces it; raymh matches it itself only to fail early with a message
that lists the nodes, and to tell each rank its domain (Ray Train orders ranks by node, not by the order of
the per-worker selectors, so a rank finds its domain from its own node's labels).

No Ray import at module level. The selector grammar (`check_selector`, `matches`) is in `raymh.selectors`,
which the config uses too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raymh.selectors import matches
from raymh.train.rank_assignment import PlacementError, match_slots


def describe_selector(selector: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in selector.items()) + "}"


@dataclass
class Node:
    """An alive Ray node as placement sees it."""

    node_id: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    cpus: float = 0.0
    gpus: float = 0.0

    def describe(self) -> str:
        own = {k: v for k, v in self.labels.items() if not k.startswith("ray.io/")}
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.address} ({self.node_id[:8]}): labels {own or '{}'}, {self.cpus:g} CPU{gpus}"


def live_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to (`ray.nodes()`)."""
    import ray

    return [
        Node(
            node_id=n["NodeID"], address=n.get("NodeManagerAddress", "?"), labels=dict(n.get("Labels") or {}),
            cpus=float(n.get("Resources", {}).get("CPU", 0)), gpus=float(n.get("Resources", {}).get("GPU", 0)),
        )  # fmt: skip
        for n in ray.nodes()
        if n.get("Alive")
    ]


def worker_selectors(domains: Sequence[tuple[str, Mapping[str, str]]], workers_per_domain: int) -> list[dict]:
    """The per-worker label selectors of `ScalingConfig(label_selector=...)`: each domain's, repeated."""
    return [dict(sel) for _, sel in domains for _ in range(workers_per_domain)]


def check_placement(
    domains: Sequence[tuple[str, Mapping[str, str]]],
    nodes: Sequence[Node],
    *,
    workers_per_domain: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
    data_cpus: float = 0.0,
) -> None:
    """Raise PlacementError unless every domain's selector matches alive nodes with room for its workers
    (cpus_per_worker CPUs and gpus_per_worker GPUs each, on one node) plus data_cpus for its data tasks,
    and all domains' workers fit at once. The message names the domain and its selector, and lists every
    node's labels and resources."""
    listing = "; ".join(n.describe() for n in nodes) or "none"

    def slots(node: Node, cpus: float) -> int:
        by_cpu = int(cpus // cpus_per_worker + 1e-9)
        return min(by_cpu, int(node.gpus / gpus_per_worker + 1e-9)) if gpus_per_worker else by_cpu

    need = f"{workers_per_domain} worker(s) x {cpus_per_worker:g} CPU" + (
        f" + {gpus_per_worker:g} GPU" if gpus_per_worker else ""
    )
    for name, selector in domains:
        fit = [n for n in nodes if matches(selector, n.labels)]
        if not fit:
            raise PlacementError(
                f"domain {name!r}: placement {describe_selector(selector)} matches no alive Ray node. Nodes: "
                f"{listing}. Start a node with that label (`ray start ... --labels=...`) or fix "
                f"domains.{name}.placement"
            )
        room = sum(slots(n, n.cpus) for n in fit)
        spare = sum(n.cpus for n in fit) - workers_per_domain * cpus_per_worker
        if room < workers_per_domain or spare + 1e-9 < data_cpus:
            data = f" and {data_cpus:g} CPU for its data tasks" if data_cpus else ""
            raise PlacementError(
                f"domain {name!r}: placement {describe_selector(selector)} matches {len(fit)} node(s) with room "
                f"for {room} worker(s); it needs {need}{data}. Nodes: {listing}. Add CPUs/GPUs or nodes with that "
                "label, or lower scaling.workers_per_domain / scaling.cpus_per_worker"
            )
    # all domains at once: a node two selectors match holds workers of both
    slot_nodes = [i for i, n in enumerate(nodes) for _ in range(slots(n, n.cpus))]
    wants = [
        [s for s, i in enumerate(slot_nodes) if matches(sel, nodes[i].labels)]
        for _, sel in domains
        for _ in range(workers_per_domain)
    ]
    if match_slots(wants, len(slot_nodes)) is None:
        raise PlacementError(
            f"the domains' placements {', '.join(f'{n}: {describe_selector(s)}' for n, s in domains)} each match "
            f"nodes, but not with room for all {len(wants)} workers ({need} per domain) at once. Nodes: {listing}"
        )
