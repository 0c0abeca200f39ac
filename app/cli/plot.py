"""`densreg plot`: learning curves from a training log."""

from __future__ import annotations

from pathlib import Path

import click

from densreg.app.plotting import learning_curves_png, read_log
from densreg.registry import atomic_write_bytes, hookimpl


@click.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Picture to write (.png).")
def plot(logs, out):
    """Draw train and valid NLL per epoch from training logs (STEM.log.jsonl) to a PNG.

    Several LOGS are drawn on one set of axes, one colour each.
    """
    runs = {}
    for log in logs:
        label = Path(log).name.removesuffix(".log.jsonl")
        runs[label if label not in runs else log] = read_log(log)
    atomic_write_bytes(out, learning_curves_png(runs))
    epochs = sum(len(entries) for entries in runs.values())
    click.echo(f"wrote {out} ({len(runs)} run(s), {epochs} epochs)")


@hookimpl
def register_commands(cli):
    cli.add_command(plot)
