"""Placement by domain: selector matching, the check against live nodes, and which rank serves which domain
(fake node lists; the real two-node cluster is in tests/test_placement_e2e.py)."""

from __future__ import annotations

import pytest

from raymh.config import ConfigError, load_config
from raymh.run.placement import (
    Node,
    PlacementError,
    check_placement,
    worker_selectors,
)
from raymh.selectors import matches
from raymh.train.rank_assignment import assign_ranks

SITE = "raymh.io/site"
A, B = {SITE: "a"}, {SITE: "b"}


def _nodes(*specs) -> list[Node]:
    return [Node(f"{i:08x}ffff", f"10.0.0.{i}", labels, cpus=cpus, gpus=gpus) for i, (labels, cpus, gpus) in enumerate(specs)]


@pytest.mark.parametrize(
    ("value", "label", "expected"),
    [("a", "a", True), ("a", "b", False), ("a", None, False), ("!a", "b", True), ("!a", None, True),
     ("!a", "a", False), ("in(a, b)", "b", True), ("in(a,b)", "c", False), ("!in(a,b)", "c", True),
     ("!in(a,b)", "a", False)],
)  # fmt: skip
def test_selector_values_match_as_ray_defines_them(value, label, expected):
    labels = {} if label is None else {SITE: label}
    assert matches({SITE: value}, labels) is expected


def test_every_entry_of_a_selector_must_match():
    assert matches({SITE: "a", "zone": "z1"}, {SITE: "a", "zone": "z1", "x": "y"})
    assert not matches({SITE: "a", "zone": "z1"}, {SITE: "a"})


def _placed(**over):
    sets = {
        "scaling.placement": "by_domain", **{f"domains.{i}.placement": {SITE: s} for i, s in enumerate("abc")},
        **{f"domains.{i}.prepared": f"/data/site/{i}" for i in range(3)}, **over,
    }  # fmt: skip
    return load_config("quickstart", sets)


def test_config_by_domain_needs_every_domain_placed_and_counts_workers():
    cfg = _placed(**{"scaling.workers_per_domain": 2})
    assert cfg.train_workers == 2 * len(cfg.domains)
    assert load_config("quickstart").train_workers == 1
    with pytest.raises(ConfigError, match=r"domains\[2\] \(\w+\) has no `placement`"):
        _placed(**{"domains.2.placement": None})
    with pytest.raises(ConfigError, match="scaling.placement is 'none'"):
        load_config("quickstart", {"domains.0.placement": {SITE: "a"}})
    with pytest.raises(ConfigError, match="scaling.num_workers=4 under placement by_domain"):
        _placed(**{"scaling.num_workers": 4})
    with pytest.raises(ConfigError, match="not a label selector value"):
        _placed(**{"domains.0.placement": {SITE: "a b"}})


def test_placement_refuses_what_would_read_a_sites_data_in_the_driver():
    with pytest.raises(ConfigError, match=r"domains\[1\] \(bdd100k\): a `root:` domain is refused"):
        _placed(**{"domains.1.prepared": None})
    with pytest.raises(ConfigError, match="data.transforms_on=ray_data is refused under scaling.placement"):
        _placed(**{"data.transforms_on": "ray_data"})
    assert _placed(**{"data.transforms_on": "tasks"}).data.transforms_on == "tasks"


def test_under_placement_unlabeled_labels_and_predictions_stay_on_site_unless_a_domain_opts_in():
    plain, placed = load_config("quickstart"), _placed()
    assert all(plain.reads_unlabeled_labels(d) and plain.shares_predictions(d.name) for d in plain.domains)
    assert not any(placed.reads_unlabeled_labels(d) or placed.shares_predictions(d.name) for d in placed.domains)
    opted = _placed(**{"domains.1.label_diagnostics": True, "domains.2.share_predictions": True})
    assert [opted.reads_unlabeled_labels(d) for d in opted.domains] == [False, True, False]
    assert [opted.shares_predictions(d.name) for d in opted.domains] == [False, False, True]
    off = load_config("quickstart", {"domains.0.label_diagnostics": False})
    assert not off.reads_unlabeled_labels(off.domains[0])


def test_check_passes_when_every_domain_has_room():
    nodes = _nodes((A, 4, 0), (B, 3, 0))
    check_placement([("x", A), ("y", B)], nodes, workers_per_domain=1, cpus_per_worker=2, data_cpus=1)
    check_placement([("x", A)], nodes, workers_per_domain=2, cpus_per_worker=2)


def test_a_selector_matching_no_node_names_the_domain_and_lists_every_node():
    nodes = _nodes((A, 4, 0), (B, 2, 0), ({}, 8, 0))
    with pytest.raises(PlacementError) as err:
        check_placement([("x", A), ("y", {SITE: "eu-1"})], nodes, workers_per_domain=1, cpus_per_worker=2)
    msg = str(err.value)
    assert "domain 'y'" in msg and "raymh.io/site: eu-1" in msg and "matches no alive Ray node" in msg
    for labels in ("{'raymh.io/site': 'a'}", "{'raymh.io/site': 'b'}", "labels {}"):
        assert labels in msg


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [({"workers_per_domain": 2, "cpus_per_worker": 2}, "room for 1 worker"),
     ({"workers_per_domain": 1, "cpus_per_worker": 2, "gpus_per_worker": 1}, "room for 0 worker"),
     ({"workers_per_domain": 1, "cpus_per_worker": 2, "data_cpus": 1}, "1 CPU for its data tasks")],
)  # fmt: skip
def test_too_few_cpus_or_gpus_name_the_domain(kwargs, why):
    nodes = _nodes((A, 4, 1), (B, 2, 0))
    with pytest.raises(PlacementError, match=f"domain 'y'.*{why}"):
        check_placement([("x", A), ("y", B)], nodes, **kwargs)


def test_domains_sharing_a_node_must_fit_together():
    nodes = _nodes(({SITE: "a", "pool": "p"}, 2, 0), (B, 2, 0))
    # each alone fits on the pool node, both together do not (x could use only it, y too)
    with pytest.raises(PlacementError, match="not with room for all 2 workers"):
        check_placement([("x", {"pool": "p"}), ("y", {SITE: "a"})], nodes, workers_per_domain=1, cpus_per_worker=2)
    check_placement([("x", {"pool": "p"}), ("y", {SITE: "in(a,b)"})], nodes, workers_per_domain=1, cpus_per_worker=2)


def test_ranks_find_their_domain_from_their_nodes_labels_not_their_order():
    domains = [("x", A), ("y", B)]
    assert worker_selectors(domains, 2) == [A, A, B, B]
    roles = assign_ranks(domains, [B, A, B, A], 2)  # Ray ranks follow nodes, not the selector list
    assert [r.domain for r in roles] == ["y", "x", "y", "x"]
    assert [r.index for r in roles] == [0, 0, 1, 1]
    assert roles[0].ranks == (0, 2) and roles[1].ranks == (1, 3)
    # one node both selectors match: every rank gets a seat
    roles = assign_ranks([("x", {SITE: "in(a,b)"}), ("y", A)], [A, A], 1)
    assert sorted(r.domain for r in roles) == ["x", "y"]
    with pytest.raises(PlacementError, match="do not fit"):
        assign_ranks(domains, [A, A], 1)
