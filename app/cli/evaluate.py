"""`densreg eval`: NLL and bits/dim of a checkpoint or an export folder on a dataset split.

An export folder is scored in onnxruntime with numpy, without importing torch (unless torchrun
launched the command, which shards the images through torch.distributed), when the dataset is
one of densreg's own or its plugin does not import torch.
"""

from __future__ import annotations

import math
import os
import sys

import click

from densreg.app.launcher import launched
from densreg.registry import DataError, hookimpl

from .common import backend_option, check_matches, data_options, echo_json, load_model_or_export, threads_option


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", default="test", show_default=True, help="Which split to score.")
@click.option("--images", "images_path", type=click.Path(), default=None,
              help="Your own images instead of --dataset (as `densreg score --images`; a model trained with "
                   "--images reads them by its recorded transform).")
@click.option("--table", "table_path", type=click.Path(), default=None,
              help="Your own table instead of --dataset, for a model trained with --table; the NLL is of the raw "
                   "rows (the standardized rows' NLL plus the sum of the log stds).")
@click.option("--resize", is_flag=True, help="Scale --images pictures of another size to the model's H x W.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, show_default="100 on CPU, 1024 on CUDA",
              help="Images per forward pass.")
@click.option("--compile", is_flag=True, help="torch.compile log_prob first (compile time is reported). On CPU it does not pay "
                   "for the built-in models (benchmarks/results/compile.md).")
@click.option("--device", default=None, show_default="cuda if available, else cpu; cpu under torchrun",
              help="torch device of a checkpoint, e.g. cpu or cuda.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: nll_nats, bits_per_dim, images.")
@backend_option
def eval_command(checkpoint, dataset, data_path, download, split, images_path, table_path, resize, batch_size,
                 compile, device, as_json, backend):
    """NLL (nats per image) and bits/dim of a checkpoint (or an export folder) on a dataset split.

    Or on your own --images or --table. Under torchrun each process scores its shard of the
    images and rank 0 prints.
    """
    if sum(x is not None for x in (dataset, images_path, table_path)) != 1:
        raise click.UsageError("give exactly one of --dataset NAME, --images PATH or --table PATH")
    if dataset is None:
        result = evaluate_own(checkpoint, images_path, table_path, resize, batch_size, device)
        dataset, split = images_path or table_path, ""
    elif os.path.isdir(checkpoint) and not launched():  # an export folder: onnxruntime and numpy only
        result = _evaluate_export(checkpoint, dataset, data_path, download, split, batch_size)
    else:
        from densreg.app import distributed

        with distributed.session("cpu", backend) as world:
            result = _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size, compile, device)
        if not world.leader:
            return
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{result['model']} on {dataset}{'/' + split if split else ''}: {result['nll_nats']:.4f} nats per image, "
                   f"{result['bits_per_dim']:.5f} bits/dim ({result['images']} images)")
        if "compile_seconds" in result:
            click.echo(f"compiled in {result['compile_seconds']:.1f} s (with the first batch)")


def _evaluate_export(folder, dataset, data_path, download, split, batch_size) -> dict:
    """Score an export folder in onnxruntime: the dataset read with numpy, no torch."""
    from densreg.app.scoring import nll_summary
    from densreg.registry.catalog import find_dataset

    model, info = load_model_or_export(folder)
    ds = find_dataset(dataset)
    check_matches(info, ds)
    images = ds.load_split(split, data_path, download)
    refuse_empty(images, ds.name, split)
    try:
        nll = model.nll(images, batch_size or 500)  # checks shape and values 0..K-1
    except DataError as exc:
        raise DataError(f"dataset {ds.name!r}, split {split!r}: {exc}") from exc
    return {"model": info.model, "dataset": dataset, "split": split, **nll_summary(nll, model.num_positions, model)}


def evaluate_own(model_path, images_path, table_path, resize, batch_size, device) -> dict:
    """NLL of the user's own files, read as the model's recorded transform says (or as `score --images`
    reads them); a table's NLL is of its raw rows. The same numbers from a checkpoint and its export."""
    from densreg.app.scoring import image_nll, nll_summary
    from densreg.registry.transforms import transform_of

    from .common import load_inputs

    model, info = load_model_or_export(model_path)
    values, _ = load_inputs(info, None, None, None, images_path, resize, model=model, table_path=table_path)
    if device and not os.path.isdir(model_path):
        model = model.to(device)
    nll = image_nll(model, values, batch_size or 500)
    transform = transform_of(info)
    shift = -transform.log_jacobian if transform is not None else 0.0
    summary = nll_summary(nll, model.num_positions, model)
    summary["nll_nats"] += shift
    summary["bits_per_dim"] = summary["nll_nats"] / (model.num_positions * math.log(2))
    return {"model": info.model, "data": str(images_path or table_path), **summary}


def refuse_empty(images, dataset: str, split: str) -> None:
    """DataError for a split without images (its NLL would be "nan nats (0 images)")."""
    if not len(images):
        raise DataError(f"dataset {dataset!r}, split {split!r} holds no images to evaluate")


def _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size, compile, device) -> dict:
    import torch

    from densreg.app import distributed
    from densreg.app.evaluation import evaluate, nll_summary
    from densreg.app.training_options import default_device, usable_device
    from densreg.registry import api

    model, info = load_model_or_export(checkpoint)
    ds = api.get_dataset(dataset)
    check_matches(info, ds)
    with distributed.leader_first():  # one download into the shared cache
        images = api.load_split(dataset, split, data_path, download)
    refuse_empty(images, dataset, split)
    progress = world.leader and sys.stderr.isatty()
    if isinstance(model, torch.nn.Module):
        if device or world.size == 1:  # under torchrun the ranks evaluate on CPU unless told
            model = model.to(usable_device(device or default_device()))
        scores = evaluate(model, images, batch_size, progress=progress, across_ranks=True, compile=compile)
    else:  # an export in onnxruntime
        nll = distributed.map_shards(lambda part: torch.from_numpy(model.nll(part.numpy(), batch_size or 500)), images)
        scores = nll_summary(nll, model.num_positions, model)
    return {"model": info.model, "dataset": dataset, "split": split, **scores}


@hookimpl
def register_commands(cli):
    cli.add_command(eval_command)
