"""`densreg eval`: NLL and bits/dim of a checkpoint or an export folder on a dataset split."""

from __future__ import annotations

import sys

import click
import torch

from densreg.app.evaluation import evaluate, nll_summary
from densreg.registry import api, hookimpl

from .common import check_matches, data_options, echo_json, load_model_or_export


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", default="test", show_default=True, help="Which split to score.")
@click.option("--batch-size", default=500, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: nll_nats, bits_per_dim, images.")
def eval_command(checkpoint, dataset, data_path, download, split, batch_size, as_json):
    """NLL (nats per image) and bits/dim of a checkpoint (or an export folder) on a dataset split."""
    model, info = load_model_or_export(checkpoint)
    ds = api.get_dataset(dataset)
    check_matches(info, ds)
    images = api.load_split(dataset, split, data_path, download)
    if isinstance(model, torch.nn.Module):
        scores = evaluate(model, images, batch_size, progress=sys.stderr.isatty())
    else:  # an export in onnxruntime
        scores = nll_summary(torch.from_numpy(model.nll(images.numpy(), batch_size)), model.num_positions)
    result = {"model": info.model, "dataset": dataset, "split": split, **scores}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{info.model} on {dataset}/{split}: {result['nll_nats']:.4f} nats per image, "
                   f"{result['bits_per_dim']:.5f} bits/dim ({result['images']} images)")



@hookimpl
def register_commands(cli):
    cli.add_command(eval_command)
