"""`densreg export` and `densreg runtime`: ONNX export and the onnxruntime side."""

from __future__ import annotations

from pathlib import Path

import click

from densreg.registry import hookimpl

from .common import echo_json, threads_option, writes


@click.command(name="export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write (ONNX graphs, weights.bin, manifest.json, README.md, golden.json, "
                   "test_data_set_0/).")
@click.option("--license", "license_", default=None, show_default="unknown, or the pretrained catalog's",
              help="The model's license, for the model card (manifest 'card', README).")
@click.option("--intended-use", default=None, show_default="unknown, or the pretrained catalog's",
              help="What the model is meant for, for the model card.")
@click.option("--limitations", default=None, show_default="unknown, or the pretrained catalog's",
              help="Known limitations of the model, for the model card.")
@click.option("--triton", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton Inference Server model repository here: one model per graph with its "
                   "config.pbtxt (dynamic batching where every input and output has the batch on axis 0).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Precision of the graphs' weights and arithmetic (inputs and outputs keep their types).")
@click.option("--no-parity", is_flag=True, help="Skip the onnxruntime-vs-torch parity check.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@threads_option
@writes(out="export", triton="triton")
def export_command(checkpoint, out, dtype, no_parity, as_json, license_, intended_use, limitations, triton):
    """Export a checkpoint to an ONNX folder a serving team can run with onnxruntime and numpy
    alone, check it, and compare onnxruntime with torch.

    CHECKPOINT is a .safetensors file or the name of a pretrained model (`densreg pretrained`). The
    folder's model card (manifest 'card', README) comes from the checkpoint's records, the pretrained
    catalog for a catalogued checkpoint, and --license, --intended-use, --limitations; what none of
    them records is written as unknown.
    """
    from densreg.app.performance import using_threads
    from densreg.export import export_model
    from densreg.registry import load_checkpoint
    from densreg.registry.pretrained import entry_of_file, list_pretrained, load_pretrained

    if not Path(checkpoint).exists() and checkpoint in {e["name"] for e in list_pretrained()}:
        model, info = load_pretrained(checkpoint)
    else:
        model, info = load_checkpoint(checkpoint)
        catalogued = entry_of_file(checkpoint)
        if catalogued is not None:
            info.extra = {**info.extra, "card": catalogued["card"]}
    stated = {"license": license_, "intended_use": intended_use, "limitations": limitations}
    with using_threads(model):
        report = export_model(model, out, name=info.qualified_name, parity=not no_parity, dtype=dtype, source=info,
                              card=stated)
    if triton is not None:
        report["triton"] = write_triton(out, triton)
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
    if triton is not None:
        batched = [name for name, entry in report["triton"].items() if entry["batched"]]
        click.echo(f"Triton repository: {triton} ({len(report['triton'])} models; dynamic batching: "
                   f"{', '.join(batched) or 'none'})")
        for name, entry in report["triton"].items():
            if not entry["batched"]:
                click.echo(f"note: {name} has no dynamic batching: {entry['reason']}", err=True)


def write_triton(folder, target) -> dict:
    """The Triton repository of the export ``folder`` (opened and verified first) at ``target``."""
    from densreg.export.manifest import read_verified
    from densreg.export.triton import write_repository

    return write_repository(folder, target, read_verified(Path(folder)))


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
