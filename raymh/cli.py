"""The `raymh` command line: data, train, eval, tune, reproduce, report, runs, predict, export, serve, config.

Each command loads one typed config (a preset name or a YAML file) plus dotted `--set key=value` overrides,
prints what it will do, then does it. Heavy imports (torch, ray, mlflow) happen inside the commands.
Expected errors (`InputError`: a bad config, bad data, a missing run; a missing file) print as one message
and exit 1 in every command; `--verbose` also shows Ray's own log lines (see `raymh.console`).
"""

from __future__ import annotations

import sys

import click

from raymh import __version__, console
from raymh.config import ConfigError, load_config, preset_names, to_yaml
from raymh.errors import InputError
from raymh.platform.cluster import RayClusterError

CONFIG_HELP = f"preset name ({', '.join(preset_names())}) or a YAML file"
SET_HELP = "dotted override, e.g. --set loss.dc_weight=0.2 (repeatable)"
ADDRESS_HELP = (
    "Ray cluster to join (HOST:PORT), `auto` (the running local cluster `ray start` recorded) or `local` (a "
    "private local Ray); default: RAY_ADDRESS, else the recorded local cluster if it answers, else a local Ray"
)


def _load(config: str, overrides: tuple[str, ...]):
    try:
        return load_config(config, list(overrides))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


class _Group(click.Group):
    """Turns the project's own 'bad input' errors into one clean message and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (InputError, FileNotFoundError, RayClusterError) as e:
            console.error_exit()
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(version=__version__, prog_name="raymh")
@click.option("--verbose", "-v", is_flag=True, help="also show Ray's own log lines (INFO, known-harmless warnings)")
def main(verbose: bool) -> None:
    """Multi-domain semi-supervised segmentation (multi-head DeepLabv3+, DCLoss, Mix Loss) on Ray."""
    console.set_verbose(verbose)


@main.group("config")
def config_group() -> None:
    """Inspect configs."""


@config_group.command("show")
@click.option("--config", "config", default="quickstart", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
def config_show(config: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config as YAML."""
    click.echo(to_yaml(_load(config, overrides)), nl=False)


@config_group.command("docs")
def config_docs() -> None:
    """Print the configuration reference (every key, type, default, description) as Markdown."""
    from raymh.config_docs import config_reference

    click.echo(config_reference(), nl=False)


@main.command()
@click.option("--config", "config", default="quickstart", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--resume", default=None, help="continue an interrupted run by its name (under tracking.storage_path)")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--workers", type=int, default=None, help="shortcut for --set scaling.num_workers=N")
@click.option("--gpu/--no-gpu", "use_gpu", default=None, help="shortcut for --set scaling.use_gpu=...")
def train(config, overrides, resume, address, workers, use_gpu) -> None:
    """Train one experiment with Ray Train; log it to MLflow."""
    overrides = list(overrides)
    if workers is not None:
        overrides.append(f"scaling.num_workers={workers}")
    if use_gpu is not None:
        overrides.append(f"scaling.use_gpu={str(use_gpu).lower()}")
    cfg = _load(config, tuple(overrides))
    if resume is None:  # render/prepare (once, cached) now: bad data fails before Ray starts
        from raymh.data.cache import prepared_dirs

        prepared_dirs(cfg)
    console.install()
    from raymh.run.driver import fit

    outcome = fit(cfg, resume=resume, address=address)
    sys.exit(0 if outcome.ok else 1)


@main.command("eval")
@click.option("--checkpoint", required=True, help="a checkpoint dir, or a run name under tracking.storage_path")
@click.option("--config", "config", default=None, help="override the config saved with the checkpoint")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--address", default=None, help=ADDRESS_HELP)
def evaluate(checkpoint, config, overrides, address) -> None:
    """Evaluate a checkpoint on every domain's val split (per-domain and mean mIoU)."""
    console.install()
    from raymh.run.eval_checkpoint import evaluate_checkpoint
    from raymh.train.checkpoint import UnsafeCheckpointError

    try:
        evaluate_checkpoint(checkpoint, config=config, overrides=list(overrides), address=address)
    except UnsafeCheckpointError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.option("--config", "config", default="quickstart", show_default=True, help=CONFIG_HELP)
