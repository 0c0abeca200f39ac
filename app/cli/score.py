"""`densreg score`: per-image anomaly scores of a checkpoint or an export folder."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import click
import numpy as np

from densreg.app.anomaly_plots import heatmaps_png
from densreg.app.launcher import launched
from densreg.app.scoring import METHODS, REFERENCE_METHODS, ScoreResult, most_anomalous, score_images, summary
from densreg.registry import ConfigError, atomic_write_bytes, hookimpl
from densreg.registry.transforms import transform_of

from .common import (backend_option, echo_json, images_option, load_inputs, load_model_or_export, read_split,
                     refuse_real_values, threads_option, writes)


def reference_images(info, dataset, data_path, split, size, model=None) -> np.ndarray | None:
    """Training images for the typicality and dose scores: the given dataset, or the one the checkpoint names."""
    dataset = dataset or (info.metrics or {}).get("dataset")
    if dataset is None:
        return None
    images = read_split(info, dataset, split, data_path, model=model)
    if len(images) > size:
        images = images[np.random.default_rng(0).choice(len(images), size, replace=False)]
    return images


def table_kind(path: str) -> str:
    """What --out holds: "json" for a .json name, else "csv"."""
    return "json" if Path(path).suffix.lower() == ".json" else "csv"


def write_table(path: str, names: list[str], result) -> None:
    """Per-image rows as CSV, or JSON when ``path`` ends in .json."""
    columns = {"score": result.scores, "nll_nats": result.nll, "bits_per_dim": result.bits_per_dim,
               **result.columns}
    rows = [{"index": i, "name": name, **{k: float(v[i]) for k, v in columns.items()}} for i, name in enumerate(names)]
    if table_kind(path) == "json":
        data = json.dumps({"method": result.method, "summary": summary(result.scores), "images": rows}, indent=1)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue()
    atomic_write_bytes(path, data.encode())


@click.command()
@click.argument("model_path", metavar="MODEL_OR_EXPORT", type=click.Path())
@images_option
@click.option("--method", type=click.Choice(list(METHODS)), default="nll", show_default=True,
              help="nll: -log p(x); likelihood-ratio: minus a background model's log p (Ren et al. 2019); "
                   "complexity: minus the PNG code length (Serrà et al. 2020); typicality: distance from the "
                   "mean training NLL (Nalisnick et al. 2019); dose: how unlikely the image's region NLLs and PNG "
                   "code length are next to training images' (Morningstar et al. 2021). Higher is more anomalous; "
                   "all in nats.")
@click.option("--background", type=click.Path(), default=None,
              help="Background model (checkpoint or export) for --method likelihood-ratio, trained with "
                   "`densreg train ... --perturb RATE`.")
@click.option("--reference-dataset", default=None,
              help="Training distribution for --method typicality and dose (default: the dataset the checkpoint "
                   "records).")
@click.option("--reference-data", default=None, help="Path to the reference dataset's files.")
@click.option("--reference-images", "reference_path", type=click.Path(), default=None,
              help="Reference (training) images as files instead of --reference-dataset, read as --images is "
                   "(e.g. the folder a model was trained on with `densreg train --images`).")
@click.option("--reference-split", default="train", show_default=True, help="Split of the reference dataset.")
@click.option("--reference-size", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Reference images used (a fixed random subset).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Per-image scores: CSV (index, name, score, nll_nats, bits_per_dim, ...) or JSON by suffix.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="List the k most anomalous.")
@click.option("--heatmaps", type=click.Path(dir_okay=False), default=None,
              help="PNG of the --top most anomalous images beside their per-pixel -log p maps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True, help="Images per pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and the top list as JSON.")
@backend_option
@threads_option
@writes(out=table_kind, heatmaps="png")
def score(model_path, dataset, data_path, split, images_path, resize, table_path, method, background, reference_dataset,
          reference_data, reference_path, reference_split, reference_size, out, top, heatmaps, batch_size, as_json, backend):
    """Score images by how anomalous they are under a checkpoint or an export folder.

    Prints a summary (mean and quantiles of the score and of the NLL) and the --top most
    anomalous images; --out writes every image's score, NLL in nats and bits/dim. Under
    torchrun each process scores its shard of the images; rank 0 writes and prints.
    """
    model, info = load_model_or_export(model_path)
    refuse_real_values(info, "score", tables=True)
    table = info.value_kind == "continuous"  # a model trained on a table (refuse_real_values)
    if table and (method != "nll" or heatmaps):
        raise ConfigError("a model trained on a table is scored by --method nll, without --heatmaps")
    extra = {}
    if method == "likelihood-ratio":
        if background is None:
            raise ConfigError("--method likelihood-ratio needs --background MODEL (train one with "
                              "`densreg train ... --perturb 0.2`)")
        extra["background"] = load_model_or_export(background)[0]
    images, names = load_inputs(info, dataset, data_path, split, images_path, resize, model=model,
                                table_path=table_path)
    if method in REFERENCE_METHODS:
        if reference_path is not None:
            reference = load_inputs(info, None, None, None, reference_path, resize, model=model)[0]
            extra["reference"] = reference[np.random.default_rng(0).choice(len(reference), reference_size, replace=False)] \
                if len(reference) > reference_size else reference
        else:
            extra["reference"] = reference_images(info, reference_dataset, reference_data, reference_split,
                                                  reference_size, model)
    if launched():  # torchrun: the ranks share the images
        from densreg.app import distributed

        with distributed.session("cpu", backend) as world:
            result = score_across_ranks(model, images, method, batch_size=batch_size,
                                        progress=world.leader and sys.stderr.isatty(), **extra)
        if not world.leader:
            return
    else:  # one process: an export folder is scored without importing torch
        result = score_images(model, images, method, batch_size=batch_size, progress=sys.stderr.isatty(), **extra)
    if table:
        result = in_raw_units(result, transform_of(info))
    ranked = most_anomalous(result.scores, top)
    if out:
        write_table(out, names, result)
    if heatmaps and len(ranked):
        labels = [f"{names[i]}: {method} {result.scores[i]:.2f}, NLL {result.nll[i]:.1f}" for i in ranked]
        atomic_write_bytes(heatmaps, heatmaps_png(images[ranked], result.pixel_nll[ranked], labels,
                                                  info.num_categories))
    report = {"model": info.model, "method": method, "images": len(images), "score": summary(result.scores),
              "nll_nats": summary(result.nll), "bits_per_dim": float(result.bits_per_dim.mean()),
              "most_anomalous": [{"index": int(i), "name": names[i], "score": float(result.scores[i]),
                                  "nll_nats": float(result.nll[i])} for i in ranked]}
    if as_json:
        echo_json(report)
    else:
        _print_report(report)
    for path in (out, heatmaps):
        if path:
            click.echo(f"wrote {path}", err=True)


def in_raw_units(result: ScoreResult, transform) -> ScoreResult:
    """A table model's -log p of standardized rows as -log p of the raw rows (nats): plus sum(log std)."""
    shift = -transform.log_jacobian
    nll = result.nll + shift
    return dataclasses.replace(result, scores=result.scores + shift, nll=nll,
                               bits_per_dim=nll / (result.pixel_nll[0].size * math.log(2)))


