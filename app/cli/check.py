"""`densreg check`: run the conformance checks on a model."""

from __future__ import annotations

import click

from densreg.registry import api, hookimpl
from densreg.registry.conformance import CHECKS, run_checks, run_colour_checks

from .common import echo_json, echo_table, parse_set_options, set_option


ENUMERATED_IMAGES = 4096  # normalization and sampling enumerate every image of a discrete space


def parse_shape(ctx, param, value):
    """'C,H,W' -> (C, H, W) of positive ints (None stays None)."""
    if value is None:
        return None
    try:
        shape = tuple(int(part) for part in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"expected C,H,W (three positive integers), got {value!r}")
    return shape


def space_levels(spec, shape, categories) -> int:
    """K for --shape: --categories, else 2 (0 for a real-valued model); a discrete space must be small
    enough to enumerate."""
    from densreg.registry.checks.subject import is_discrete, takes_levels, takes_real_values

    k = categories if categories is not None else (2 if is_discrete(spec.factory) else 0)
    if k != 0 and not takes_levels(spec.factory):
        raise click.BadParameter(f"{spec.qualified_name} is real-valued: K is 0, got {k}", param_hint="--categories")
    if k == 1 or (k == 0 and not takes_real_values(spec.factory)):
        raise click.BadParameter(f"{spec.qualified_name} takes K >= 2 levels, got {k}", param_hint="--categories")
    discrete = k != 0
    d = shape[0] * shape[1] * shape[2]
    if discrete and k ** d > ENUMERATED_IMAGES:
        raise click.BadParameter(f"{'x'.join(map(str, shape))} with K={k} has {k}^{d} images; normalization and "
                                 f"sampling enumerate every image: at most {ENUMERATED_IMAGES}", param_hint="--shape")
    return k


@click.command()
@click.argument("model_name", metavar="MODEL")
@set_option
@click.option("--only", "only", multiple=True, type=click.Choice(list(CHECKS)), help="Run only this check (repeatable).")
@click.option("--skip", "skip", multiple=True, type=click.Choice(list(CHECKS)), help="Leave out this check (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads while the checks run.")
@click.option("--shape", callback=parse_shape, metavar="C,H,W",
              help="Run every check on this one space instead of the tiny defaults (and no colour pass).")
@click.option("--categories", type=click.IntRange(min=0), metavar="K",
              help="Levels K of --shape (default 2; 0 for a real-valued model; 0 picks the real values of a "
                   "model that takes both).")
@click.option("--colour/--no-colour", default=True, show_default=True,
              help="Also run the checks on colour spaces (3x1x2 K=2 and 3x1x1 K=3; 3x1x1 real) when the model "
                   "takes C = 3.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {model, config, results: [{name, status, detail, seconds}]}.")
@click.pass_context
def check(ctx, model_name, settings, only, skip, threads, shape, categories, colour, as_json):
    """Check that MODEL honours the density-model contract, on tiny images.

    Runs normalization, chain rule, causality, the training path (gradients on), step
    parity (compared in float64), sampling (chi-square; "skipped" with the reason where it
    cannot run), checkpoint round trip and ONNX export parity, then the density checks
    again on colour spaces; prints a table and, if any check fails, one line naming the
    failed checks on stderr, and exits 1.
    """
    spec = api.model_spec(model_name)
    config = parse_set_options(settings)
    checks = list(only) or None
    if categories is not None and shape is None:
        raise click.UsageError("--categories goes with --shape")
    spaces = [(shape, space_levels(spec, shape, categories))] if shape else None
    results = run_checks(model_name, config, checks=checks, skip=skip, threads=threads, spaces=spaces)
    if colour and not shape:
        results += run_colour_checks(model_name, config, checks=checks, skip=skip, threads=threads)
    failed = [r for r in results if r.failed]
    if as_json:
        echo_json({"model": spec.qualified_name, "config": config, "passed": not failed,
                   "results": [r.as_dict() for r in results]})
    else:
        click.echo(f"{spec.qualified_name}" + (f" with {config}" if config else "") + f": {spec.description}")
        echo_table([[r.name, r.status.upper() if r.failed else r.status, f"{r.seconds:.2f}s", r.detail]
                    for r in results], ["check", "result", "time", "detail"])
        counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    if failed:
        if not as_json:  # JSON says it in "passed"
            names = ", ".join(r.name for r in failed)
            click.echo(f"Error: {spec.qualified_name} fails {len(failed)} of {len(results)} checks: {names}", err=True)
        ctx.exit(1)


@hookimpl
def register_commands(cli):
    cli.add_command(check)
