"""`raymh data`: render the synthetic domains, prepare a dataset, inspect a prepared one (docs/data.md)."""

from __future__ import annotations

import inspect as _inspect
import json
from pathlib import Path

import click

from raymh.data.adapters import ADAPTERS
from raymh.data.prepare import PrepareError, label_histogram, prepare_domain, read_manifest


def _parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW like 256x512, got {value!r}") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"height and width must be positive, got {value!r}")
    return h, w


@click.group("data")
def data_group() -> None:
    """Render, prepare and inspect datasets."""


@data_group.command("synth")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="output directory"
)
@click.option("--images", type=click.IntRange(min=1), default=None, help="train images per domain")
@click.option("--val-images", type=click.IntRange(min=1), default=None, help="val images per domain")
@click.option("--size", callback=_parse_size, default=None, help="image size HxW, e.g. 256x512")
@click.option("--seed", type=int, default=None, help="render seed; same seed, same bytes")
def synth(
    out: Path, images: int | None, val_images: int | None, size: tuple[int, int] | None, seed: int | None
):
    """Render the synthetic street-scene domains in the Cityscapes, BDD100K and Synscapes layouts."""
    from raymh.data.synth import render_dataset

    defaults = _inspect.signature(render_dataset).parameters
    given = {"images": images, "val_images": val_images, "size": size, "seed": seed}
    options = {k: (v if v is not None else defaults[k].default) for k, v in given.items()}
    h, w = options["size"]
    click.echo(
        f"Rendering synthetic domains into {out}: {options['images']} train + {options['val_images']} val "
        f"images each, {h}x{w}, seed {options['seed']}"
    )
    try:
        summary = render_dataset(out, **options)
    except (ValueError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(summary, indent=2, default=str))


@data_group.command("prepare")
@click.option("--kind", required=True, type=click.Choice(sorted(ADAPTERS)), help="dataset kind (adapter)")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new or empty output directory")
@click.option("--domain", default=None, help="domain name (default: from the kind or the folder name)")
@click.option("--skip-bad", is_flag=True, help="leave bad files out and list them in bad_files.json")
@click.option("--overwrite", is_flag=True, help="replace a non-empty --out")
@click.option(
    "--shard-rows", type=click.IntRange(min=1), default=256, show_default=True, help="rows per shard"
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="decode threads (default: up to 4)")
@click.option(
    "--val-fraction", type=float, default=None, help="val share for kinds without an official split"
)
@click.option(
    "--split-seed", type=int, default=None, help="seed of the split for kinds without an official one"
)
def prepare(
    kind, root, out, domain, skip_bad, overwrite, shard_rows, workers, val_fraction, split_seed
) -> None:
    """Check every image/label pair once; write Parquet shards per split and a manifest."""
    options = {k: v for k, v in {"val_fraction": val_fraction, "seed": split_seed}.items() if v is not None}
    click.echo(
        f"Preparing the {kind} dataset at {root} into {out}" + (" (skipping bad files)" if skip_bad else "")
    )

    def progress(split: str, done: int, total: int) -> None:
        if done == total or done % 250 == 0:
            click.echo(f"  {split}: checked {done}/{total}", err=True)

    try:
        manifest = prepare_domain(
            kind=kind, root=root, out=out, domain=domain, skip_bad=skip_bad, shard_rows=shard_rows,
            overwrite=overwrite, workers=workers, options=options, progress=progress,
        )  # fmt: skip
    except PrepareError as e:
        raise click.ClickException(str(e)) from None
    counts = ", ".join(f"{split} {n}" for split, n in manifest["counts"].items())
    click.echo(f"Domain {manifest['domain']!r}: {counts} samples, {manifest['num_classes']} classes -> {out}")
    if skip_bad:
        click.echo(f"Bad files left out: {manifest['bad_files']} (see {out / 'bad_files.json'})")
    click.echo(f"content hash {manifest['content_hash']}")


@data_group.command("inspect")
@click.argument("prepared_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="count pixels of the first N train images"
)
def inspect(prepared_dir: Path, limit: int | None) -> None:
    """Print a prepared dataset's manifest summary and the train split's pixel share per class."""
    try:
        manifest = read_manifest(prepared_dir)
        hist = label_histogram(prepared_dir, split="train", limit=limit)
    except PrepareError as e:
        raise click.ClickException(str(e)) from None
    counts = ", ".join(f"{split} {n}" for split, n in manifest["counts"].items())
    click.echo(f"domain:  {manifest['domain']}\nkind:    {manifest['kind']}\nsamples: {counts}")
    click.echo(f"classes: {manifest['num_classes']}\nsource:  {manifest['source_root']}")
    click.echo(f"hash:    {manifest['content_hash']}\n")
    pixels = hist["pixels"]
    total = max(int(pixels.sum()), 1)
    rows = [(str(i), name, int(pixels[i])) for i, name in enumerate(manifest["classes"])]
    rows.append((str(manifest["ignore_index"]), "(ignore)", int(pixels[manifest["ignore_index"]])))
    width = max(len(name) for _, name, _ in rows)
    click.echo(f"pixel share per class, train split ({hist['images']} labeled images):")
    click.echo(f"{'id':>4}  {'class':<{width}}  {'pixels':>12}  {'share':>7}")
    for train_id, name, n in rows:
        click.echo(f"{train_id:>4}  {name:<{width}}  {n:>12}  {100 * n / total:>6.2f}%")
