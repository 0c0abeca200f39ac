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

from .common import (ARGV_KEY, backend_option, data_options, force_option, parse_set_options, set_option,
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


@click.command()
@click.argument("model_name", metavar="MODEL")
@data_options
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
    """Fit MODEL on a dataset's train split and write a checkpoint.

    Gradient-trained models also write OUT stem + .log.jsonl (one JSON line per epoch;
    --log-to sends the same values to TensorBoard too)
    and OUT stem + .last.safetensors (the state --resume continues from).
    The checkpoint records the sha256 of each split, the command and, measured after training
    on the dataset's test split, the test NLL (what an export's model card shows).
    Under torchrun (or with --nproc) every process trains its share of each batch with
    DistributedDataParallel and rank 0 alone writes.
    """
    if nproc is not None:
        launch_torchrun(ctx, nproc, options["device"], backend, out)
    TrainingOptions(device=options["device"])  # a ConfigError for a device name torch cannot parse
    with distributed.session(options["device"] or default_device(), backend) as world:
        with locked_run(out, force):  # rank 0's lock: a second run on the same --out stops here, before any work
            _train(ctx, world, model_name, dataset, data_path, download, settings, out, perturb, resume, log_to,
                   options)


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


def _train(ctx, world, model_name, dataset, data_path, download, settings, out, perturb, resume, log_to, options):
    torch.manual_seed(options["seed"])
    ds = api.get_dataset(dataset)
    config = parse_set_options(settings)
    if resume:  # the interrupted run's model config, unless --set says otherwise (fit checks they agree)
        config = {**resumed_config(out), **config}
        perturb = resumed_perturbation(out, perturb)
    model = api.create_model(model_name, ds.event_shape, ds.num_categories, **config)
    given = {k: v for k, v in options.items()
             if k != "seed" and ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    if log_to:
        given["log_to"] = log_to
    if not model.closed_form:
        given["seed"] = options["seed"]  # --seed also fixes the shuffling order of gradient training
    with distributed.leader_first():  # one download into the shared cache
        train_images = api.load_split(dataset, "train", data_path, download)
    valid_images = api.load_split(dataset, "valid", data_path) if "valid" in ds.splits else None
    recorded = {"dataset": dataset, "dataset_sha256": {"train": split_sha256(train_images),
                                                       **({"valid": split_sha256(valid_images)}
                                                          if valid_images is not None else {})}}
    if ARGV_KEY in ctx.meta:  # the command as given (a model card's training command)
        recorded["command"] = shlex.join(["densreg", *ctx.meta[ARGV_KEY]])
    if perturb is not None:
        train_images, valid_images = perturbed(train_images, valid_images, perturb, ds.num_categories, options["seed"])
        recorded["perturb"] = perturb
    if world.leader:
        processes = f" in {world.size} processes" if world.size > 1 else ""
        click.echo(f"training {model_name} on {dataset} ({len(train_images)} images"
                   + (f", perturbed at rate {perturb}" if perturb is not None else "") + f"){processes}", err=True)
    name = api.model_spec(model_name).qualified_name  # what the checkpoint records
    metrics = fit(model, train_images, valid_images, out=out, resume=resume, progress=True, name=name,
                  metrics=recorded, **given)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    if world.leader:
        click.echo(f"wrote {out} ({shown})")
        if "test" in ds.splits and Path(out).is_file():
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
