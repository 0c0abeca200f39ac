"""`densreg plugin new NAME`: start a plugin package from densreg's template (densreg.app.scaffold)."""

from __future__ import annotations

import shlex

import click

from densreg.registry import hookimpl


@click.group()
def plugin():
    """Write a new plugin package: a model, a dataset and conformance tests."""


@plugin.command()
@click.argument("name")
@click.option("--out", type=click.Path(), default=None, show_default="./densreg-NAME",
              help="Folder to write the package into; it must not exist or be empty.")
def new(name, out):
    """Write the pip-installable package densreg-NAME: the model NAME (a first-order
    autoregressive table trained by gradients, to replace with yours), the dataset NAME-runs,
    tests that run densreg's conformance kit, and the entry point that registers them.

    NAME: lower-case letters and digits with single - or _ between them (e.g. my-model),
    the name of no installed plugin or registered model.
    """
    from densreg.app.scaffold import fields, write_plugin

    target, paths = write_plugin(name, out)
    click.echo(f"wrote {target}/ ({len(paths)} files):")
    for path in paths:
        click.echo(f"  {target / path}")
    folder, dataset = shlex.quote(str(target)), fields(name)["dataset"]
    click.echo("next:")
    for command in (f"pip install -e {folder}", f"(cd {folder} && python -m pytest)", f"densreg check {name}",
                    f"densreg train {name} --dataset {dataset} --epochs 10 --lr 0.1 --out {name}.safetensors"):
        click.echo(f"  {command}")


@hookimpl
def register_commands(cli):
    cli.add_command(plugin)
