"""Where a run's records land (checkpoints, run files, the default MLflow store), and whether every node sees them.

Relative record paths (`tracking.storage_path`, the default `mlflow.db`, a relative sqlite URI) resolve
against one base directory, decided once:

- `RAYMH_HOME` when set;
- else, in a Ray job (`ray job submit`: Ray sets `RAY_JOB_CONFIG_JSON_ENV_VAR` for the entrypoint) or in
  Ray's runtime copy of a working dir (`.../runtime_resources/...`), `~/raymh` of the user running the job:
  that copy is per code version and goes when Ray clears its session, so records there would scatter and
  vanish;
- else the current directory (a plain shell: `./ray_results`, `./mlflow.db`).

Absolute paths, `s3://`-style URIs, `tracking.tracking_uri` and `MLFLOW_TRACKING_URI` are used as given.
On a cluster of several nodes, `check_shared` has a task on every alive node write a marker into each local
record directory and stops the run when the driver cannot see them all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from raymh.platform.cluster import RayClusterError

HOME_ENV = "RAYMH_HOME"
DEFAULT_HOME = "~/raymh"
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted job's entrypoint
MARKERS = ".raymh-shared-check"


class StorageNotSharedError(RayClusterError):
    """A record path is not the same place on every node; the message names the setting to change."""


@dataclass(frozen=True)
class RecordsBase:
    """The directory relative record paths resolve against, and why (None: the current directory)."""

    path: Path
    why: str | None


def ray_job_context() -> str | None:
    """How this process runs inside Ray's job machinery (a submitted job, a runtime working-dir copy), else None."""
    if JOB_ENV in os.environ:
        try:
            metadata = json.loads(os.environ[JOB_ENV]).get("metadata") or {}
        except (ValueError, AttributeError):
            metadata = {}
        job = metadata.get("job_submission_id")
        return f"Ray job {job}" if job else "a Ray job"
    if "runtime_resources" in Path.cwd().parts:
        return "Ray's runtime copy of a working dir"
    return None


def records_base() -> RecordsBase:
    """RAYMH_HOME, else ~/raymh inside a Ray job or its working-dir copy, else the current directory."""
    home = os.environ.get(HOME_ENV)
    if home:
        return RecordsBase(Path(home).expanduser().resolve(), HOME_ENV)
    job = ray_job_context()
    if job:
        return RecordsBase(Path(DEFAULT_HOME).expanduser().resolve(), job)
    return RecordsBase(Path.cwd().resolve(), None)


def resolve_local(path: str) -> str:
    """A record location made absolute: URIs kept, `~` expanded, relative paths against `records_base()`."""
    if "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p.resolve() if p.is_absolute() else (records_base().path / p).resolve())


def announce(storage: str, tracking_uri: str) -> str | None:
    """The line saying where records go when that is not the current directory (None in a plain shell)."""
    base = records_base()
    if base.why is None:
        return None
    why = f"{HOME_ENV} is set" if base.why == HOME_ENV else f"running as {base.why}"
    return (
        f"[raymh] records ({why}): checkpoints under {storage}, MLflow {tracking_uri} "
        f"(set {HOME_ENV}, tracking.storage_path or MLFLOW_TRACKING_URI to change)"
    )


def local_dirs(storage: str, tracking_uri: str) -> dict[str, str]:
    """The local directories records are written to, by the setting that names them."""
    out = {}
    if "://" not in storage:
        out["tracking.storage_path"] = storage
    for prefix in ("sqlite:///", "file://"):  # sqlite:////abs/mlflow.db, file:///abs/mlruns: their folder
        if tracking_uri.startswith(prefix):
            out["MLflow tracking URI"] = str(Path(tracking_uri[len(prefix) :]).parent)
    return out


def _write_marker(dirs: list[str], token: str, node_id: str) -> str | None:
    """On one node: a marker file in each dir; None, or why it could not be written."""
    for d in dirs:
        try:
            folder = Path(d) / MARKERS / token
            folder.mkdir(parents=True, exist_ok=True)
            (folder / node_id).write_text(node_id)
        except OSError as e:
            return f"{d}: {type(e).__name__}: {e}"
    return None


def _remove_markers(dirs: list[str], token: str) -> None:
    for d in dirs:
        shutil.rmtree(Path(d) / MARKERS / token, ignore_errors=True)
        try:
            (Path(d) / MARKERS).rmdir()
        except OSError:
            pass


def check_shared(storage: str, tracking_uri: str, *, timeout_s: float = 120.0) -> None:
    """On a cluster of 2+ alive nodes: stop with StorageNotSharedError unless every node's marker, written into
    each local record directory, is visible here. One node (or only URIs): nothing to check."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    dirs = local_dirs(storage, tracking_uri)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not dirs or len(nodes) < 2:
        return
    token = secrets.token_hex(4)
    paths = list(dirs.values())
    on_node = lambda n: NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)  # noqa: E731
    write = ray.remote(num_cpus=0)(_write_marker)
    refs = {
        n["NodeID"]: write.options(scheduling_strategy=on_node(n)).remote(paths, token, n["NodeID"])
        for n in nodes
    }
    try:
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        errors = {
            nid: ray.get(r) if r in ready else f"no answer within {timeout_s:.0f} s"
            for nid, r in refs.items()
        }
        unseen = {
            key: [
                nid for nid in refs if errors[nid] is None and not (Path(d) / MARKERS / token / nid).is_file()
            ]
            for key, d in dirs.items()
        }
    finally:
        remove = ray.remote(num_cpus=0)(_remove_markers)
        ray.wait(
            [remove.options(scheduling_strategy=on_node(n)).remote(paths, token) for n in nodes], timeout=30
        )
        _remove_markers(paths, token)
    where = {n["NodeID"]: f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]})" for n in nodes}
    failed = {nid: e for nid, e in errors.items() if e}
    if failed:
        lines = "; ".join(f"{where[nid]}: {e}" for nid, e in failed.items())
        raise StorageNotSharedError(
            f"could not write the records' shared-storage check on every node: {lines}"
        )
    for key, missing in unseen.items():
        if missing:
            raise StorageNotSharedError(
                _not_shared_message(key, dirs[key], [where[m] for m in missing], tracking_uri)
            )


def _not_shared_message(key: str, path: str, nodes: list[str], tracking_uri: str) -> str:
    head = (
        f"{key} {path if key != 'MLflow tracking URI' else tracking_uri} is not shared by the cluster's nodes: files "
        f"written there on {', '.join(nodes)} are not visible from the driver, so records would scatter across "
    )
    if key == "tracking.storage_path":
        return head + (
            "nodes' disks. Set --set tracking.storage_path= to a file system mounted at the same path on every "
            "node (NFS, EFS, a shared PVC) or to an object store URI Ray Train accepts (s3://bucket/prefix, "
            "gs://bucket/prefix)"
        )
    return head + (
        "nodes' disks. Set MLFLOW_TRACKING_URI (or --set tracking.tracking_uri=) to an MLflow server "
        "(http://HEAD:5000) or to a database on a shared mount"
    )
