"""`densreg train`: fit a model on a dataset and write a checkpoint."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click
import torch
from click.core import ParameterSource

from densreg.app import distributed
from densreg.app.evaluation import evaluate
from densreg.app.experiment_log import check_available, parse_log_to
from densreg.app.ood import perturb_images
from densreg.app.run_files import locked_run, run_paths
from densreg.app.training import TrainingOptions, fit
from densreg.app.training_options import default_device
from densreg.registry import CheckpointError, ConfigError, api, hookimpl
from densreg.registry.checkpoint import parse_info, read_header, record_metrics
from densreg.registry.datasets import split_sha256

from .common import (ARGV_KEY, backend_option, force_option, parse_set_options, parse_shape, set_option,
                     threads_option)

DEFAULTS = TrainingOptions()


def check_log_to(ctx, param, specs):
    """--log-to's values, each checked (a usage error names a bad one) and its package found."""
    try:
        for spec in specs:
            parse_log_to(spec)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    check_available(specs)  # "install densreg[tensorboard]" before the data is read
    return specs


def own_data_options(func):
    """Where the training data comes from: ``--dataset NAME [--data --download]``, ``--images PATH``
    (pictures or an array file) or ``--table PATH`` (CSV, .npy, Parquet), with their options."""
    options = [
        click.option("--dataset", default=None, help="Registered dataset name (see `densreg datasets`)."),
        click.option("--data", "data_path", default=None, help="Path to the dataset's files."),
        click.option("--download", is_flag=True, help="Fetch the dataset's published files if needed."),
        click.option("--images", "images_path", default=None,
                     help="Your own images: a folder (searched recursively) or glob of PNG, JPEG, BMP or TIFF "
                          "pictures, or an .npz/.npy of levels 0..K-1. Pictures become grey (or RGB, --shape 3,H,W) "
                          "8-bit values g, then levels floor(g*K/256) (K=2: g >= 128 is 1)."),
        click.option("--shape", callback=lambda ctx, param, value: value and parse_shape(value), metavar="C,H,W",
                     default=None, help="Size of --images: C=1 grey or 3 RGB [default: grey, the first picture's "
                                         "size]; pictures of another size are refused unless --resize."),
        click.option("--resize", is_flag=True, help="Scale pictures of another size to --shape (Lanczos on the "
                                                    "8-bit values, before binning); recorded for scoring."),
        click.option("--categories", type=click.IntRange(min=2), default=2, show_default=True, metavar="K",
                     help="Levels K of --images."),
        click.option("--labels-from-folders", is_flag=True,
                     help="Each picture's class is its subfolder below --images (recorded in the checkpoint)."),
        click.option("--valid-images", default=None, help="Validation pictures (instead of --valid-fraction)."),
        click.option("--table", "table_path", default=None,
                     help="Your own table of real values: CSV (a header is optional), .npy (rows x columns) or "
                          ".parquet (needs pyarrow); standardized by the train split's mean and std."),
        click.option("--columns", default=None, metavar="A,B,...",
                     help="Columns of --table to model (header names; 1,2,... without a header) [default: all]."),
        click.option("--drop-invalid", is_flag=True,
                     help="Leave out rows of --table with missing or non-finite values (counted) instead of "
                          "refusing them."),
        click.option("--valid-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
                     show_default=True, help="Share of --images or --table held out for validation (seeded by --seed)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


OWN_OPTIONS = ("images_path", "table_path", "shape", "resize", "categories", "labels_from_folders", "valid_images",
               "columns", "drop_invalid", "valid_fraction")


@click.command()
@click.argument("model_name", metavar="MODEL")
@own_data_options
@set_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors).")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Random seed (initial weights, shuffling).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True, help="Most epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True,
              help="Images per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr, show_default=True,
              help="Adam learning rate.")
