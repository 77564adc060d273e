"""`raymh reproduce`: run one of the method's comparison tables as a Ray Tune grid, under one MLflow parent.

Every trial (a table cell at one seed) builds and fits its own TorchTrainer (the Train V2 pattern, as
`raymh tune`), logged as a child run of the parent with its trial in tags. When the grid is done the table
is read back from MLflow (the same code as `raymh report`), printed, written to `--out` and attached to the
parent run, so a table printed here and one rebuilt later by `raymh report` are the same by construction.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from raymh import console
from raymh.config import ConfigError, apply_overrides, config_from_dict, load_config_dict, to_yaml
from raymh.errors import InputError
from raymh.evidence import render
from raymh.evidence.report import load_evidence, write_outputs
from raymh.evidence.tables import Trial, table_spec


def _trial_fn(config: dict[str, Any], *, base: dict[str, Any], name: str, parent_run_id: str | None) -> None:
    """One trial: the cell's overrides on the base config, one `fit`, metrics reported to Tune."""
    from raymh.run.driver import fit
    from raymh.tune.callbacks import EvalReportCallback

    trial = Trial(**config["trial"])
    cfg = config_from_dict(apply_overrides(base, trial.overrides(base)), where=f"trial {trial.cell} seed {trial.seed}")
    cfg.tracking.run_name = f"{name}-{trial.slug}"
    t0 = time.perf_counter()
    outcome = fit(cfg, parent_run_id=parent_run_id, callbacks=[EvalReportCallback()], quiet=True, tags=trial.tags(),
                  console_label=trial.slug)  # fmt: skip
    if not outcome.ok:
        raise RuntimeError(f"trial {trial.cell} seed {trial.seed} failed: {outcome.error}")
    m = outcome.metrics
    miou = " ".join(f"{d.name}={m.get(f'val/miou/{d.name}', math.nan):.3f}" for d in cfg.domains)
    print(f"[raymh] {trial.cell} seed {trial.seed}: {miou} mean={m.get('val/miou_mean', math.nan):.3f} "
          f"({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)  # fmt: skip


def check_base(base: dict[str, Any], table: str) -> None:
    """The cells set label fractions and lambda themselves; refuse settings that would silently override them."""
    cfg = config_from_dict(base)
    for i, d in enumerate(cfg.domains):
        if d.labeled_fraction is not None or d.split_file is not None:
            key = "labeled_fraction" if d.labeled_fraction is not None else "split_file"
            raise ConfigError(
                f"domains[{i}].{key} is set ({d.name}): the table sets each cell's label fraction itself; remove it"
            )
    if cfg.loss.dc_weight <= 0:
        raise ConfigError(
            f"loss.dc_weight is {cfg.loss.dc_weight}: the semi-supervised cells of {table} need lambda > 0 "
            "(the supervised cells set it to 0 themselves)"
        )


def pick_render_seed(cfg, asked: int | None) -> tuple[int | None, str]:
    """(render seed, what the console says of it): the asked one, else for the built-in domains the
    smallest seed outside data.synthetic.tuned_on (the renders the config was chosen on), else the config's."""
    synth = cfg.data.synthetic
    if synth is None:
        return None, ""
    tuned = sorted(set(synth.tuned_on))
    if asked is not None:
        held = "held out" if asked not in tuned else "NOT held out: the config was tuned on it"
        return asked, f"; render seed {asked} ({held})"
    if not tuned:
        return synth.seed, f"; render seed {synth.seed} (the config names no tuning seeds)"
    seed = next(s for s in range(len(tuned) + 1) if s not in tuned)
    return seed, f"; render seed {seed}, held out (the config was tuned on render seed(s) {tuned})"


def run_reproduce(
    table: str,
    *,
    config: str = "evidence",
    seeds: int = 3,
    first_seed: int = 0,
    render_seed: int | None = None,
    fractions: tuple[str, ...] = ("1/8", "1/4"),
    full: bool = True,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
):
    """Run every cell x seed of `table`, then print and write the table; returns the `Evidence`."""
    import ray
    from ray import tune

    from raymh.data.cache import prepared_dirs
    from raymh.platform.tracking import TrackedRun, run_tags
    from raymh.run.driver import init_ray, storage_root
    from raymh.run.interrupt import run_interruptible, stop_sweep_at_once
    from raymh.tune.sweep import absolute_locations

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    raw = load_config_dict(config, overrides or [])
    if render_seed is not None and not raw.get("data", {}).get("synthetic"):
        raise ConfigError("--render-seed applies to the built-in synthetic domains; the config has no data.synthetic")
    render_seed, render_note = pick_render_seed(config_from_dict(raw, where=f"config {config!r}"), render_seed)
    if render_seed is not None:
        raw = apply_overrides(raw, {"data.synthetic.seed": render_seed})
    base = absolute_locations(raw)
    check_base(base, table)
    base_cfg = config_from_dict(base, where=f"config {config!r}")
    spec = table_spec(table, domains=[d.name for d in base_cfg.domains], fractions=fractions, full=full)
    seed_list = list(range(first_seed, first_seed + seeds))
    trials = spec.trials(seed_list)
    for t in trials:  # a bad cell fails now, not after an hour of other trials
        config_from_dict(apply_overrides(base, t.overrides(base)), where=f"trial {t.cell} seed {t.seed}")
    name = f"reproduce-{table}-{base_cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    s = base_cfg.scaling
    per_trial = base_cfg.train_workers * s.cpus_per_worker + 1  # the Train workers plus the trial's driver function
    init_ray(base_cfg, address, num_cpus=max(os.cpu_count() or 1, per_trial + 1))
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    concurrent = max_concurrent or max(1, int(cluster_cpus // per_trial))
    print(
        f"[raymh] {name}: {len(trials)} runs ({len(spec.rows)} rows x {len(seed_list)} seeds {seed_list}"
        f"{', one run per domain for single-domain rows' if table == 'multi-vs-single' else ''}), "
        f"{concurrent} at a time; config {config}, {base_cfg.train.iters} steps each{render_note}",
        flush=True,
    )
    prepared_dirs(base_cfg)  # render / prepare once, before the trials race for it

    uri = base["tracking"]["tracking_uri"]
    files = Path(storage_root(base_cfg)) / name
    files.mkdir(parents=True, exist_ok=True)
    parent = TrackedRun.create(
        uri, experiment=base_cfg.tracking.experiment, run_name=name, spool=files / "mlflow_unsent.jsonl",
        tags={**run_tags(base_cfg), "raymh.reproduce": table},
    )  # fmt: skip
    if not parent.online:
        raise ConfigError(f"MLflow at {uri} is unreachable: the table is read back from it; fix tracking.tracking_uri")
    parent.log_params({
        "table": table, "domains": ",".join(spec.domains), "fractions": ",".join(fractions), "full": str(full),
        "seeds": ",".join(map(str, seed_list)), "config": config, "render_seed": str(render_seed),
        "overrides": " ".join(overrides or []),
    })  # fmt: skip
    (files / "base_config.yaml").write_text(to_yaml(base_cfg))
    parent.log_artifact(files / "base_config.yaml", "config")
    print(f"[raymh] MLflow parent run {parent.run_id} ({uri}); rebuild later with `raymh report --run {parent.run_id}`",
          flush=True)  # fmt: skip

    trainable = tune.with_parameters(_trial_fn, base=base, name=name, parent_run_id=parent.run_id)
    console.quiet_tune_output()  # no Tune box or TensorBoard hint on the console
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search([t.__dict__ for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=storage_root(base_cfg), verbose=0),
    )
    t0 = time.perf_counter()
    stop = stop_sweep_at_once(uri, parent, what=f"table {name}")
    grid, _ = run_interruptible(tuner.fit, flag=None, on_first=stop, on_second=stop)
    errors = [r.error for r in grid if r.error]
    minutes = (time.perf_counter() - t0) / 60
    try:
        ev = load_evidence(uri, parent.run_id)
    except InputError as e:  # the grid's runs do not pool (e.g. a pair without equal digests): say so, close it
        parent.end("FAILED")
        raise InputError(
            f"{e}\n[raymh] the runs are kept: read them with `raymh report --run {parent.run_id}` and the option the "
            "message names (--allow-unpaired, --allow-mixed), which marks what it lets through"
        ) from None
    print("\n" + render.format_text(ev.values), flush=True)
    target = Path(out) if out else files / "evidence"
    written = write_outputs(ev, target)
    for path in written.values():
        parent.log_artifact(path, "evidence")
    parent.log_metrics({"reproduce/minutes": minutes, "reproduce/failed_trials": len(errors)}, step=0)
    parent.end("FAILED" if errors else "FINISHED")
    print(f"[raymh] {len(trials) - len(errors)}/{len(trials)} runs finished in {minutes:.1f} min; wrote "
          f"{', '.join(sorted(written))} to {target} (and to the parent run's artifacts)", flush=True)  # fmt: skip
    if errors:
        print(f"[raymh] {len(errors)} run(s) failed; the table leaves them out (exit status 1). Finish a failed run "
              f"with `raymh train --resume <its run name>` (run names: `raymh runs`), then `raymh report --run "
              f"{parent.run_id}`. First error: {errors[0]}", flush=True)  # fmt: skip
    ev.failed_trials = len(errors)  # the CLI exits 1
    return ev
