"""Placement by domain on a real two-node Ray cluster (slow): two `ray start` nodes labelled
raymh.io/site=a (the head) and raymh.io/site=b, two tiny domains pinned one to each.

Where things ran is read from Ray's own records (the state API: `ray list tasks/actors/placement-groups
--detail`), not from raymh's: every task reading a domain's files ran on that domain's node, the placement
group's bundle with a domain's selector sits on that node, and the Train workers are one on each node; no
prediction or unlabeled image's label reached MLflow. A selector that matches no node fails before training,
naming the domain and listing every node's labels.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import tiny_overrides
from tests.ray_head import BIN, RayHead

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SITE = "raymh.io/site"
READS = ("raymh-scan",)  # the name raymh.data.site_reads gives its scan tasks (rows: read by a SiteStore actor)
DOMAINS = (
    "[{name: cityscapes, kind: cityscapes, prepared: %s, placement: {raymh.io/site: a}},"
    " {name: bdd100k, kind: bdd100k, prepared: %s, placement: {raymh.io/site: %s}}]"
)


def _domains(e2e_root, site_b: str) -> str:
    """Both domains prepared beforehand (a `root:` domain is refused under placement: the driver would read
    it), as a site would run `raymh data prepare` on its own nodes."""
    from raymh.config import load_config
    from raymh.data.cache import prepared_dirs

    prepared = prepared_dirs(load_config("quickstart", tiny_overrides(e2e_root, **{"data.cache_dir": str(e2e_root / "cache")})))
    return DOMAINS % (prepared["cityscapes"], prepared["bdd100k"], site_b)


@pytest.fixture(scope="module")
def sites():
    h = RayHead(num_cpus=2, token_mode=False, labels={SITE: "a"})
    try:
        h.wait_ready()
        h.add_node(num_cpus=2, labels={SITE: "b"})
        yield h
    finally:
        h.stop()


def _train(sites: RayHead, e2e_root, tmp_path, name: str, site_b: str = "b", **extra) -> subprocess.CompletedProcess:
    over = tiny_overrides(tmp_path, **{
        "data.cache_dir": str(e2e_root / "cache"), "train.iters": 2, "train.eval_every": 2, "train.panels": 2,
        "tracking.run_name": name, "domains": _domains(e2e_root, site_b), "scaling.placement": "by_domain", **extra,
    })  # fmt: skip
    return subprocess.run(
        [str(BIN / "raymh"), "train", "--config", "quickstart", *[a for o in over for a in ("--set", o)]],
        env={**sites.env, "RAY_TMPDIR": str(sites.root)}, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _state(sites: RayHead, what: str, *filters: str) -> list[dict]:
    args = ["list", what, "--address", sites.dashboard, "--format", "json", "--detail", "--limit", "10000"]
    out = sites.ray(*args, *[a for f in filters for a in ("--filter", f)])
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else []


def test_each_domains_reads_and_worker_run_on_its_own_node(sites, e2e_root, tmp_path):
    done = _train(sites, e2e_root, tmp_path, "placed")
    assert done.returncode == 0 and "run placed: finished at step 2" in done.stdout, (done.stdout + done.stderr)[-4000:]
    node_of = {n["labels"].get(SITE): n["node_id"] for n in _state(sites, "nodes", "state=ALIVE")}
    assert set(node_of) == {"a", "b"}
    site_of_domain = {"cityscapes": "a", "bdd100k": "b"}

    deadline = time.monotonic() + 60  # task events reach the state API a little after the tasks end
    while True:
        reads = [t for t in _state(sites, "tasks") if t["name"].split(":")[0] in READS and t["state"] == "FINISHED"]
        kinds = {tuple(t["name"].split(":")) for t in reads}
        if len(kinds) == 2 or time.monotonic() > deadline:
            break
        time.sleep(3)
    # per domain: the scan of its files on its node, and its rows read and owned by a store actor there
    assert kinds == {(k, d) for k in READS for d in site_of_domain}, reads
    for task in reads:
        domain = task["name"].split(":")[1]
        assert task["node_id"] == node_of[site_of_domain[domain]], task
    stores = _state(sites, "actors", "class_name=SiteStore")
    assert sorted(a["name"].split(":")[1] for a in stores) == sorted(site_of_domain), stores
    for store in stores:
        assert store["node_id"] == node_of[site_of_domain[store["name"].split(":")[1]]], store

    workers = _state(sites, "actors", "class_name=RayTrainWorker")
    assert sorted(a["node_id"] for a in workers) == sorted(node_of.values()), workers
    every = _state(sites, "placement-groups")
    groups = [g for g in every if any(b.get("label_selector") for b in g.get("bundles") or [])]
    assert groups, json.dumps(every)[-3000:]
    for bundle in groups[-1]["bundles"]:  # each worker's bundle on a node of its domain's site
        assert bundle["node_id"] == node_of[bundle["label_selector"][SITE]], groups[-1]
    # and each rank said which domain it served: the one of its node
    for domain, site in site_of_domain.items():
        assert f"on node {node_of[site][:8]} serves domain {domain}" in done.stdout + done.stderr
    # no val image, label or prediction went to MLflow (train.panels: 2, but no domain shares its predictions)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("raymh-quickstart").experiment_id])
    evals = [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert evals and all(not [p for p in client.list_artifacts(run.info.run_id, e) if "panels" in p.path or "predictions" in p.path] for e in evals)
    assert not any(k.startswith("train/pseudo_acc") for k in run.data.metrics)  # unlabeled labels never read

    # `raymh eval` scores each domain on its own node and gets its confusion matrix only
    scored = subprocess.run(
        [str(BIN / "raymh"), "eval", "--checkpoint", str(tmp_path / "runs" / "placed")],
        env={**sites.env, "RAY_TMPDIR": str(sites.root)}, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert scored.returncode == 0 and "each on its own site" in scored.stdout, (scored.stdout + scored.stderr)[-3000:]
    deadline = time.monotonic() + 60
    while True:
        evals = {t["name"].split(":")[1]: t["node_id"] for t in _state(sites, "tasks")
                 if t["name"].startswith("raymh-eval:") and t["state"] == "FINISHED"}  # fmt: skip
        if len(evals) == 2 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert evals == {d: node_of[site] for d, site in site_of_domain.items()}, evals


def test_a_selector_matching_no_node_fails_before_training(sites, e2e_root, tmp_path):
    done = _train(sites, e2e_root, tmp_path, "nowhere", site_b="eu-1")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert "domain 'bdd100k': placement {raymh.io/site: eu-1} matches no alive Ray node" in out, out[-3000:]
    assert "{'raymh.io/site': 'a'}" in out and "{'raymh.io/site': 'b'}" in out
    assert "Traceback" not in out and "step 1/" not in out
