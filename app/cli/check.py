"""`densreg check`: run the conformance checks on a model."""

from __future__ import annotations

import click

from densreg.registry import api, hookimpl
from densreg.registry.conformance import CHECKS, run_checks

from .common import echo_json, echo_table, parse_set_options, set_option


@click.command()
@click.argument("model_name", metavar="MODEL")
@set_option
@click.option("--only", "only", multiple=True, type=click.Choice(list(CHECKS)), help="Run only this check (repeatable).")
@click.option("--skip", "skip", multiple=True, type=click.Choice(list(CHECKS)), help="Leave out this check (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads while the checks run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {model, config, results: [{name, status, detail, seconds}]}.")
@click.pass_context
def check(ctx, model_name, settings, only, skip, threads, as_json):
    """Check that MODEL honours the density-model contract, on tiny images.

    Runs normalization, chain rule, causality, step parity (compared in float64),
    sampling (chi-square; "skipped" with the reason where it cannot run), checkpoint
    round trip and ONNX export parity; prints a table and exits 1 if any check fails.
    """
    spec = api.model_spec(model_name)
    config = parse_set_options(settings)
    results = run_checks(model_name, config, checks=list(only) or None, skip=skip, threads=threads)
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
        ctx.exit(1)


@hookimpl
def register_commands(cli):
    cli.add_command(check)
