"""What the commands share: option groups, parsing, output, and opening a saved model."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import click
import numpy as np

from densreg.registry import ConfigError, DataError
from densreg.registry.catalog import reject_reserved

ARGV_KEY = "densreg.argv"  # ctx.meta key: the arguments after `densreg`, as given
REQUESTED_THREADS: int | None = None  # --threads of the command running (threads_option)


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def echo_table(rows: list[list[str]], headers: list[str]) -> None:
    """Print rows as left-aligned columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"bad --shape {text!r}: expected C,H,W with positive integers, e.g. 1,28,28")
    return shape


def parse_set_options(items) -> dict[str, Any]:
    """``["hidden=500", "ordering=snake"]`` -> dict; values parse as JSON, else stay strings."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad --set value {item!r}: expected key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    reject_reserved(out)
    return out



def set_option(func):
    """``--set KEY=VALUE`` (repeatable): a model config override, parsed by ``parse_set_options``."""
    return click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config value.")(func)


def threads_option(func):
    """``--threads N``: torch threads for the whole command; not given, fit, evaluate, sample,
    features and export use the default measured for the model's kind (densreg.app.performance)."""
    @functools.wraps(func)
    def run(*args, threads=None, **kwargs):
        global REQUESTED_THREADS
        REQUESTED_THREADS = threads  # load_model_or_export passes it to onnxruntime
        try:
            model_path = kwargs.get("checkpoint", kwargs.get("model_path", ""))
            if os.path.isdir(str(model_path)):  # an export folder: no torch to set up
                return func(*args, **kwargs)
            from densreg.app.performance import set_threads, torch_threads

            set_threads(threads)
            try:
                with torch_threads(threads):
                    return func(*args, **kwargs)
            finally:
                set_threads(None)
        finally:
            REQUESTED_THREADS = None

    return click.option("--threads", type=click.IntRange(min=1), default=None, show_default="measured per model kind",
                        help="torch threads (default: every core for training and evaluation, one for sampling "
                        "but diagonal-bilstm, as measured in benchmarks/results/speed.md; OMP_NUM_THREADS is "
                        "honoured before the default).")(run)


FORCE_HELP = "Replace an existing file of another kind (e.g. a checkpoint or a training log by a picture)."


def force_option(func):
    """``--force``: let the command replace an existing output of another kind (registry/outputs.py)."""
    return click.option("--force", is_flag=True, help=FORCE_HELP)(func)


def writes(**kinds):
    """Decorate a command whose options ``kinds`` name the files it writes ({option: kind}, a
    registry.outputs KINDS key or a function of the path giving one): the command runs holding
    their output locks, after the check that none replaces a file of another kind; adds --force."""
    def decorate(func):
        @functools.wraps(func)
        def run(*args, force=False, **kwargs):
            from densreg.registry.outputs import writing

            outputs = [(kwargs.get(option), kind(kwargs[option]) if callable(kind) and kwargs.get(option) else kind)
                       for option, kind in kinds.items()]
            with writing(outputs, force):
                return func(*args, **kwargs)
        return force_option(run)
    return decorate


def data_options(func):
    func = click.option("--download", is_flag=True, help="Fetch the dataset's published files if needed.")(func)
    func = click.option("--data", "data_path", default=None, help="Path to the dataset's files.")(func)
    return click.option("--dataset", default=None, help="Registered dataset name (see `densreg datasets`).")(func)


def backend_option(func):
    """``--backend NAME``: the torch.distributed backend under torchrun (default: by device)."""
    from densreg.app.launcher import BACKENDS

    return click.option("--backend", default=None, envvar="DENSREG_BACKEND", show_envvar=True,
                        type=click.Choice(BACKENDS),
                        help="Process-group backend under torchrun [default: nccl for cuda, else gloo].")(func)


def check_matches(info, dataset) -> None:
    if tuple(info.event_shape) != tuple(dataset.event_shape) or info.num_categories != dataset.num_categories:
        raise DataError(f"the model was trained on shape {tuple(info.event_shape)} with K={info.num_categories}, "
                        f"but dataset {dataset.name!r} has shape {dataset.event_shape} with K={dataset.num_categories}")


