"""`densreg plot`: learning curves from training logs, or images (an .npz or a dataset's split) as a grid."""

from __future__ import annotations

from pathlib import Path

import click

from densreg.app.images import grid_bytes, grid_png
from densreg.app.inputs import check_images, read_npz_array
from densreg.app.plotting import learning_curves_png, read_log
from densreg.registry import DataError, atomic_write_bytes, hookimpl
from densreg.registry.limits import MAX_CATEGORIES, check_memory

from .common import writes


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Picture to write (.png).")
@click.option("--dataset", default=None, help="Draw images of this dataset (instead of INPUTS).")
@click.option("--split", default="test", show_default=True, help="The --dataset's split.")
@click.option("--data", "data_path", default=None, type=click.Path(), help="The --dataset's files, where it needs them.")
@click.option("-n", "--num", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images to draw (the first N).")
@click.option("--categories", "-k", type=click.IntRange(2, MAX_CATEGORIES), default=None,
              help="Levels K of the images in an .npz (required with one).")
@click.option("--nrow", type=click.IntRange(min=1), default=None, help="Images per grid row (default: square).")
@writes(out="png")
def plot(inputs, out, dataset, split, data_path, num, categories, nrow):
    """Draw train and valid NLL per epoch from training logs (STEM.log.jsonl), or images as a grid.

    Several logs are drawn on one set of axes, one colour each. Images: one IMAGES.npz (the
    'samples' of `densreg sample --npz`, or an array 'images'; N,C,H,W or N,H,W with values
    0..K-1 and --categories K), or --dataset NAME. A level v is drawn as round(v * 255 / (K - 1)),
    grey for one channel and RGB for three.
    """
    npz = [path for path in inputs if Path(path).suffix.lower() == ".npz"]
    if dataset is not None or npz:
        images, num_categories = grid_source(inputs, dataset, split, data_path, categories)
        images = images[:num]
        check_memory(grid_bytes(len(images), images.shape[1:], nrow), f"a grid of {len(images)} images", "lower -n")
        atomic_write_bytes(out, grid_png(images, num_categories, nrow=nrow))
        shape = ",".join(map(str, images.shape[1:]))
        click.echo(f"wrote {out} ({len(images)} images of shape {shape}, K={num_categories})")
        return
    if not inputs:
        raise click.UsageError("give training logs (RUN.log.jsonl), one IMAGES.npz, or --dataset NAME")
    runs = {}
    for log in inputs:
        label = Path(log).name.removesuffix(".log.jsonl")
        runs[label if label not in runs else log] = read_log(log)
    atomic_write_bytes(out, learning_curves_png(runs))
    epochs = sum(len(entries) for entries in runs.values())
    click.echo(f"wrote {out} ({len(runs)} run(s), {epochs} epochs)")


def grid_source(inputs, dataset, split, data_path, categories):
    """(int64 images (N, C, H, W), K) from one .npz or a dataset's split; UsageError or DataError otherwise."""
    if dataset is not None:
        if inputs:
            raise click.UsageError("give either INPUTS or --dataset, not both")
        from densreg.registry import api

        info = api.get_dataset(dataset)
        if info.continuous:
            raise DataError(f"dataset {dataset!r} is continuous; plot draws images of levels 0..K-1")
        return api.load_split(dataset, split, data_path).numpy(), info.num_categories
    if len(inputs) != 1:
        raise click.UsageError("give one IMAGES.npz (training logs and images do not mix)")
    if categories is None:
        raise click.UsageError("an .npz of images needs --categories K (its number of levels)")
    array = read_npz_array(Path(inputs[0]))
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise DataError(f"{inputs[0]}: expected images (N, C, H, W) or (N, H, W), got shape {array.shape}")
    return check_images(array, array.shape[1:], categories, inputs[0]), categories


@hookimpl
def register_commands(cli):
    cli.add_command(plot)
