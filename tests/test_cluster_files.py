"""cluster/: the launcher YAML against Ray's schema, KubeRay manifests against the (trimmed) CRDs, runtime_env."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from raymh.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
REGENERATE = "fix the field, or regenerate the trimmed CRD with tests/data/kuberay/trim_crd.py"


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _excluded(patterns: list[str], rel: str) -> bool:
    """gitignore-style match, as Ray's working_dir `excludes` (and, for these patterns, rsync) apply it."""
    from ray._private.thirdparty.pathspec import PathSpec

    return PathSpec.from_lines("gitwildmatch", patterns).match_file(rel)


def _package_files() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in (ROOT / "raymh").rglob("*") if p.suffix in (".py", ".yaml")]


# ---------------------------------------------------------------- cluster launcher


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _yaml(CLUSTER / "ray-cluster.yaml")


def test_launcher_config_validates_against_rays_schema(launcher: dict):
    assert RAY_SCHEMA.is_file(), f"the installed Ray ships no {RAY_SCHEMA}"
    assert _errors(json.loads(RAY_SCHEMA.read_text()), launcher) == []


def test_launcher_config_passes_rays_own_checks(launcher: dict):
    # what `ray up` does before it talks to the cloud: fill defaults, then validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_schema_check_can_fail(launcher: dict):
    bad = copy.deepcopy(launcher)
    bad["head_start_commands"] = bad.pop("head_start_ray_commands")
    bad["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = "1"
    errors = _errors(json.loads(RAY_SCHEMA.read_text()), bad)
    assert any("head_start_commands" in e for e in errors), errors
    assert any("GPU" in e for e in errors), errors


def test_launcher_has_cpu_head_and_gpu_workers(launcher: dict):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [
        t for name, t in types.items() if name != launcher["head_node_type"] and t["resources"].get("GPU")
    ]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert launcher["provider"]["type"] == "aws"


def test_launcher_installs_raymh_and_starts_ray_with_token_auth(launcher: dict):
    assert any("pip install" in c and "raymh" in c for c in launcher["setup_commands"])
    assert launcher["file_mounts"]["~/raymh"] == "."
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    head = " ".join(launcher["head_start_ray_commands"])
    worker = " ".join(launcher["worker_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds and "MLFLOW_TRACKING_URI=" in cmds


def test_launcher_rsync_excludes_keep_the_package(launcher: dict):
    dropped = [f for f in _package_files() if _excluded(launcher["rsync_exclude"], f)]
    assert _package_files() and dropped == []
    assert _excluded(launcher["rsync_exclude"], "data/cityscapes/x.png")


def test_launcher_docker_image_matches_the_kuberay_ray_version(launcher: dict):
    version = _yaml(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]["rayVersion"]
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{version}")


# ---------------------------------------------------------------- KubeRay


def _crd(name: str) -> dict:
    path = CRDS / f"ray.io_{name}.v1.trimmed.yaml"
    head = path.read_text().splitlines()[:3]
    assert any(f"ray-operator/config/crd/bases/ray.io_{name}.yaml" in line for line in head), head
    assert any(re.search(r"kuberay v\d+\.\d+\.\d+", line) for line in head), head
    return _yaml(path)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _yaml(CLUSTER / "kuberay" / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _yaml(CLUSTER / "kuberay" / "rayjob.yaml")


def test_trimmed_crds_are_valid_json_schemas():
    for name in ("rayclusters", "rayjobs"):
        jsonschema.Draft7Validator.check_schema(_crd(name))


def test_raycluster_validates_against_the_crd(raycluster: dict):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert _errors(_crd("rayclusters"), raycluster) == [], REGENERATE


def test_rayjob_validates_against_the_crd(rayjob: dict):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert _errors(_crd("rayjobs"), rayjob) == [], REGENERATE


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="1"), "replicas"),
        (lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"), "mode"),
        (
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][
                0
            ].update(volumeMount=[]),
            "volumeMount",
        ),
        (
            lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
                "resources"
            ]["limits"].update(memory="60 GB"),
            "memory",
        ),
    ],
)
def test_crd_check_can_fail(rayjob: dict, mutate, needle: str):
    bad = copy.deepcopy(rayjob)
    mutate(bad)
    errors = _errors(_crd("rayjobs"), bad)
    assert any(needle in e for e in errors), errors


