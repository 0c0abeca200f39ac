"""`densreg complete`: exact completions of partly seen images, as a grid (and raw values)."""

from __future__ import annotations

import io
import sys

import click
import numpy as np

from densreg.app.completion import complete, completion_grid, keep_for_rows, order_of
from densreg.registry import atomic_write_bytes, hookimpl

from .common import images_option, load_inputs, load_model_or_export, refuse_real_values, threads_option, writes


@click.command(name="complete")
@click.argument("model_path", metavar="MODEL_OR_EXPORT", type=click.Path())
@images_option
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Values kept per image: the first N in the model's generation order.")
@click.option("--keep-rows", type=click.IntRange(min=0), default=None,
              help="Shorthand for --keep R*C*W: the top R rows (raster order only).")
@click.option("-n", "--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Completions per image.")
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True,
              help="Complete at most this many images (the first ones).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Grid to write (.png): per image its original, the kept part (unseen in blue), the completions.")
@click.option("--npz", "npz_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the raw completions (array 'completions', uint8 M x n x C x H x W, and 'images').")
@threads_option
@writes(out="png", npz_path="npz")
def complete_command(model_path, dataset, data_path, split, images_path, resize, table_path, keep, keep_rows, samples, limit,
                     seed, out, npz_path):
    """Complete images from their first values, sampling the rest exactly from p(x_rest | x_kept).

    The uniform noise comes from numpy's default_rng(seed), so a checkpoint and its export
    draw the same completions.
    """
    model, info = load_model_or_export(model_path)
    refuse_real_values(info, "complete")
    if (keep is None) == (keep_rows is None):
        raise click.UsageError("give exactly one of --keep N or --keep-rows R")
    keep = keep_for_rows(keep_rows, model) if keep_rows is not None else keep
    images, _ = load_inputs(info, dataset, data_path, split, images_path, resize, model=model,
                            table_path=table_path)
    images = images[:limit]
    completions = complete(model, images, keep, samples, seed=seed, progress=sys.stderr.isatty())
    picture = completion_grid(images, completions, keep, order_of(model), info.num_categories)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    if npz_path:
        buffer = io.BytesIO()
        dtype = np.uint8 if info.num_categories <= 256 else np.int64
        np.savez_compressed(buffer, completions=completions.astype(dtype), images=images.astype(dtype),
                            keep=np.array(keep))
        atomic_write_bytes(npz_path, buffer.getvalue())
    click.echo(f"wrote {samples} completions of {len(images)} images (keeping {keep} of "
               f"{model.num_positions} values) to {out}" + (f" and {npz_path}" if npz_path else ""))


@hookimpl
def register_commands(cli):
    cli.add_command(complete_command)