@click.option("--lr-decay", type=click.FloatRange(min=0, max=1, min_open=True), default=DEFAULTS.lr_decay,
              show_default=True, help="Multiply the learning rate by this after each epoch.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=DEFAULTS.weight_decay, show_default=True,
              help="L2 penalty.")
@click.option("--clip-grad", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.clip_grad,
              show_default="no clipping", help="Clip the gradient norm to this.")
@click.option("--patience", type=click.IntRange(min=1), default=DEFAULTS.patience, show_default=True,
              help="Stop after this many epochs without a better valid NLL.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.max_minutes,
              show_default="no budget", help="Stop after the epoch that crosses this wall-clock budget.")
@click.option("--device", default=DEFAULTS.device, show_default="cuda if available, else cpu",
              help="torch device, e.g. cpu or cuda.")
@click.option("--perturb", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="Train a background model for `densreg score --method likelihood-ratio` (Ren et al. 2019): "
                   "each train and valid value is replaced, with this probability, by a uniform draw from 0..K-1 "
                   "(one fixed draw per split, seeded by --seed).")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train with N processes on this machine: runs this command under torchrun "
                   "(DistributedDataParallel; --batch-size stays the global batch).")
@backend_option
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default=DEFAULTS.precision, show_default=True,
              help="bf16: the forward pass under bf16 autocast (weights and Adam stay float32).")
@click.option("--compile", is_flag=True, help="torch.compile the log-likelihood (compile time is reported). On CPU it pays for "
                   "PixelRNN training past a few epochs (diagonal-bilstm 1.24-1.35x after a 3-4 minute compile, "
                   "row-lstm 1.27x after a longer one); NADE is faster without it (benchmarks/results/compile.md).")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=DEFAULTS.ema, show_default="off",
              help="Keep an exponential moving average of the weights with this decay per step (e.g. 0.999); "
                   "validation, the best checkpoint and the fitted model use the averaged weights.")
@click.option("--log-to", "log_to", multiple=True, metavar="SCHEME:DIR", callback=check_log_to,
              help="Also log each epoch's train and valid NLL, learning rate and speed to an experiment log "
                   "(repeatable): tensorboard:DIR writes a TensorBoard event file into DIR "
                   "(needs pip install 'densreg[tensorboard]').")
@threads_option
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run of --out from its last epoch (OUT stem + .last.safetensors); "
                   "options and model settings (--set) not given again are the interrupted run's.")
@force_option
@click.pass_context
def train(ctx, model_name, dataset, data_path, download, settings, out, perturb, resume, nproc, backend, log_to,
          force, **options):
    """Fit MODEL on a dataset's train split, or on your own --images or --table, and write a checkpoint.

    With --images or --table the preprocessing (size, channels, K, or the columns' mean and std)
    and a sha256 of the data are recorded in the checkpoint, and eval, score, features, complete,
    sample and exports apply the same rule to new files.

    Gradient-trained models also write OUT stem + .log.jsonl (one JSON line per epoch;
    --log-to sends the same values to TensorBoard too)
    and OUT stem + .last.safetensors (the state --resume continues from).
    The checkpoint records the sha256 of each split, the command and, measured after training
    on the dataset's test split, the test NLL (what an export's model card shows).
    Under torchrun (or with --nproc) every process trains its share of each batch with
    DistributedDataParallel and rank 0 alone writes.
    """
    own = {k: options.pop(k) for k in OWN_OPTIONS}
    own["categories"] = own["categories"] if ctx.get_parameter_source("categories") is not ParameterSource.DEFAULT \
        else None  # None: not given (2 for --images)
    sources = [name for name, given in (("--dataset", dataset), ("--images", own["images_path"]),
                                        ("--table", own["table_path"])) if given]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --dataset NAME, --images PATH or --table PATH"
                               + (f" (got {' and '.join(sources)})" if sources else ""))
    if own["table_path"] and perturb is not None:
        raise click.UsageError("--perturb replaces values by levels 0..K-1; a --table holds real values")
    if nproc is not None:
        launch_torchrun(ctx, nproc, options["device"], backend, out)
    TrainingOptions(device=options["device"])  # a ConfigError for a device name torch cannot parse
    with distributed.session(options["device"] or default_device(), backend) as world:
        with locked_run(out, force):  # rank 0's lock: a second run on the same --out stops here, before any work
            _train(ctx, world, model_name, dataset, data_path, download, settings, out, perturb, resume, log_to,
                   options, own)