def _pods(cluster_spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", cluster_spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster_spec["workerGroupSpecs"]]
    return [(name, g["template"]["spec"]) for name, g in groups]


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_pods_share_storage_gpu_and_mlflow_uri(which: str, raycluster: dict, rayjob: dict):
    spec = raycluster["spec"] if which == "raycluster" else rayjob["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    pods = _pods(spec)
    for name, pod in pods:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        for c in pod["containers"]:
            assert c["image"].startswith(f"rayproject/ray:{spec['rayVersion']}"), (name, c["image"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/mnt/shared") in claims, (name, mounts, claims)
            env = {e["name"]: e for e in c["env"]}
            uri = env["MLFLOW_TRACKING_URI"]["valueFrom"]
            assert "configMapKeyRef" in uri or "secretKeyRef" in uri, (name, uri)
    worker_limits = [c["resources"]["limits"] for name, pod in pods[1:] for c in pod["containers"]]
    assert worker_limits and all(int(lim["nvidia.com/gpu"]) >= 1 for lim in worker_limits)


def test_rayjob_runs_raymh_train_paper_on_shared_storage(rayjob: dict):
    spec = rayjob["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["raymh", "train", "--config", "paper"], args
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert "tracking.storage_path=/mnt/shared/ray_results" in overrides
    # every override in the entrypoint is a valid key and value for the paper preset
    cfg = load_config("paper", overrides)
    assert cfg.tracking.storage_path == "/mnt/shared/ray_results"
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and runtime_env["pip"]


def test_rayjob_cluster_matches_the_raycluster(raycluster: dict, rayjob: dict):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"]


# ---------------------------------------------------------------- data that stays on its site (docs/placement.md)
SITE = "raymh.io/site"


@pytest.fixture(scope="module")
def sites_config():
    return load_config(str(CLUSTER / "sites.yaml"))


def test_sites_raycluster_validates_against_the_crd():
    doc = _yaml(CLUSTER / "kuberay" / "raycluster-sites.yaml")
    assert _errors(_crd("rayclusters"), doc) == [], REGENERATE
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["labels"][SITE] = 1  # labels are strings
    assert any("labels" in e for e in _errors(_crd("rayclusters"), bad))


def test_sites_raycluster_has_one_labelled_group_per_domain_each_with_only_its_data(sites_config):
    spec = _yaml(CLUSTER / "kuberay" / "raycluster-sites.yaml")["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert not head.get("volumes") and spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    claims = {}
    for group in spec["workerGroupSpecs"]:
        site = group["labels"][SITE]
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {"raymh.io/data-site": site}
        claims[site] = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]]
        (mount,) = pod["containers"][0]["volumeMounts"]
        assert mount["readOnly"] and mount["mountPath"] == "/data/site"
    assert all(len(c) == 1 and site in c[0] for site, c in claims.items())  # each group: its own site's volume
    assert {d.placement[SITE] for d in sites_config.domains} == set(claims)
    assert all(d.prepared.startswith("/data/site/") for d in sites_config.domains)


def test_sites_config_places_every_domain(sites_config):
    assert sites_config.scaling.placement == "by_domain"
    assert sites_config.data.transforms_on != "ray_data"  # it would read Parquet footers in the driver
    assert sites_config.train_workers == len(sites_config.domains) * sites_config.scaling.workers_per_domain
    assert "://" in sites_config.tracking.storage_path  # checkpoints leave the sites for a shared store


def test_sites_launcher_validates_and_labels_one_node_type_per_domain(sites_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    doc = _yaml(CLUSTER / "ray-cluster-sites.yaml")
    assert _errors(json.loads(RAY_SCHEMA.read_text()), doc) == []
    validate_config(prepare_config(copy.deepcopy(doc)))
    types = doc["available_node_types"]
    labelled = {t["labels"][SITE]: t for t in types.values() if SITE in t.get("labels", {})}
    assert set(labelled) == {d.placement[SITE] for d in sites_config.domains}
    assert SITE not in types[doc["head_node_type"]].get("labels", {})
    assert all(t["min_workers"] >= sites_config.scaling.workers_per_domain for t in labelled.values())
    bad = copy.deepcopy(doc)
    name = next(n for n, t in types.items() if SITE in t.get("labels", {}))
    bad["available_node_types"][name]["labels"][SITE] = 1  # label values are strings
    assert any("labels" in e for e in _errors(json.loads(RAY_SCHEMA.read_text()), bad))


# ---------------------------------------------------------------- runtime_env


def test_runtime_env_loads_and_ray_accepts_it():
    from ray.runtime_env import RuntimeEnv

    data = _yaml(CLUSTER / "runtime_env.yaml")
    assert data["working_dir"] == "."
    env = RuntimeEnv(**data)
    assert env["working_dir"] == "." and env["env_vars"]["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    assert env["env_vars"]["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"  # Tune trials' artifact bars
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]  # left to the cluster
    dropped = [f for f in _package_files() if _excluded(data["excludes"], f)]
    assert _package_files() and dropped == []
    assert _excluded(data["excludes"], ".venv/bin/python") and _excluded(data["excludes"], "data/x.parquet")


# The end-to-end check of `ray job submit` against a local `ray start --head` with token auth, and where its
# records land, is tests/test_job_records_e2e.py (its Ray head helper: tests/ray_head.py).
