"""`densreg export` and `densreg runtime`: ONNX export and the onnxruntime side."""

from __future__ import annotations

import click

from densreg.registry import hookimpl

from .common import echo_json, threads_option, writes


@click.command(name="export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write (ONNX graphs, weights.bin, manifest.json, README.md, golden.json).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Precision of the graphs' weights and arithmetic (inputs and outputs keep their types).")
@click.option("--no-parity", is_flag=True, help="Skip the onnxruntime-vs-torch parity check.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@threads_option
@writes(out="export")
def export_command(checkpoint, out, dtype, no_parity, as_json):
    """Export a checkpoint to an ONNX folder a serving team can run with onnxruntime and numpy
    alone, check it, and compare onnxruntime with torch."""
    from densreg.app.performance import using_threads
    from densreg.export import export_model
    from densreg.registry import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    with using_threads(model):
        report = export_model(model, out, name=info.qualified_name, parity=not no_parity, dtype=dtype, source=info)
    if as_json:
        echo_json(report)
        return
    size = sum(report["sizes"].values())
    click.echo(f"exported {info.model} to {out} in {report['seconds']:.1f} s (opset {report['opset']}, {dtype}, "
               f"{size / 1e6:.2f} MB, export id {report['export_id']})")
    if report["max_abs_diff"] is not None:
        click.echo(f"parity (onnxruntime vs torch): max abs diff {report['max_abs_diff']:.3g} in logits, "
                   f"{report['log_prob_max_abs_diff']:.3g} nats in log_prob")
    _echo_features(report["features"])


def _echo_features(entry: dict) -> None:
    """Say whether features.onnx was written; warn when the model has features that did not export."""
    if entry["graph"]:
        click.echo(f"features: {entry['size']} per image in {entry['graph']} (see manifest.json 'features')")
    elif "has no learned features" not in entry["reason"]:
        click.echo(f"warning: the export has no features.onnx: {entry['reason']}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runtime(as_json):
    """onnxruntime version, device, and the providers listed and actually usable."""
    from densreg.export.runtime import runtime_info

    data = runtime_info()
    if as_json:
        echo_json(data)
        return
    click.echo(f"onnxruntime {data['onnxruntime']} (build device {data['device']})")
    click.echo(f"available providers: {', '.join(data['available_providers'])}")
    click.echo(f"usable providers:    {', '.join(data['usable_providers']) or 'none'}")
    click.echo(f"an export runs on:   {data['default_provider']}")


@hookimpl
def register_commands(cli):
    cli.add_command(export_command)
    cli.add_command(runtime)
