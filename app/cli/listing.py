"""`densreg plugins`, `models`, `datasets`, `info`, `pretrained`: what is installed, and what a model costs."""

from __future__ import annotations

import json
import math

import click

from densreg.registry import ConfigError, api, hookimpl
from densreg.registry.limits import MAX_CATEGORIES

from .common import echo_json, echo_table, parse_set_options, parse_shape, set_option


def joint_parameters(num_categories: int, num_positions: int) -> str:
    """K^D - 1 as digits when short, else as a power."""
    if num_positions * math.log10(num_categories) < 18:
        return str(num_categories ** num_positions - 1)
    return f"{num_categories}^{num_positions} - 1"


def warn_clashes(failed: bool = False) -> None:
    """On stderr: every name clash between plugins and, with ``failed``, every plugin that failed to load."""
    catalog = api.get_catalog()
    for line in catalog.clash_messages():
        click.echo(f"clash: {line}", err=True)
    for info in catalog.host.failed() if failed else ():
        kept = catalog.registered_by(info.name)  # a failed register_commands leaves its models registered
        what = f"{', '.join(kept)} stay registered" if kept else "its models and datasets are missing"
        click.echo(f"plugin {info.name!r} ({info.distribution or 'in-process'}) failed to load, {what}: "
                   f"{info.error} (see `densreg plugins`)", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json):
    """List installed plugins: distribution, version, hooks, load errors."""
    infos = api.list_plugins()
    warn_clashes()
    if as_json:
        echo_json([i.as_dict() for i in infos])
        return
    echo_table([[i.name, i.distribution, i.version, ",".join(i.hooks), i.error or ""] for i in infos],
               ["plugin", "distribution", "version", "hooks", "error"])


@click.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {name, plugin, description, ...}.")
def models(pattern, as_json):
    """List registered models, optionally filtered by a glob PATTERN (e.g. 'mark*')."""
    specs = api.get_catalog().model_specs(pattern)
    warn_clashes(failed=True)
    if as_json:
        echo_json([s.as_dict() for s in specs])
        return
    echo_table([[s.name, s.plugin, s.description] for s in specs], ["name", "plugin", "description"])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def datasets(as_json):
    """List registered datasets: shape C,H,W, dimension (values per item) and number of levels K,
    or "continuous" for real-valued data."""
    items = api.list_datasets()
    warn_clashes(failed=True)
    if as_json:
        echo_json([d.as_dict() for d in items])
        return
    echo_table([[d.name, ",".join(map(str, d.event_shape)), d.dimension, "continuous" if d.continuous else d.num_categories,
                 d.plugin, d.description] for d in items], ["name", "shape", "dim", "K", "plugin", "description"])


@click.command()
@click.argument("model_name", metavar="MODEL")
@click.option("--shape", default=None, help="Data shape C,H,W (default 1,28,28 or the --dataset's).")
@click.option("--categories", "-k", type=int, default=None, help="Number of levels K (default 2; 0 for a model of real values).")
@click.option("--dataset", default=None, help="Take shape and K from this dataset.")
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys include 'parameters').")
def info(model_name, shape, categories, dataset, settings, as_json):
    """Show a model's config with defaults and its free-parameter count."""
    spec = api.model_spec(model_name)
    continuous = api.is_continuous(spec)  # real values: K is 0 and there is no finite joint table
    event_shape, num_categories = (1, 28, 28), 0 if continuous else 2
    if dataset:
        ds = api.get_dataset(dataset)
        event_shape, num_categories = ds.event_shape, ds.num_categories
    event_shape = parse_shape(shape) if shape else event_shape
    num_categories = categories if categories is not None else num_categories
    if not continuous and categories is not None and not 2 <= num_categories <= MAX_CATEGORIES:
        raise ConfigError(f"--categories (-k) must be from 2 to {MAX_CATEGORIES}, got {num_categories}")
    model = api.create_model(model_name, event_shape, num_categories, **parse_set_options(settings))
    dims = model.num_positions
    data = {
        "name": spec.name, "plugin": spec.plugin, "description": spec.description, "value_kind": model.value_kind,
        "config": model.config(), "parameters": int(model.free_parameters()),
        "joint_parameters": None if continuous else joint_parameters(num_categories, dims),
        "joint_parameters_log10": None if continuous else dims * math.log10(num_categories),
    }
    if as_json:
        echo_json(data)
        return
    click.echo(f"{spec.name} ({spec.plugin}): {spec.description}")
    for key, value in data["config"].items():
        click.echo(f"  {key} = {json.dumps(value)}")
    click.echo(f"free parameters: {data['parameters']:,}")
    if continuous:
        click.echo(f"a density over {dims} real values (mixture-of-Gaussians conditionals)")
        return
    click.echo(f"fully general joint over {num_categories}^{dims} images: {data['joint_parameters']} parameters "
               f"(about 10^{data['joint_parameters_log10']:.1f})")



@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every catalog entry with its card).")
def pretrained(as_json):
    """List the pretrained models installed with densreg: name, dataset, test NLL, parameters, size,
    sha256 and license.

    Load one with densreg.load_pretrained(NAME) (no network); export it with `densreg export NAME --out DIR`,
    whose folder then carries the catalog's model card.
    """
    from densreg.registry.pretrained import list_pretrained

    entries = list_pretrained()
    if as_json:
        echo_json(entries)
        return
    echo_table([[e["name"], e["dataset"], f"{e['test_nll_nats']:.2f} ({e['test_split']}, {e['test_images']})",
                 f"{e['parameters']:,}", f"{e['bytes'] / 1e6:.2f} MB", e["sha256"][:16], e["license"].split(" ")[0]]
                for e in entries],
               ["name", "dataset", "test NLL (nats; split, images)", "parameters", "size", "sha256", "license"])


@hookimpl
def register_commands(cli):
    for command in (plugins, models, datasets, info, pretrained):
        cli.add_command(command)