def refuse_real_values(info, command: str, tables: bool = False) -> None:
    """ConfigError: ``command`` works on models of values 0..K-1, and ``info`` describes one of real values
    (``tables``: unless the model was trained on a table, whose rows the command takes)."""
    if info.value_kind == "continuous" and not (tables and (info.transform or {}).get("kind") == "table"):
        raise ConfigError(f"densreg {command} works on models of values 0..K-1; {info.model!r} models real values "
                          "(use densreg eval for its log density, densreg sample for samples)")


def load_model_or_export(path, threads: int | None = None):
    """A checkpoint file or an export folder -> (model, info).

    An export folder opens in onnxruntime (densreg.export.runtime.ExportedModel, numpy
    in and out; ``threads`` intra-op threads, default $OMP_NUM_THREADS, else the runtime's
    measured default) without importing torch; the provider that runs it is logged to stderr.
    """
    if os.path.isdir(path):
        from densreg.export.runtime import ExportedModel

        model = ExportedModel(path, threads=threads if threads is not None else REQUESTED_THREADS)
        click.echo(f"onnxruntime: {model.info.model} from {path} runs on {model.provider}", err=True)
        return model, model.info
    from densreg.registry import load_checkpoint  # torch: not needed for an export folder

    return load_checkpoint(path)


def images_option(func):
    """``--dataset NAME [--data PATH] [--split S]``, ``--images FILE.npz|PICTURE|FOLDER|GLOB [--resize]`` or
    ``--table FILE`` (a model trained on a table)."""
    func = click.option("--table", "table_path", type=click.Path(), default=None,
                        help="A table (.csv, .npy, .parquet) for a model trained with --table: its recorded "
                             "columns (by header name, else all in order), standardized as in training.")(func)
    func = click.option("--resize", is_flag=True, help="Scale pictures of another size to the model's H x W.")(func)
    func = click.option("--images", "images_path", type=click.Path(), default=None,
                        help="An .npz or .npy (levels, N x C x H x W or N x H x W), a picture (PNG, JPEG, BMP, TIFF), "
                             "a folder of them (searched recursively) or a glob; grey values g become "
                             "floor(g*K/256), or as the model's recorded transform says.")(func)
    func = click.option("--split", default="test", show_default=True, help="Split of --dataset.")(func)
    func = click.option("--data", "data_path", default=None, help="Path to the dataset's files.")(func)
    return click.option("--dataset", default=None, help="A registered dataset (see `densreg datasets`).")(func)


def load_inputs(info, dataset, data_path, split, images_path, resize,
                download: bool = False, model=None, table_path=None) -> tuple[np.ndarray, list[str]]:
    """The images named by ``images_option``, checked against the model: int64 (N, C, H, W) (float32 rows
    (N, 1, 1, D) for a table), names. A model trained on the user's own files reads them through its
    recorded transform. With ``model`` an export folder, a dataset is read and checked without torch."""
    if sum(x is not None for x in (dataset, images_path, table_path)) != 1:
        raise click.UsageError("give exactly one of --dataset NAME, --images PATH or --table PATH")
    if info.transform is not None and dataset is None:
        from densreg.app.own_data import own_inputs
        from densreg.registry.transforms import transform_of

        return own_inputs(transform_of(info), images_path, table_path, resize)
    if table_path is not None:
        raise ConfigError("--table needs a model trained with `densreg train --table`; this one records no table")
    if images_path is not None:
        from densreg.app.inputs import read_images

        return read_images(images_path, info.event_shape, info.num_categories, resize)
    images = read_split(info, dataset, split, data_path, download, model)
    return images, [f"{dataset}/{split}[{i}]" for i in range(len(images))]


def read_split(info, dataset, split, data_path=None, download: bool = False, model=None) -> np.ndarray:
    """One split of ``dataset``, checked against the model's shape and K, as a numpy array. For an
    export folder (``model`` an ExportedModel) the dataset is found and checked without torch."""
    from densreg.app.scoring import is_export

    if model is not None and is_export(model):
        from densreg.registry.catalog import find_dataset
        from densreg.registry.errors import DataError

        ds = find_dataset(dataset)
        check_matches(info, ds)
        array = ds.load_split(split, data_path, download)
        try:
            return model.validate(array)
        except DataError as exc:
            raise DataError(f"dataset {ds.name!r}, split {split!r}: {exc}") from exc
    from densreg.registry import api

    check_matches(info, api.get_dataset(dataset))
    return api.load_split(dataset, split, data_path, download).numpy()
