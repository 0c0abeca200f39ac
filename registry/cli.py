"""The ``densreg`` command line.

Every error a user can cause is a DensregError (or an OSError): one line on stderr,
exit status 1, and no traceback unless ``--debug`` (or DENSREG_DEBUG=1).
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import sys

import click
import numpy as np
import torch

from . import api
from .catalog import parse_set_options
from .checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from .errors import ConfigError, DataError, DensregError
from .evaluation import evaluate, nll_summary
from .images import image_grid
from .training import fit
from .version import __version__


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def echo_table(rows: list[list[str]], headers: list[str]) -> None:
    """Print rows as left-aligned columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


class DensregGroup(click.Group):
    """A click group that turns user errors into one line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the top of the program
            if (ctx.obj or {}).get("debug") or os.environ.get("DENSREG_DEBUG") == "1":
                raise
            if isinstance(exc, (DensregError, OSError)):
                click.echo(f"Error: {exc}", err=True)
            else:
                click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                           err=True)
            ctx.exit(1)


@click.group(cls=DensregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="densreg")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx, debug):
    """densreg: exact-likelihood density models for discrete images, from plugins."""
    ctx.ensure_object(dict)["debug"] = debug


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"bad --shape {text!r}: expected C,H,W with positive integers, e.g. 1,28,28")
    return shape


def joint_parameters(num_categories: int, num_positions: int) -> str:
    """K^D - 1 as digits when short, else as a power."""
    if num_positions * math.log10(num_categories) < 18:
        return str(num_categories ** num_positions - 1)
    return f"{num_categories}^{num_positions} - 1"


# -- listing ------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json):
    """List installed plugins: distribution, version, hooks, load errors."""
    infos = api.list_plugins()
    clashes = api.get_catalog().clashes()
    if as_json:
        echo_json([i.as_dict() for i in infos])
        return
    echo_table([[i.name, i.distribution, i.version, ",".join(i.hooks), i.error or ""] for i in infos],
               ["plugin", "distribution", "version", "hooks", "error"])
    for name, owners in clashes.items():
        click.echo(f"clash: {name} is registered by {', '.join(owners)}; use plugin:name to pick one", err=True)


@cli.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {name, plugin, description, ...}.")
def models(pattern, as_json):
    """List registered models, optionally filtered by a glob PATTERN (e.g. 'mark*')."""
    specs = api.get_catalog().model_specs(pattern)
    if as_json:
        echo_json([s.as_dict() for s in specs])
        return
    echo_table([[s.name, s.plugin, s.description] for s in specs], ["name", "plugin", "description"])
    for name, owners in api.get_catalog().clashes().items():
        if name.startswith("model:"):
            click.echo(f"clash: {name[6:]} is registered by {', '.join(owners)}; use plugin:name", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def datasets(as_json):
    """List registered datasets with their shape and number of levels K."""
    items = api.list_datasets()
    if as_json:
        echo_json([d.as_dict() for d in items])
        return
    echo_table([[d.name, ",".join(map(str, d.event_shape)), d.num_categories, d.plugin, d.description]
                for d in items], ["name", "shape", "K", "plugin", "description"])


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.option("--shape", default=None, help="Data shape C,H,W (default 1,28,28 or the --dataset's).")
@click.option("--categories", "-k", type=int, default=None, help="Number of levels K (default 2).")
@click.option("--dataset", default=None, help="Take shape and K from this dataset.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys include 'parameters').")
def info(model_name, shape, categories, dataset, settings, as_json):
    """Show a model's config with defaults and its free-parameter count."""
    event_shape, num_categories = (1, 28, 28), 2
    if dataset:
        ds = api.get_dataset(dataset)
        event_shape, num_categories = ds.event_shape, ds.num_categories
    event_shape = parse_shape(shape) if shape else event_shape
    num_categories = categories if categories is not None else num_categories
    if num_categories < 2:
        raise ConfigError(f"--categories must be at least 2, got {num_categories}")
    spec = api.model_spec(model_name)
    model = api.create_model(model_name, event_shape, num_categories, **parse_set_options(settings))
    dims = model.num_positions
    data = {
        "name": spec.name, "plugin": spec.plugin, "description": spec.description,
        "config": model.config(), "parameters": int(model.free_parameters()),
        "joint_parameters": joint_parameters(num_categories, dims),
        "joint_parameters_log10": dims * math.log10(num_categories),
    }
    if as_json:
        echo_json(data)
        return
    click.echo(f"{spec.name} ({spec.plugin}): {spec.description}")
    for key, value in data["config"].items():
        click.echo(f"  {key} = {json.dumps(value)}")
    click.echo(f"free parameters: {data['parameters']:,}")
    click.echo(f"fully general joint over {num_categories}^{dims} images: {data['joint_parameters']} parameters "
               f"(about 10^{data['joint_parameters_log10']:.1f})")


