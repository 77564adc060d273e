"""Which Ray a command runs on: a cluster it is pointed at, the local one `ray start` recorded, or its own.

Ray's `ray.init()` with no address joins whatever cluster `ray start` last recorded on this machine
(`<ray temp dir>/ray_current_cluster`), live or long dead. raymh decides itself, once per command:

- `--address ADDR` (or `RAY_ADDRESS`): join that cluster;
- `--address local`: start a private local Ray, whatever else runs on the machine;
- `--address auto`: join the recorded local cluster, which must answer (no resource check: it may autoscale);
- nothing: join the recorded cluster if its GCS answers (and check it has what the config asks for), else
  start a private local Ray (saying when a stale record was ignored).

Expected failures raise `RayClusterError`, which the CLI prints as one message.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from raymh import console
from raymh.config import ExperimentConfig

PROBE_TIMEOUT_S = 2.0


class RayClusterError(RuntimeError):
    """No usable Ray for this command; the message says why and what to do."""


@dataclass(frozen=True)
class RayTarget:
    """What `init_ray` will do: join `address` (None: the recorded cluster, as Ray finds it) or start one."""

    join: bool
    address: str | None
    note: str
    check_resources: bool = False


def recorded_cluster() -> tuple[str, str | None]:
    """(the record file, the GCS address in it or None), from Ray's own helpers (honours RAY_TMPDIR)."""
    from ray._common.utils import get_ray_address_file
    from ray._private.utils import read_ray_address

    return get_ray_address_file(None), read_ray_address(None)


def gcs_answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to a `host:port` GCS address opens within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def resolve_target(address: str | None) -> RayTarget:
    """Decide which Ray to use from `--address` / RAY_ADDRESS and the recorded local cluster."""
    given = address or os.environ.get("RAY_ADDRESS") or None
    source = "--address" if address else "RAY_ADDRESS"
    if given == "local":
        return RayTarget(False, None, f"a private local Ray ({source} local)")
    if given not in (None, "auto"):
        if "://" not in given and not gcs_answers(given):
            raise RayClusterError(
                f"no Ray cluster answers at {given} ({source}): start it (`ray start --head`), fix the address, "
                "or use `--address local` for a private local Ray"
            )
        return RayTarget(True, given, f"the Ray cluster at {given} ({source})")
    record, recorded = recorded_cluster()
    if recorded and gcs_answers(recorded):
        return RayTarget(
            True,
            given,
            f"the running Ray cluster at {recorded} (recorded in {record})",
            check_resources=given is None,
        )
    if given == "auto":
        what = (
            f"the cluster recorded there ({recorded}) does not answer"
            if recorded
            else "no cluster is recorded"
        )
        raise RayClusterError(
            f"--address auto needs a running local Ray cluster, but {what} ({record}): start one with "
            "`ray start --head`, or drop --address to start a private local Ray"
        )
    if recorded:
        return RayTarget(
            False, None, f"a fresh local Ray; ignored the stale record of a Ray cluster at {recorded} that does not "
            f"answer ({record}: its head stopped without `ray stop`)"
        )  # fmt: skip
    return RayTarget(False, None, "a local Ray")


def init_ray(
    cfg: ExperimentConfig | None, address: str | None = None, *, num_cpus: int | None = None, train: bool = True,
    log_to_driver: bool = True,
) -> None:
    """Join or start Ray as `resolve_target` decides; say which on one line: the one way every raymh command
    and benchmark starts or joins Ray. `num_cpus`: logical CPUs of a started Ray (default: the config's
    workers plus data tasks; without a config, the machine's cores); `train`: check a joined recorded
    cluster for the config's workers (else only for one data task; nothing without a config)."""
    import ray

    if ray.is_initialized():
        return
    target = resolve_target(address)
    env = {"env_vars": dict(console.QUIET_ENV)}
    if target.join:
        # A job's driver (RAY_ADDRESS set by `ray job submit`) keeps the job's runtime_env: add none there.
        # The recorded cluster is joined with address None/"auto", as Ray itself finds it, so that Ray turns
        # token auth on from a local token file as it does for a cluster it finds by itself.
        runtime_env = env if target.address in (None, "auto") and not os.environ.get("RAY_ADDRESS") else None
        try:
            ray.init(address=target.address, runtime_env=runtime_env, log_to_driver=log_to_driver)
        except Exception as e:  # noqa: BLE001 - any failure to join is one message, not a traceback
            ray.shutdown()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = (
                "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)"
                if "auth" in str(e).lower()
                else "check the address, or use `--address local` for a private local Ray"
            )
            raise RayClusterError(
                f"could not join {target.note}: {type(e).__name__}: {first}; {hint}"
            ) from None
        total = ray.cluster_resources()
        print(f"[raymh] Ray: joined {target.note}: {_describe(total)}", flush=True)
        if target.check_resources and cfg is not None:
            check_fits(cfg, total, _alive_nodes(), train=train)
        return
    # Logical CPUs: the workers' own plus room for Ray Data's decode/augment tasks (they share the cores).
    # An elastic range is sized for its max workers (`train_workers`).
    wanted = cfg.train_workers * cfg.scaling.cpus_per_worker + 2 if cfg is not None else 0
    num_cpus = num_cpus or max(os.cpu_count() or 1, wanted)
    # address="local": never the recorded cluster. The dashboard also serves Ray's state API, which Train
    # V2's placement-group cleaner polls: without it the cleaner logs a warning every few seconds.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, runtime_env=env, log_to_driver=log_to_driver)
    print(f"[raymh] Ray: started {target.note} with {num_cpus} CPUs", flush=True)


