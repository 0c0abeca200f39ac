"""`densreg features`: hidden representations of images (NADE, PixelRNN), from a checkpoint or an export."""

from __future__ import annotations

import contextlib
import io
import os
import sys

import click
import numpy as np

from densreg.app.features import extract_features
from densreg.registry import DataError, atomic_write_bytes, hookimpl

from .common import images_option, load_inputs, load_model_or_export, threads_option, writes


@click.command()
@click.argument("checkpoint", metavar="MODEL_OR_EXPORT", type=click.Path())
@images_option
@click.option("--download", is_flag=True, help="Fetch the dataset's published files if needed.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Archive to write (.npz).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1), help="Images per pass.")
@threads_option
@writes(out="npz")
def features(checkpoint, dataset, data_path, split, images_path, resize, table_path, download, out, batch_size):
    """Write a model's features of a dataset split (or of --images) to an .npz archive.

    MODEL_OR_EXPORT is a checkpoint, or an export folder whose model has features (its
    features.onnx runs in onnxruntime). The archive holds ``features`` (float32, N x F: one
    row per image, in input order; what they are: `densreg info MODEL`, the model's
    documentation, or an export's manifest.json), ``model`` (its name) and, when the dataset
    has class labels (e.g. digits), ``labels`` (int64, N).
    """
    model, info = load_model_or_export(checkpoint)
    if hasattr(model, "require_features"):  # an export: say it has no features before reading any images
        model.require_features()
    images, _ = load_inputs(info, dataset, data_path, split, images_path, resize, download, model, table_path)
    with _threads_for(model):
        values = extract_features(model, images, batch_size, progress=sys.stderr.isatty())
    arrays = {"features": values, "model": np.array(info.model)}
    labels = _labels(dataset, split, data_path) if dataset is not None else folder_classes(info, images_path)
    if labels is not None:
        arrays["labels"] = labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote {out}: features of {values.shape[0]} images, {values.shape[1]} values each"
               + (", and their labels" if "labels" in arrays else ""))


def _threads_for(model):
    """The measured torch threads for a checkpoint's model; nothing for an export (onnxruntime's own)."""
    from densreg.app.scoring import is_export

    if is_export(model):
        return contextlib.nullcontext()
    from densreg.app.performance import using_threads

    return using_threads(model)


def folder_classes(info, images_path) -> np.ndarray | None:
    """Labels of ``images_path`` by subfolder, for a model trained with --labels-from-folders (its recorded
    classes, in their order); None otherwise."""
    classes = (info.transform or {}).get("classes")
    if not classes or images_path is None or not os.path.isdir(images_path):
        return None
    from densreg.app.inputs import folder_labels, picture_files

    labels, found = folder_labels(images_path, picture_files(images_path))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{images_path} has the class folder {unknown[0]!r}, which the model was not trained with "
                        f"(its classes: {', '.join(classes)})")
    return np.array([classes.index(found[i]) for i in labels], dtype=np.int64)


def _labels(dataset: str, split: str, data_path) -> np.ndarray | None:
    """The dataset's class per image of ``split`` (int64, N), or None when it has no labels."""
    from densreg.registry.catalog import find_dataset

    ds = find_dataset(dataset)  # no torch for densreg's own datasets
    return None if ds.labels is None else np.asarray(ds.labels(split, data_path), dtype=np.int64)


@hookimpl
def register_commands(cli):
    cli.add_command(features)
