"""Sites as a boundary (slow, cluster): each site's data exists only inside its own node's mount namespace.

Two `ray start` nodes, labelled raymh.io/site=a and =b, each run in a mount namespace of its own where a
tmpfs at one path holds that site's prepared domain and nothing else; the head and the driver see an empty
folder at that path, and neither site can see the other's. A run placed by domain trains, evaluates and
checkpoints there, and `raymh eval` scores it: a read of a site's files by the driver, the head or the
other site fails, so the run finishing is the check that nothing read off its site. While it trains,
Ray's own records of object references (`ray list objects --detail`, with ref creation sites recorded)
must show every reference to a domain's rows held on that domain's node only, and none held by the
driver (the path by which small task results reach it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.conftest import tiny_overrides
from tests.ray_head import BIN, RayHead

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SITE = "raymh.io/site"
SITES = {"cityscapes": "a", "bdd100k": "b"}
DATA_CODE = "raymh/data/"  # objects created by raymh's data code: row tables, read results
STORE_CODE = "site_store.py"  # where a site store puts a domain's row tables (ray.put)


def _is_data_object(obj: dict) -> bool:
    """An object raymh's data code created (a row table, a read task's result), not an actor handle (whose
    ids start with f's): what must stay on its site."""
    return DATA_CODE in (obj.get("call_site") or "") and not obj["object_id"].startswith("ffffffffffffffff")


def _isolation_available() -> bool:
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0 and bool(shutil.which("mount"))


@pytest.fixture(scope="module")
def sites(tmp_path_factory, e2e_root):
    if not _isolation_available():
        pytest.fail("mount namespaces (unshare -m, mount) are needed to run sites as a boundary")
    from raymh.config import load_config
    from raymh.data.cache import prepared_dirs

    prepared = prepared_dirs(load_config("quickstart", tiny_overrides(e2e_root, **{"data.cache_dir": str(e2e_root / "cache")})))
    mount = tmp_path_factory.mktemp("site_data")  # empty here, in the head's and the driver's namespace
    head = RayHead(num_cpus=1, token_mode=False, env={"RAY_record_ref_creation_sites": "1"})  # the head: no site
    try:
        head.wait_ready()
        for domain, site in SITES.items():
            own = f'mount -t tmpfs tmpfs "{mount}" && cp -r "{prepared[domain]}" "{mount}/{domain}" && exec "$@"'
            head.add_node(num_cpus=2, labels={SITE: site},
                          wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", own, "sh"])  # fmt: skip
        head.mount = mount
        yield head
    finally:
        head.stop()


def _state(head: RayHead, what: str, *filters: str) -> list[dict]:
    args = ["list", what, "--address", head.dashboard, "--format", "json", "--detail", "--limit", "10000"]
    out = head.ray(*args, *[a for f in filters for a in ("--filter", f)])
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.lstrip().startswith("[") else []


def _raymh(head: RayHead, tmp_path, log: str, *args: str) -> subprocess.Popen:
    """A `raymh` command against the cluster, its output to tmp_path/log (a pipe could fill and stall it)."""
    return subprocess.Popen(
        [str(BIN / "raymh"), *args], env={**head.env, "RAY_TMPDIR": str(head.root)}, cwd=tmp_path,
        stdout=(tmp_path / log).open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_placed_run_reads_each_sites_data_only_on_that_site(sites, e2e_root, tmp_path):
    assert not list(sites.mount.iterdir())  # the driver sees no site's data
    domains = ", ".join(
        f"{{name: {d}, kind: {d}, prepared: {sites.mount}/{d}, placement: {{{SITE}: {s}}}}}" for d, s in SITES.items()
    )
    over = tiny_overrides(tmp_path, **{
        "data.cache_dir": str(e2e_root / "cache"), "train.iters": 4, "train.eval_every": 2, "train.panels": 2,
        "tracking.run_name": "isolated", "domains": f"[{domains}]", "scaling.placement": "by_domain",
    })  # fmt: skip
    run = _raymh(sites, tmp_path, "train.log", "train", "--config", "quickstart", *[a for o in over for a in ("--set", o)])
    held: dict[str, dict] = {}  # object id -> the last record of it, per holder (pid, type)
    while run.poll() is None:  # Ray's records of who holds which object, while the run holds them
        for obj in _state(sites, "objects"):
            if _is_data_object(obj):
                held.setdefault(obj["object_id"], {})[(obj["pid"], obj["type"])] = obj
        time.sleep(2)
    out = (tmp_path / "train.log").read_text()
    assert run.returncode == 0 and "run isolated: finished at step 4" in out, out[-5000:]

    node_of_site = {n["labels"].get(SITE): n["node_id"] for n in _state(sites, "nodes", "state=ALIVE")}
    pids = {}  # pid -> node of every Ray worker process
    for w in _state(sites, "workers"):
        pids[w["pid"]] = w["node_id"]
    for object_id, holders in held.items():
        assert not [h for h in holders if h[1] == "DRIVER"], (object_id, holders)  # never the driver
        nodes = {pids.get(pid) for pid, _ in holders}
        assert len(nodes) == 1 and nodes <= set(node_of_site[s] for s in SITES.values()), (object_id, holders, pids)
    stores = {a["name"].split(":")[1]: a for a in _state(sites, "actors", "class_name=SiteStore")}
    assert {d: stores[d]["node_id"] for d in SITES} == {d: node_of_site[s] for d, s in SITES.items()}
    from_stores = {i: h for i, h in held.items() if any(STORE_CODE in o.get("call_site", "") for o in h.values())}
    assert from_stores, "no reference to a site store's row tables was seen while the run trained"
    store_pids = {a["pid"] for a in stores.values()}
    assert all(any(pid in store_pids for pid, _ in h) for h in from_stores.values()), from_stores  # owned there

    scored = _raymh(sites, tmp_path, "eval.log", "eval", "--checkpoint", str(tmp_path / "runs" / "isolated"))
    scored.wait(timeout=600)
    out = (tmp_path / "eval.log").read_text()
    assert scored.returncode == 0 and "each on its own site" in out, out[-4000:]
    for d in SITES:
        assert f"  {d}" in out
