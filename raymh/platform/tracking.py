"""MLflow tracking: where runs go, and a run handle that never stops training.

The tracking URI is the config's `tracking.tracking_uri`, else `MLFLOW_TRACKING_URI`, else an absolute
`sqlite:///<cwd>/mlflow.db` (absolute because Ray workers run in other directories; in a Ray job, a stable
home instead of the job's temporary working dir: `raymh.platform.records`). If the tracking server
cannot be reached, training goes on and says so once; every record that could not be sent is appended to a
local JSONL spool file next to the run, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from raymh.config import ExperimentConfig


def resolve_tracking_uri(cfg: ExperimentConfig | None = None) -> str:
    """Config, else MLFLOW_TRACKING_URI, else sqlite:///<abs base>/mlflow.db; relative sqlite/file paths made
    absolute. The base is the current directory, or a stable home in a Ray job (`records.records_base`)."""
    return absolute_tracking_uri((cfg.tracking.tracking_uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI"))


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """MLflow's fluent API (`mlflow.start_run`, model logging) on `uri` for the block, leaving the process's
    MLFLOW_TRACKING_URI as it was: `mlflow.set_tracking_uri` also writes that variable, which a later run of
    this process reads as its default store and every subprocess (a `ray start` head, its jobs) inherits."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def absolute_tracking_uri(uri: str | None) -> str:
    """A tracking URI with relative sqlite/file paths made absolute against the records base (the current
    directory, or the stable home of a Ray job); None: sqlite:///<abs base>/mlflow.db."""
    from raymh.platform.records import records_base

    base = records_base().path
    if not uri:
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:  # a bare path: MLflow reads it as a file store
        return (base / Path(uri).expanduser()).resolve().as_uri()
    return uri