@click.option("--space", required=True, type=click.Path(exists=True, dir_okay=False), help="tune_spaces/*.yaml")
@click.option("--num-samples", type=int, default=None, help="trials (default: the space file's num_samples)")
@click.option("--scheduler", type=click.Choice(["asha", "fifo"]), default=None, help="default: the space file's")
@click.option("--max-concurrent", type=int, default=None, help="trials running at once")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--export-best", type=click.Path(dir_okay=False), default=None, help="write the best config as YAML")
@click.option("--address", default=None, help=ADDRESS_HELP)
def tune(config, space, num_samples, scheduler, max_concurrent, overrides, export_best, address) -> None:
    """Sweep config values with Ray Tune; one MLflow parent run, one child run per trial."""
    console.install()
    from raymh.tune.sweep import run_sweep

    run_sweep(
        config,
        space,
        overrides=list(overrides),
        num_samples=num_samples,
        scheduler=scheduler,
        max_concurrent=max_concurrent,
        export_best=export_best,
        address=address,
    )


@main.command()
@click.option(
    "--table", required=True, type=click.Choice(["semi-vs-supervised", "multi-vs-single"]),
    help="the method's Table 1 (semi vs supervised) or Table 3 (multi- vs single-domain)",
)
@click.option("--config", "config", default="evidence", show_default=True, help=CONFIG_HELP)
@click.option("--seeds", type=int, default=3, show_default=True, help="training seeds per cell")
@click.option("--first-seed", type=int, default=0, show_default=True, help="seeds are first-seed .. first-seed+seeds-1")
@click.option("--render-seed", type=int, default=None, help="render seed of the synthetic domains (default: the lowest seed outside data.synthetic.tuned_on)")
@click.option("--fractions", default="1/8,1/4", show_default=True, help="label fractions of the rows, comma-separated")
@click.option("--full/--no-full", default=True, show_default=True, help="semi-vs-supervised: add the full-label row")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="also write the table and figures here")
@click.option("--max-concurrent", type=int, default=None, help="runs at once (default: as the cluster's CPUs allow)")
@click.option("--address", default=None, help="Ray cluster address")
def reproduce(table, config, seeds, first_seed, render_seed, fractions, full, overrides, out, max_concurrent, address):
    """Run one of the method's comparison tables (cells x seeds as a Tune grid, one MLflow parent run)."""
    console.install()
    from raymh.evidence.reproduce import run_reproduce

    ev = run_reproduce(
        table, config=config, seeds=seeds, first_seed=first_seed, render_seed=render_seed,
        fractions=tuple(f.strip() for f in fractions.split(",") if f.strip()), full=full,
        overrides=list(overrides), out=out, address=address, max_concurrent=max_concurrent,
    )  # fmt: skip
    sys.exit(1 if ev.failed_trials else 0)  # a table with missing runs is written, and is not a success