# -- train / eval / sample ------------------------------------------------------
def data_options(func):
    func = click.option("--download", is_flag=True, help="Fetch the dataset's published files if needed.")(func)
    func = click.option("--data", "data_path", default=None, help="Path to the dataset's files.")(func)
    return click.option("--dataset", required=True, help="Registered dataset name (see `densreg datasets`).")(func)


def check_matches(info, dataset) -> None:
    if tuple(info.event_shape) != tuple(dataset.event_shape) or info.num_categories != dataset.num_categories:
        raise DataError(f"the model was trained on shape {tuple(info.event_shape)} with K={info.num_categories}, "
                        f"but dataset {dataset.name!r} has shape {dataset.event_shape} with K={dataset.num_categories}")


TRAINING_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "clip_grad", "patience", "lr_decay",
                    "max_minutes", "device", "resume")


@cli.command()
@click.argument("model_name", metavar="MODEL")
@data_options
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
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


def load_model_or_export(path):
    """A checkpoint file or an export folder -> (model, info).

    An export folder opens in onnxruntime (densreg.export.runtime.ExportedModel, numpy
    in and out); the provider that runs it is logged to stderr.
    """
    if os.path.isdir(path):
        from densreg.export.runtime import ExportedModel

        model = ExportedModel(path)
        click.echo(f"onnxruntime: {model.info.model} from {path} runs on {model.provider}", err=True)
        return model, model.info
    return load_checkpoint(path)


@cli.command(name="eval")
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


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-n", "--num", "num", default=64, show_default=True, type=click.IntRange(min=1), help="How many.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image grid to write (.png).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--npz", "npz_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the raw samples (array 'samples', uint8 N,C,H,W).")
@click.option("--nrow", type=int, default=None, help="Images per grid row (default: square).")
def sample(checkpoint, num, out, seed, npz_path, nrow):
    """Draw exact samples from a checkpoint (or an export folder) and write an image grid.

    The uniform noise comes from numpy's default_rng(seed), so a checkpoint and its
    export draw the same images for the same seed.
    """
    model, info = load_model_or_export(checkpoint)
    noise = np.random.default_rng(seed).random((num, math.prod(info.event_shape)))
    if isinstance(model, torch.nn.Module):
        samples = model.sample(num, noise=torch.from_numpy(noise)).cpu().numpy()
    else:  # an export in onnxruntime
        samples = model.sample(num, noise=noise)
    samples = samples.astype(np.uint8)
    picture = image_grid(samples, info.num_categories, nrow=nrow)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    if npz_path:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, samples=samples)
        atomic_write_bytes(npz_path, buffer.getvalue())
    click.echo(f"wrote {num} samples to {out}" + (f" and {npz_path}" if npz_path else ""))


# -- command modules ---------------------------------------------------------------
# Each module adds its commands to ``cli`` when imported (one module per feature keeps
# this file short). They import ``cli`` from here, so they are loaded after it exists.
COMMAND_MODULES = ("cli_features", "cli_plot", "cli_check", "cli_export")
for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module}")


def main(argv=None) -> None:
    """Console entry point: load plugins' commands, then run."""
    try:
        host = api.get_catalog().host
        host.call_each("register_commands", lambda info: {"cli": cli})
    except DensregError as exc:  # strict plugin mode
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="densreg")