def _reachable(uri: str, timeout: float = 5.0) -> str | None:
    """None when the store can be used; else why not (only http(s) servers are probed)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(e).__name__}: {e}"


class TrackedRun:
    """An MLflow run by id; every call is guarded: on the first failure it warns once and spools the rest."""

    def __init__(self, uri: str, run_id: str | None, *, spool: Path, offline_reason: str | None = None) -> None:
        self.uri, self.run_id, self.spool = uri, run_id, Path(spool)
        self.offline_reason = offline_reason if run_id else (offline_reason or "no MLflow run")
        self._client = None

    @classmethod
    def create(
        cls,
        uri: str,
        *,
        experiment: str,
        run_name: str,
        spool: Path,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> TrackedRun:
        """Start a new run (a child run when parent_run_id is given) in `experiment`."""
        reason = _reachable(uri)
        if reason is None:
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=uri)
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
                all_tags = dict(tags or {})
                if parent_run_id:
                    all_tags["mlflow.parentRunId"] = parent_run_id
                run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
                out = cls(uri, run.info.run_id, spool=spool)
                out._client = client
                return out
            except Exception as e:  # noqa: BLE001
                reason = f"{type(e).__name__}: {e}"
        cls._warn(uri, reason, spool)
        return cls(uri, None, spool=spool, offline_reason=reason)

    @property
    def online(self) -> bool:
        return self.offline_reason is None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @staticmethod
    def _warn(uri: str, reason: str, spool: Path) -> None:
        print(
            f"[raymh] MLflow tracking at {uri} is unreachable ({reason}); training goes on, "
            f"and records are kept in {spool}",
            file=sys.stderr,
            flush=True,
        )

    def _call(self, kind: str, payload: dict[str, Any], fn) -> None:
        if self.online:
            try:
                fn()
                return
            except Exception as e:  # noqa: BLE001
                self.offline_reason = f"{type(e).__name__}: {e}"
                self._warn(self.uri, self.offline_reason, self.spool)
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a") as f:
            f.write(json.dumps({"time": time.time(), "kind": kind, "run_id": self.run_id, **payload}, default=str) + "\n")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if not clean:
            return

        def send():
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in clean.items()])

        self._call("metrics", {"step": step, "metrics": clean}, send)

    def log_params(self, params: dict[str, Any]) -> None:
        def send():
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])

        self._call("params", {"params": params}, send)

    def set_tags(self, tags: dict[str, str]) -> None:
        def send():
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self._call("tags", {"tags": tags}, send)

    def log_datasets(self, records: list[dict[str, Any]]) -> None:
        """MLflow dataset inputs (the run page's "Datasets"): records as `DomainData.set_records` gives them."""

        from mlflow.data.dataset_source_registry import get_registered_sources
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        # a local path's source class (MLflow registers it at import, it has no importable name)
        local = next(c for c in get_registered_sources() if c._get_source_type() == "local")
        inputs = []
        for r in records:
            dataset = MetaDataset(local(r["source"]), name=r["name"], digest=r["digest"])
            tags = [InputTag("mlflow.data.context", r["context"]), InputTag("raymh.rows", str(r["rows"]))]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
        self._call("datasets", {"datasets": records}, lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if path.is_dir():
            fn = lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path)  # noqa: E731
        else:
            fn = lambda: self.client.log_artifact(self.run_id, str(path), artifact_path)  # noqa: E731
        self._call("artifact", {"path": str(path), "artifact_path": artifact_path}, fn)

    def reopen(self) -> None:
        """Set an ended run (KILLED, FAILED, FINISHED) back to RUNNING: a resumed run continues its record."""
        self._call("reopen", {}, lambda: self.client.update_run(self.run_id, status="RUNNING"))

    def end(self, status: str = "FINISHED") -> None:
        self._call("end", {"status": status}, lambda: self.client.set_terminated(self.run_id, status=status))


def close_child_runs(uri: str, parent_run_id: str | None, *, status: str, tags: dict[str, str] | None = None) -> int:
    """End every child run of `parent_run_id` that is still RUNNING with `status` (and tags); returns how many."""
    if not parent_run_id:
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in runs:
        for k, v in (tags or {}).items():
            client.set_tag(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id, status)
    return len(runs)


def source_tags() -> dict[str, str]:
    """MLflow's source tags (the run page's Source): the raymh command that made the run; a Ray job's
    entrypoint is a JOB, anything else LOCAL."""
    argv = sys.argv
    command = "raymh " + " ".join(argv[1:]) if argv and Path(argv[0]).name == "raymh" else "raymh"
    return {"mlflow.source.name": command[:500], "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_SUBMISSION_ID") else "LOCAL"}


def run_description(run_name: str, m: dict[str, Any], cfg: ExperimentConfig) -> str:
    """The run's result as Markdown, for the MLflow run page's description."""
    lines = [f"raymh run `{run_name}` ({cfg.name}): finished at step {m.get('step', '?')} of {cfg.train.iters}.",
             "", "| domain | val mIoU |", "|---|---|"]  # fmt: skip
    lines += [f"| {d.name} | {m.get(f'val/miou/{d.name}', math.nan):.4f} |" for d in cfg.domains]
    lines += [f"| **mean** | **{m.get('val/miou_mean', math.nan):.4f}** |", "",
              f"Best mean val mIoU {m.get('best/miou_mean', math.nan):.4f}; labeled fraction "
              f"{', '.join(f'{d.name} {cfg.labeled_fraction(d):g}' for d in cfg.domains)}; lambda {cfg.loss.dc_weight}."]  # fmt: skip
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    import ray
    import torch

    from raymh import __version__

    tags = {
        "raymh.version": __version__,
        "torch.version": torch.__version__,
        "ray.version": ray.__version__,
        "python.version": platform.python_version(),
        "domains": ",".join(d.name for d in cfg.domains),
        "label_ratio": ",".join(f"{d.name}={cfg.labeled_fraction(d)}" for d in cfg.domains),
        "preset": cfg.name,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **source_tags()}