@main.command()
@click.option(
    "--run", "run_ids", required=True, multiple=True,
    help="the MLflow parent run id that `raymh reproduce` printed; repeat it to combine grids of the same table "
    "(other fractions or seeds) into one table",
)  # fmt: skip
@click.option("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="where to write (default ./evidence-<id>)")
@click.option(
    "--allow-mixed", is_flag=True,
    help="pool runs of different code (raymh.version, git commit) or grids of different configs into one table, "
    "which then marks them (*) and says what differs; refused by default",
)  # fmt: skip
@click.option(
    "--allow-unpaired", is_flag=True,
    help="report semi-vs-supervised pairs of one seed whose raymh.labeled_digest tags are missing or differ "
    "(runs made before raymh recorded digests), marked (†); refused by default",
)  # fmt: skip
def report(run_ids, tracking_uri, out, allow_mixed, allow_unpaired) -> None:
    """Rebuild a `raymh reproduce` table and its figures from MLflow alone."""
    from raymh.evidence.report import report as build_report
    from raymh.platform.tracking import resolve_tracking_uri

    build_report(
        list(run_ids), uri=tracking_uri or resolve_tracking_uri(None), out=out, allow_mixed=allow_mixed,
        allow_unpaired=allow_unpaired,
    )  # fmt: skip


TRACKING_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
EXPERIMENT_HELP = "MLflow experiment (repeatable; default: every experiment of the store)"


@main.group("runs", invoke_without_command=True)
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
@click.option("--experiment", "experiments", multiple=True, help=EXPERIMENT_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="newest runs per experiment")
@click.pass_context
def runs(ctx: click.Context, tracking_uri, experiments, limit) -> None:
    """List recorded runs: status, steps, best and last mean val mIoU, per-domain mIoU, eval/resume commands."""
    from raymh.platform.tracking import absolute_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(None) if tracking_uri is None else absolute_tracking_uri(tracking_uri)
    ctx.obj = {"uri": uri, "experiments": list(experiments) or None}
    if ctx.invoked_subcommand is None:
        from raymh.run.runs import list_runs, runs_table

        click.echo(runs_table(list_runs(uri, ctx.obj["experiments"], limit=limit), uri))


@runs.command("show")
@click.argument("run")
@click.pass_obj
def runs_show(obj, run: str) -> None:
    """One run (by name or MLflow id): its config diff against its preset and its evaluation table."""
    from raymh.run.runs import show_run

    click.echo(show_run(obj["uri"], run, obj["experiments"]))
MODEL_HELP = "a run name or run dir (its best checkpoint), a checkpoint dir, or an MLflow model URI (runs:/ID/model)"
TRACKING_HELP = "MLflow tracking URI for runs:/ and models:/ (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"


@main.command()
@click.option("--model", "model", required=True, help=MODEL_HELP)
@click.option("--domain", required=True, help="which head (domain) labels the images")
@click.option("--input", "input_", required=True, help="a folder (recursive), a glob, or a prepared Parquet dir")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder (mirrors the inputs)")
@click.option("--format", "fmt", type=click.Choice(["trainid", "color", "overlay", "cityscapes", "bdd100k"]),
              default=None, help="default: the domain's own label format")
@click.option("--mode", type=click.Choice(["whole", "slide"]), default=None, help="default: the run's eval mode")
@click.option("--window", type=int, nargs=2, default=None, help="sliding-window size H W (default: the run's)")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="default: the run's train.precision")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="model actors")
@click.option("--cpus-per-worker", type=int, default=None, help="threads per model actor (default: all CPUs but one)")
@click.option("--overwrite", is_flag=True, help="redo outputs that exist (default: skip them)")
@click.option("--skip-bad", is_flag=True, help="unreadable inputs are reported and skipped; exit 0")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def predict(model, domain, input_, out, fmt, mode, window, precision, batch_size, workers, cpus_per_worker,
            overwrite, skip_bad, address, tracking_uri) -> None:  # fmt: skip
    """Label maps for new images with Ray Data batch inference."""
    from raymh.infer.predict import run_predict

    try:
        s = run_predict(
            model, domain=domain, input=input_, out=out, fmt=fmt, mode=mode, window=window, precision=precision,
            batch_size=batch_size, workers=workers, cpus_per_worker=cpus_per_worker, overwrite=overwrite,
            address=address, tracking_uri=tracking_uri,
        )  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    first = f"; first output after {s.first_output_s:.1f}s" if s.first_output_s is not None else ""
    click.echo(f"[raymh] wrote {s.written} label map(s) ({s.format}) to {s.out} in {s.seconds:.1f}s "
               f"({s.images_per_s:.2f} img/s{first}); {s.skipped_existing} existing skipped")  # fmt: skip
    if s.bad:
        if skip_bad:
            click.echo(f"[raymh] skipped {len(s.bad)} unreadable input(s) (named above)")
        else:
            raise click.ClickException(
                f"{len(s.bad)} input(s) could not be read (named above), e.g. {s.bad[0][0]}: {s.bad[0][1]}; "
                "the others were written. Pass --skip-bad to skip them and exit 0."
            )


@main.command()
@click.option("--model", "model", required=True, help=MODEL_HELP)
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2"]), required=True)
@click.option("--domain", default="all", show_default=True, help="one domain's head, or all (one output each)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the file to write (.onnx / .pt2)")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def export(model, fmt, domain, out, tracking_uri) -> None:
    """Export to ONNX or torch.export (pt2), then check the file against PyTorch at two sizes."""
    from raymh.infer.export import run_export

    try:
        run_export(model, fmt=fmt, out=out, domain=domain, tracking_uri=tracking_uri)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.option("--model", "model", required=True, help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--gpus-per-replica", type=float, default=0, show_default=True)
@click.option("--cpus-per-replica", type=int, default=1, show_default=True, help="also torch threads per replica")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
@click.option("--tracking-uri", default=None, help=TRACKING_HELP)
def serve(model, host, port, replicas, gpus_per_replica, cpus_per_replica, address, tracking_uri) -> None:
    """Serve the model over HTTP with Ray Serve (POST /predict?domain=D, GET /domains)."""
    from raymh.infer.serve import run_serve

    try:
        run_serve(
            model, host=host, port=port, replicas=replicas, gpus_per_replica=gpus_per_replica,
            cpus_per_replica=cpus_per_replica, address=address, tracking_uri=tracking_uri,
        )  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _mount_data_group() -> None:
    from raymh.data.cli import data_group

    main.add_command(data_group, "data")


_mount_data_group()

if __name__ == "__main__":
    main()