def score_across_ranks(model, images: np.ndarray, method: str, **options) -> ScoreResult:
    """``score_images`` with each torchrun rank scoring its shard; all ranks get every result, in input order."""
    import torch

    from densreg.app import distributed

    here = distributed.world()
    if here.size == 1:
        return score_images(model, images, method, **options)
    if len(images) < here.size:
        raise ConfigError(f"{len(images)} images cannot be shared by {here.size} processes; run fewer")
    part = score_images(model, images[distributed.shard(len(images))], method, **options)

    def gather(values: np.ndarray) -> np.ndarray:
        return distributed.gather_in_order(torch.from_numpy(np.ascontiguousarray(values)), len(images)).numpy()

    return dataclasses.replace(part, scores=gather(part.scores), nll=gather(part.nll),
                               bits_per_dim=gather(part.bits_per_dim), pixel_nll=gather(part.pixel_nll),
                               columns={name: gather(values) for name, values in part.columns.items()})


def _print_report(report: dict) -> None:
    s, n = report["score"], report["nll_nats"]
    click.echo(f"{report['model']}: {report['images']} images, method {report['method']} (higher = more anomalous)")
    for label, stats in (("score", s), ("nll_nats", n)):
        click.echo(f"  {label:9s} mean {stats['mean']:.3f}  q05 {stats['q05']:.3f}  median {stats['median']:.3f}  "
                   f"q95 {stats['q95']:.3f}  max {stats['max']:.3f}")
    click.echo(f"  bits/dim  mean {report['bits_per_dim']:.5f}")
    if report["most_anomalous"]:
        click.echo(f"most anomalous {len(report['most_anomalous'])}:")
        for row in report["most_anomalous"]:
            click.echo(f"  {row['name']}  score {row['score']:.3f}  nll {row['nll_nats']:.3f}")
    if not math.isfinite(s["mean"]):
        click.echo("warning: some scores are not finite", err=True)


@hookimpl
def register_commands(cli):
    cli.add_command(score)
