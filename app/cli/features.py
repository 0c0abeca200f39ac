"""`densreg features`: hidden representations of images (NADE, PixelRNN)."""

from __future__ import annotations

import io
import sys

import click
import numpy as np

from densreg.app.features import extract_features
from densreg.registry import api, atomic_write_bytes, hookimpl, load_checkpoint

from densreg.app.performance import using_threads

from .common import check_matches, data_options, threads_option


@click.command()
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", default="test", show_default=True, help="Which split to encode.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Archive to write (.npz).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1), help="Images per pass.")
@threads_option
def features(checkpoint, dataset, data_path, download, split, out, batch_size):
    """Write a checkpoint's features of a dataset split to an .npz archive.

    The archive holds ``features`` (float32, N x F: one row per image, in the split's
    order; for NADE the F = hidden units after the whole image), ``model`` (its name) and,
    when the dataset has class labels (e.g. digits), ``labels`` (int64, N).
    """
    model, info = load_checkpoint(checkpoint)
    ds = api.get_dataset(dataset)
    check_matches(info, ds)
    images = api.load_split(dataset, split, data_path, download)
    with using_threads(model):
        values = extract_features(model, images, batch_size, progress=sys.stderr.isatty())
    arrays = {"features": values, "model": np.array(info.model)}
    if ds.labels is not None:
        arrays["labels"] = np.asarray(ds.labels(split, data_path), dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote {out}: features of {values.shape[0]} images, {values.shape[1]} values each"
               + (", and their labels" if "labels" in arrays else ""))


@hookimpl
def register_commands(cli):
    cli.add_command(features)