def _describe(resources: dict) -> str:
    return f"{_qty(resources.get('CPU', 0), 'CPU')}, {_qty(resources.get('GPU', 0), 'GPU')}"


def _qty(x: float, unit: str) -> str:
    return f"{_num(x)} {unit}{'' if float(x) == 1 else 's'}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _alive_nodes() -> list[dict]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def check_fits(cfg: ExperimentConfig, total: dict, nodes: list[dict], *, train: bool = True) -> None:
    """Raise RayClusterError naming what is missing (and `--set scaling...` values that fit) when the
    cluster cannot hold the config's workers (one bundle of CPUs/GPUs per worker on one node) plus one data
    task; `train=False` needs only the data task. An elastic range needs room for its min workers (it runs
    with as many as fit, up to its max)."""
    s = cfg.scaling
    data = s.data_cpus or 1
    gpus = s.gpus_per_worker if s.use_gpu else 0.0
    workers = (s.worker_range[0] if s.elastic else cfg.train_workers) if train else 0
    if _fits(workers, s.cpus_per_worker, gpus, data, total, nodes):
        return
    cpu, gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    missing = []
    if workers * s.cpus_per_worker + data > cpu:
        missing.append(_qty(workers * s.cpus_per_worker + data - cpu, "CPU"))
    if workers * gpus > gpu:
        missing.append(_qty(workers * gpus - gpu, "GPU"))
    if not missing:
        missing.append(
            f"a node with {s.cpus_per_worker} CPUs{f' and {_num(gpus)} GPUs' if gpus else ''} per worker"
        )
    asks = (
        f"{workers} worker(s) x {s.cpus_per_worker} CPUs{f' + {_num(gpus)} GPU' if gpus else ''} "
        f"and {_num(data)} CPU for data tasks"
        if train
        else f"{_num(data)} CPU for data tasks"
    )
    fit = _fitting_overrides(cfg, total, nodes) if train else None
    fix = f"run with `{' '.join(f'--set {o}' for o in fit)}`; or " if fit else ""
    fix += (
        "add nodes or CPUs to that cluster, or use `--address local` for a private local Ray (a cluster that "
        "autoscales: `--address auto` joins it without this check)"
    )
    raise RayClusterError(
        f"the Ray cluster has {_describe(total)} on {len(nodes)} node(s); the config asks for {asks}: "
        f"missing {', '.join(missing)}. To fit it: {fix}"
    )


def _fits(workers: int, cpus: int, gpus: float, data: float, total: dict, nodes: list[dict]) -> bool:
    if workers * cpus + data > float(total.get("CPU", 0)) + 1e-9:
        return False
    slots = 0
    for r in nodes:
        by_cpu = int(float(r.get("CPU", 0)) // cpus)
        by_gpu = int(float(r.get("GPU", 0)) / gpus + 1e-9) if gpus else by_cpu
        slots += min(by_cpu, by_gpu)
    return slots >= workers


def _fitting_overrides(cfg: ExperimentConfig, total: dict, nodes: list[dict]) -> list[str] | None:
    """The fewest `scaling` changes that fit: most workers first (the recipe's global batch), then CPUs."""
    s = cfg.scaling
    if s.placement == "by_domain":  # the worker count follows the domains; placement checks say the rest
        return None
    data = s.data_cpus or 1
    use_gpu = s.use_gpu and float(total.get("GPU", 0)) >= s.gpus_per_worker
    gpus = s.gpus_per_worker if use_gpu else 0.0
    lo, hi = s.worker_range
    for workers in range(lo, 0, -1):
        if s.elastic and cfg.undivided_batches(range(workers, lo)):
            continue  # an elastic range must stay one whose every count divides the global batches
        for cpus in range(s.cpus_per_worker, 0, -1):
            if _fits(workers, cpus, gpus, data, total, nodes):
                out = [] if use_gpu == s.use_gpu else ["scaling.use_gpu=false"]
                count = f"[{workers},{hi}]" if s.elastic else str(workers)
                out += [] if workers == lo else [f"scaling.num_workers={count}"]
                out += [] if cpus == s.cpus_per_worker else [f"scaling.cpus_per_worker={cpus}"]
                return out
    return None
