"""`densreg train`: fit a model on a dataset and write a checkpoint."""

from __future__ import annotations

import click
import torch

from densreg.app.training import fit
from densreg.registry import ConfigError, api, hookimpl, save_checkpoint

from .common import data_options, parse_set_options, set_option

@click.command()
@click.argument("model_name", metavar="MODEL")
@data_options
@set_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (initial weights, shuffling).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Most epochs [default: 20].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per step [default: 100].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate [default: 0.005].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="L2 penalty [default: 0].")
@click.option("--clip-grad", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip the gradient norm to this [default: no clipping].")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without a better valid NLL [default: 5].")
@click.option("--lr-decay", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Multiply the learning rate by this after each epoch [default: 0.95].")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after the epoch that crosses this wall-clock budget.")
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda [default: cuda if available].")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the interrupted run of --out from its last epoch (OUT stem + .last.safetensors).")
def train(model_name, dataset, data_path, download, settings, out, seed, **training):
    """Fit MODEL on a dataset's train split and write a checkpoint.

    Gradient-trained models also write OUT stem + .log.jsonl (one JSON line per epoch)
    and OUT stem + .last.safetensors (the state --resume continues from).
    """
    torch.manual_seed(seed)
    ds = api.get_dataset(dataset)
    model = api.create_model(model_name, ds.event_shape, ds.num_categories, **parse_set_options(settings))
    training = {k: v for k, v in training.items() if v is not None and v is not False}
    if model.closed_form and training:
        given = ", ".join("--" + k.replace("_", "-") for k in training)
        raise ConfigError(f"{model_name} fits in closed form by counting; {given} only apply to gradient-trained models")
    train_images = api.load_split(dataset, "train", data_path, download)
    valid_images = api.load_split(dataset, "valid", data_path) if "valid" in ds.splits else None
    click.echo(f"training {model_name} on {dataset} ({len(train_images)} images)", err=True)
    spec = api.model_spec(model_name)
    name = spec.qualified_name if ":" in model_name else spec.name
    if not model.closed_form:
        training.update(out=out, seed=seed, progress=True, name=name)
    metrics = fit(model, train_images, valid_images, **training)
    metrics["dataset"] = dataset
    save_checkpoint(out, model, name, metrics=metrics)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    click.echo(f"wrote {out} ({shown})")



@hookimpl
def register_commands(cli):
    cli.add_command(train)