def launch_torchrun(ctx, nproc: int, device, backend, out) -> None:
    """Run this command (less --nproc) in ``nproc`` processes under torchrun, then exit with its outcome
    (one line naming the rank that failed; app/torchrun.py)."""
    from densreg.app.torchrun import check_launch, run_torchrun

    if distributed.launched():
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave it out")
    if ARGV_KEY not in ctx.meta:
        raise ConfigError("--nproc needs the densreg command line (run `densreg train ... --nproc N`)")
    check_launch(device, backend, nproc)
    command = distributed.torchrun_command(nproc, distributed.without_option(ctx.meta[ARGV_KEY], "--nproc"))
    click.echo(f"training with torchrun: {shlex.join(command)}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    debug = (ctx.obj or {}).get("debug") or os.environ.get("DENSREG_DEBUG") == "1"
    run_torchrun(command, run_paths(out).state, debug)
    ctx.exit(0)


def _train(ctx, world, model_name, dataset, data_path, download, settings, out, perturb, resume, log_to, options,
           own):
    torch.manual_seed(options["seed"])
    data = None if dataset else own_training_data(own, options["seed"])
    event_shape, categories = ((data.transform.event_shape, data.transform.num_categories) if data else
                               (api.get_dataset(dataset).event_shape, api.get_dataset(dataset).num_categories))
    config = parse_set_options(settings)
    if resume:  # the interrupted run's model config, unless --set says otherwise (fit checks they agree)
        config = {**resumed_config(out), **config}
        perturb = resumed_perturbation(out, perturb)
    model = api.create_model(model_name, event_shape, categories, **config)
    given = {k: v for k, v in options.items()
             if k != "seed" and ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if log_to:
        given["log_to"] = log_to
    if not model.closed_form:
        given["seed"] = options["seed"]  # --seed also fixes the shuffling order of gradient training
    if data is not None:
        train_images, valid_images = torch.from_numpy(data.train), as_tensor(data.valid)
        recorded, source = {}, data.transform.source
        if world.leader:
            click.echo(f"read {data.summary}", err=True)
    else:
        with distributed.leader_first():  # one download into the shared cache
            train_images = api.load_split(dataset, "train", data_path, download)
        valid_images = api.load_split(dataset, "valid", data_path) if "valid" in api.get_dataset(dataset).splits \
            else None
        recorded = {"dataset": dataset, "dataset_sha256": {"train": split_sha256(train_images),
                                                           **({"valid": split_sha256(valid_images)}
                                                              if valid_images is not None else {})}}
        source = dataset
    if ARGV_KEY in ctx.meta:  # the command as given (a model card's training command)
        recorded["command"] = shlex.join(["densreg", *ctx.meta[ARGV_KEY]])
    if perturb is not None:
        train_images, valid_images = perturbed(train_images, valid_images, perturb, categories, options["seed"])
        recorded["perturb"] = perturb
    if world.leader:
        processes = f" in {world.size} processes" if world.size > 1 else ""
        click.echo(f"training {model_name} on {source} ({len(train_images)} {'rows' if own['table_path'] else 'images'}"
                   + (f", perturbed at rate {perturb}" if perturb is not None else "") + f"){processes}", err=True)
    name = api.model_spec(model_name).qualified_name  # what the checkpoint records
    metrics = fit(model, train_images, valid_images, out=out, resume=resume, progress=True, name=name,
                  metrics=recorded, transform=data.transform.to_dict() if data else None, **given)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    if world.leader:
        click.echo(f"wrote {out} ({shown})")
        if dataset and "test" in api.get_dataset(dataset).splits and Path(out).is_file():
            record_test_nll(model, out, dataset, data_path)


def record_test_nll(model, out, dataset: str, data_path) -> None:
    """Measure the trained model's NLL on the dataset's test split and add it to the checkpoint's metrics
    (``test_nll_nats``, ``test_split``, ``test_images``, and the split's sha256): what a model card reports."""
    test = api.load_split(dataset, "test", data_path)
    nll = evaluate(model, test)["nll_nats"]
    previous = parse_info(out, read_header(out)[1]).metrics.get("dataset_sha256") or {}
    record_metrics(out, {"test_nll_nats": nll, "test_split": "test", "test_images": len(test),
                         "dataset_sha256": {**previous, "test": split_sha256(test)}})
    click.echo(f"test NLL {nll:.4f} nats per image on the {len(test)} images of {dataset}'s test split "
               f"(recorded in {out})", err=True)


def own_training_data(own: dict, seed: int):
    """The OwnData (app/own_data.py) of ``--images`` or ``--table`` and their options."""
    from densreg.app.own_data import own_images, own_table

    images_only = ("shape", "resize", "categories", "labels_from_folders", "valid_images")
    if own["table_path"] is not None:
        given = [f"--{k.replace('_', '-')}" for k in images_only if own[k]]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --images, not --table")
        columns = own["columns"].split(",") if own["columns"] else None
        return own_table(own["table_path"], columns, own["drop_invalid"], own["valid_fraction"], seed)
    if own["columns"] or own["drop_invalid"]:
        raise click.UsageError("--columns and --drop-invalid apply to --table, not --images")
    return own_images(own["images_path"], own["shape"], own["categories"] or 2, own["resize"],
                      own["labels_from_folders"], own["valid_fraction"], own["valid_images"], seed)


def as_tensor(array):
    return None if array is None else torch.from_numpy(array)


def resumed_info(out):
    """The SavedModelInfo of the resume state of ``out``; None when there is no readable state (fit
    then says why)."""
    state = run_paths(out).state
    try:
        return parse_info(state, read_header(state)[1])
    except (CheckpointError, OSError, ValueError):
        return None


def resumed_config(out) -> dict:
    """The constructor config (less event shape and K, which the dataset gives) that the resume
    state of ``out`` was written with; {} when there is none."""
    info = resumed_info(out)
    config = info.config if info is not None else {}
    return {k: v for k, v in config.items() if k not in ("event_shape", "num_categories")}


def resumed_perturbation(out, perturb: float | None) -> float | None:
    """The --perturb rate a resumed run continues with: the interrupted run's, which its resume state
    records (a clean run records none). ConfigError when ``perturb`` asks for another: the kept best
    weights and the epochs done were trained on the data the run started with."""
    info = resumed_info(out)
    if info is None:
        return perturb
    recorded = (info.metrics or {}).get("perturb")
    if perturb is not None and perturb != recorded:
        started = f"at --perturb {recorded}" if recorded is not None else "on clean data (no --perturb)"
        raise ConfigError(f"cannot resume {out} with --perturb {perturb}: the run started {started}, and its "
                          "epochs and best weights come from that data; resume without --perturb, or start a new "
                          "run with another --out")
    return recorded


def perturbed(train_images, valid_images, rate, num_categories, seed):
    """The train and valid splits with Ren et al.'s perturbation (densreg.app.ood.perturb_images)."""
    train_images = torch.from_numpy(perturb_images(train_images.numpy(), rate, num_categories, seed))
    if valid_images is not None:
        valid_images = torch.from_numpy(perturb_images(valid_images.numpy(), rate, num_categories, seed + 1))
    return train_images, valid_images


@hookimpl
def register_commands(cli):
    cli.add_command(train)
