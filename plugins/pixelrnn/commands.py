"""`densreg grow`: continue a trained Row LSTM or Diagonal BiLSTM deeper, or a Row LSTM wider.

Registered through ``register_commands`` like any plugin's command. This module imports no torch:
the command's body imports it (and the surgery, surgery.py) when it runs, so listing or helping
on the commands stays light.
"""

from __future__ import annotations

import click

from densreg.app.cli.common import force_option
from densreg.registry import hookimpl

POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Layers of the grown model (more than the checkpoint's).")
@click.option("--hidden", type=click.IntRange(min=1), default=None,
              help="Channels per layer of the widened model (more than the checkpoint's; row-lstm only).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint the grown run writes "
              "(.safetensors), with its log and resume state as `densreg train` writes them.")
@click.option("--dataset", default="binarized-mnist", show_default=True, help="Registered dataset to train on.")
@click.option("--data", "data_path", default=None, help="Path to the dataset's files.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True, help="Most epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per step.")
@click.option("--lr", type=POSITIVE, default=1.5e-3, show_default=True, help="Adam learning rate.")
@click.option("--lr-decay", type=click.FloatRange(min=0, max=1, min_open=True), default=0.95, show_default=True,
              help="Multiply the learning rate by this after each epoch.")
@click.option("--clip-grad", type=POSITIVE, default=5.0, show_default=True, help="Clip the gradient norm to this.")
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True,
              help="Stop after this many epochs without a better valid NLL.")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=None, show_default="off",
              help="Moving average of the weights, as `densreg train --ema`.")
@click.option("--max-minutes", type=POSITIVE, default=None, show_default="no budget",
              help="Stop after the epoch that crosses this wall-clock budget.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed (the new weights, shuffling).")
@force_option
def grow(checkpoint, layers, hidden, out, dataset, data_path, force, **options):
    """Continue the trained row-lstm or diagonal-bilstm CHECKPOINT with more layers (--layers),
    or a row-lstm with wider layers (--hidden), or both (widened first).

    The grown model keeps every trained weight and starts as the same density (checked on 200
    valid images before training; a mismatch stops here). Training then runs as `densreg train`
    does, writing OUT, its log and its resume state, so `densreg train MODEL --dataset D --out OUT
    --resume` continues it later.
    """
    if layers is None and hidden is None:
        raise click.UsageError("give --layers, --hidden or both")
    from densreg.app.run_files import locked_run

    with locked_run(out, force):  # as `densreg train`: no other writer, nothing of another kind replaced
        _grow(checkpoint, layers, hidden, out, dataset, data_path, options)


def _grow(checkpoint, layers, hidden, out, dataset, data_path, options):
    import torch

    import densreg
    from densreg.app.cli.common import check_matches

    from . import surgery

    model, info = densreg.load_checkpoint(checkpoint)
    check_matches(info, densreg.get_dataset(dataset))
    torch.manual_seed(options["seed"])
    new = surgery.grow(model, layers=layers, hidden=hidden)
    valid = densreg.load_split(dataset, "valid", data_path)
    gap = surgery.same_density(new, model, valid[:200])
    before, after = model.config(), new.config()
    click.echo(f"grew {checkpoint} from {before['layers']} layers of {before['hidden']} to {after['layers']} of "
               f"{after['hidden']} (log_prob unchanged: max difference {gap:.2g} nats on 200 valid images)", err=True)
    train = densreg.load_split(dataset, "train", data_path)
    grown_from = f"{checkpoint} ({before['layers']} layers, hidden {before['hidden']})"
    result = densreg.fit(new.train(), train, valid, out=out, progress=True, name=info.model,
                         metrics={"dataset": dataset, "grown_from": grown_from},
                         **{k: v for k, v in options.items() if v is not None})
    click.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in result.items()), err=True)


@hookimpl
def register_commands(cli):
    cli.add_command(grow)
