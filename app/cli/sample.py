"""`densreg sample`: exact samples of a checkpoint or an export folder, as an image grid."""

from __future__ import annotations

import io
import math

import click
import numpy as np

from densreg.app.images import grid_bytes, grid_png, real_to_levels
from densreg.export.runtime import ExportedModel
from densreg.registry import ConfigError, atomic_write_bytes, hookimpl
from densreg.registry.transforms import transform_of
from densreg.registry.limits import check_memory

from .common import load_model_or_export, threads_option, writes


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-n", "--num", "num", default=64, show_default=True, type=click.IntRange(min=1), help="How many.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Image grid to write (.png).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@click.option("--npz", "npz_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the raw samples (array 'samples', uint8 N,C,H,W; float32 for a model of real values).")
@click.option("--nrow", type=click.IntRange(min=1), default=None, help="Images per grid row (default: square).")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="For a model trained with --table: also write the samples as rows of its columns, in the "
                   "table's own units (the standardization undone).")
@threads_option
@writes(out="png", npz_path="npz", csv_path="csv")
def sample(checkpoint, num, out, seed, npz_path, nrow, csv_path):
    """Draw exact samples from a checkpoint (or an export folder) and write an image grid.

    The uniform noise comes from numpy's default_rng(seed), so a checkpoint and its
    export draw the same images for the same seed. Samples of real values are drawn
    with three uniforms per value and shown on one grey scale (1st to 99th percentile).
    """
    model, info = load_model_or_export(checkpoint)
    shape = "x".join(map(str, info.event_shape))
    # noise, samples and the sampler's per-step work (about 33 bytes per value measured), then the grid
    need = num * math.prod(info.event_shape) * 48 + grid_bytes(num, info.event_shape, nrow)
    check_memory(need, f"sampling {num} images of {shape}", "lower -n")
    discrete = model.family.discrete  # real values: a grey-scale grid
    noise = np.random.default_rng(seed).random(model.noise_shape(num))  # the family's uniforms per value
    if isinstance(model, ExportedModel):  # an export in onnxruntime: torch is never imported
        samples = model.sample(num, noise=noise)
    else:
        import torch

        from densreg.app.performance import using_threads

        with using_threads(model, task="sample"):
            samples = model.sample(num, noise=torch.from_numpy(noise)).cpu().numpy()
    if not discrete:
        samples = samples.astype(np.float32)
        png = grid_png(real_to_levels(samples), 256, nrow=nrow)
    else:
        samples = samples.astype(np.uint8)
        png = grid_png(samples, info.num_categories, nrow=nrow)
    transform = transform_of(info)
    table = transform is not None and transform.kind == "table"
    if csv_path and not table:
        raise ConfigError("--csv writes the samples of a model trained with --table; this one was not")
    atomic_write_bytes(out, png)
    if npz_path:  # a table model's rows in the table's units, with their column names
        buffer = io.BytesIO()
        arrays = {"samples": transform.unstandardize(samples), "columns": np.array(transform.columns)} if table \
            else {"samples": samples}
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(npz_path, buffer.getvalue())
    if csv_path:
        atomic_write_bytes(csv_path, rows_csv(transform.unstandardize(samples), transform.columns))
    written = [p for p in (npz_path, csv_path) if p]
    click.echo(f"wrote {num} samples to {out}" + "".join(f" and {p}" for p in written))


def rows_csv(rows: np.ndarray, columns) -> bytes:
    """Rows (N, D) as CSV bytes with a header of ``columns``, full float precision."""
    lines = [",".join(columns)] + [",".join(repr(float(v)) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()



@hookimpl
def register_commands(cli):
    cli.add_command(sample)
