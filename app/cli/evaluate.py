"""`densreg eval`: NLL and bits/dim of a checkpoint or an export folder on a dataset split."""

from __future__ import annotations

import sys

import click
import torch

from densreg.app import distributed
from densreg.app.evaluation import evaluate, nll_summary
from densreg.registry import api, hookimpl

from .common import backend_option, check_matches, data_options, echo_json, load_model_or_export


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", default="test", show_default=True, help="Which split to score.")
@click.option("--batch-size", default=500, show_default=True, help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: nll_nats, bits_per_dim, images.")
@backend_option
def eval_command(checkpoint, dataset, data_path, download, split, batch_size, as_json, backend):
    """NLL (nats per image) and bits/dim of a checkpoint (or an export folder) on a dataset split.

    Under torchrun each process scores its shard of the images and rank 0 prints.
    """
    with distributed.session("cpu", backend) as world:
        result = _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size)
    if not world.leader:
        return
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{result['model']} on {dataset}/{split}: {result['nll_nats']:.4f} nats per image, "
                   f"{result['bits_per_dim']:.5f} bits/dim ({result['images']} images)")


def _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size) -> dict:
    model, info = load_model_or_export(checkpoint)
    ds = api.get_dataset(dataset)
    check_matches(info, ds)
    with distributed.leader_first():  # one download into the shared cache
        images = api.load_split(dataset, split, data_path, download)
    progress = world.leader and sys.stderr.isatty()
    if isinstance(model, torch.nn.Module):
        scores = evaluate(model, images, batch_size, progress=progress, across_ranks=True)
    else:  # an export in onnxruntime
        nll = distributed.map_shards(lambda part: torch.from_numpy(model.nll(part.numpy(), batch_size)), images)
        scores = nll_summary(nll, model.num_positions)
    return {"model": info.model, "dataset": dataset, "split": split, **scores}


@hookimpl
def register_commands(cli):
    cli.add_command(eval_command)
