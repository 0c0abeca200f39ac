"""`densreg eval`: NLL and bits/dim of a checkpoint or an export folder on a dataset split."""

from __future__ import annotations

import sys

import click
import torch

from densreg.app import distributed
from densreg.app.evaluation import evaluate, nll_summary
from densreg.app.training import default_device
from densreg.registry import api, hookimpl

from .common import backend_option, check_matches, data_options, echo_json, load_model_or_export, threads_option


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--split", default="test", show_default=True, help="Which split to score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, show_default="100 on CPU, 1024 on CUDA",
              help="Images per forward pass.")
@click.option("--compile", is_flag=True, help="torch.compile log_prob first (compile time is reported).")
@click.option("--device", default=None, show_default="cuda if available, else cpu; cpu under torchrun",
              help="torch device of a checkpoint, e.g. cpu or cuda.")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: nll_nats, bits_per_dim, images.")
@backend_option
def eval_command(checkpoint, dataset, data_path, download, split, batch_size, compile, device, as_json, backend):
    """NLL (nats per image) and bits/dim of a checkpoint (or an export folder) on a dataset split.

    Under torchrun each process scores its shard of the images and rank 0 prints.
    """
    with distributed.session("cpu", backend) as world:
        result = _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size, compile, device)
    if not world.leader:
        return
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{result['model']} on {dataset}/{split}: {result['nll_nats']:.4f} nats per image, "
                   f"{result['bits_per_dim']:.5f} bits/dim ({result['images']} images)")
        if "compile_seconds" in result:
            click.echo(f"compiled in {result['compile_seconds']:.1f} s (with the first batch)")


def _evaluate(world, checkpoint, dataset, data_path, download, split, batch_size, compile, device) -> dict:
    model, info = load_model_or_export(checkpoint)
    ds = api.get_dataset(dataset)
    check_matches(info, ds)
    with distributed.leader_first():  # one download into the shared cache
        images = api.load_split(dataset, split, data_path, download)
    progress = world.leader and sys.stderr.isatty()
    if isinstance(model, torch.nn.Module):
        if device or world.size == 1:  # under torchrun the ranks evaluate on CPU unless told
            model = model.to(device or default_device())
        scores = evaluate(model, images, batch_size, progress=progress, across_ranks=True, compile=compile)
    else:  # an export in onnxruntime
        nll = distributed.map_shards(lambda part: torch.from_numpy(model.nll(part.numpy(), batch_size or 500)), images)
        scores = nll_summary(nll, model.num_positions)
    return {"model": info.model, "dataset": dataset, "split": split, **scores}


@hookimpl
def register_commands(cli):
    cli.add_command(eval_command)
