"""The `raymh` command line: data, train, eval, tune, config.

Each command loads one typed config (a preset name or a YAML file) plus dotted `--set key=value` overrides,
prints what it will do, then does it. Heavy imports (torch, ray, mlflow) happen inside the commands.
"""

from __future__ import annotations

import sys

import click

from raymh.config import ConfigError, load_config, preset_names, to_yaml
from raymh.train.cluster import RayClusterError

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
        except (ConfigError, FileNotFoundError, RayClusterError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(package_name="raymh")
def main() -> None:
    """Multi-domain semi-supervised segmentation (multi-head DeepLabv3+, DCLoss, Mix Loss) on Ray."""


@main.group("config")
def config_group() -> None:
    """Inspect configs."""


@config_group.command("show")
@click.option("--config", "config", default="quickstart", show_default=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
def config_show(config: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config as YAML."""
    click.echo(to_yaml(_load(config, overrides)), nl=False)


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
    from raymh.train.driver import fit

    outcome = fit(cfg, resume=resume, address=address)
    sys.exit(0 if outcome.ok else 1)


@main.command("eval")
@click.option("--checkpoint", required=True, help="a checkpoint dir, or a run name under tracking.storage_path")
@click.option("--config", "config", default=None, help="override the config saved with the checkpoint")
@click.option("--set", "overrides", multiple=True, help=SET_HELP)
@click.option("--address", default=None, help=ADDRESS_HELP)
def evaluate(checkpoint, config, overrides, address) -> None:
    """Evaluate a checkpoint on every domain's val split (per-domain and mean mIoU)."""
    from raymh.train.driver import evaluate_checkpoint

    evaluate_checkpoint(checkpoint, config=config, overrides=list(overrides), address=address)


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


def _mount_data_group() -> None:
    from raymh.data.cli import data_group

    main.add_command(data_group, "data")


_mount_data_group()

if __name__ == "__main__":
    main()
