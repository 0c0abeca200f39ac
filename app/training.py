"""Fitting a model: closed form where the model has one, gradient training otherwise.

Gradient training (``fit`` with a model whose ``closed_form`` is False) minimises the
mean NLL in nats per image with Adam. With ``out`` (the checkpoint path, e.g.
``run.safetensors``) it writes, each atomically:

- ``out`` itself whenever the validation NLL improves (the best weights so far);
- ``run.log.jsonl``: one JSON line per epoch (epoch, train_nll, valid_nll, seconds,
  images (training images in the epoch), images_per_s, lr, processes);
- the experiment logs that ``log_to`` names (e.g. ``["tensorboard:runs/a"]``, experiment_log.py):
  each epoch's log entry once ``run.log.jsonl`` holds it (also when ``out`` is None);
- ``run.last.safetensors`` after every epoch: the resume state (model weights, Adam's
  state tensors, best weights, RNG states as tensors; epoch, best-so-far, options and
  the log as JSON metadata). It is also a loadable checkpoint. ``resume=True`` continues
  from it, so an interrupted run (even by SIGKILL) loses at most the epoch in progress;
  options not given again (epochs, batch_size, lr, ...) are those of the interrupted run,
  while ``max_minutes`` always counts from the start of the current call.

Under torchrun (a process group joined, see distributed.py) the same call trains with
DistributedDataParallel: every rank draws the same seeded permutation of the training set
and takes its own part of each global batch of ``batch_size`` images (``split_batch``), so
the ranks see disjoint shards of every epoch and the global batch stays ``batch_size``;
each rank's loss is scaled so that DDP's gradient average is the gradient of the mean over
the global batch. Train and valid NLL are exact sums over all ranks. Only rank 0 writes
files or prints; a resume state is read by rank 0 and sent to the others, so a run may
resume on a different number of processes.

While it writes, fit holds the output lock of each of these files (registry/locking.py):
a second run on the same ``out`` fails at once with a DataError instead of overwriting
the first one's files, and ``.NAME.*.tmp`` files left by a killed run are removed.
"""

from __future__ import annotations

import time

import torch

from densreg.registry import ConfigError, DataError, save_checkpoint

from . import distributed
from .evaluation import evaluate
from .experiment_log import check_available, experiment_logs
from .gradient_run import GradientRun
from .performance import using_threads
from .run_files import locked_run
from .training_options import TrainingOptions
from .training_protocol import checkpoint_name, fit_closed_form, fits_in_closed_form


def fit(model, train: torch.Tensor, valid: torch.Tensor | None = None, *, out=None, resume: bool = False,
        progress: bool = False, name: str | None = None, metrics: dict | None = None, log_to=(),
        transform: dict | None = None, **options) -> dict:
    """Fit ``model`` to int64 images (N, C, H, W), or float values for a continuous model; return metrics
    (NLL in nats per image; for real values a negative log density).

    ``options`` are TrainingOptions fields; those not given take its defaults (or, with
    ``resume``, the interrupted run's). Closed-form models take none. ``out``: the checkpoint
    path (None: write nothing); fit is its only writer. ``resume``: continue the run of ``out``.
    ``progress``: a line per epoch on stderr, and a tqdm bar when stderr is a terminal.
    ``name``: the registry name written in checkpoints (default the model's ``registry_name``).
    ``metrics``: extra entries recorded in the checkpoint's metrics (e.g. the dataset name).
    ``transform``: the preprocessing of the user's own data (registry/transforms.py), recorded in the
    checkpoints.
    ``log_to``: experiment-log specs (``SCHEME:DIR``, experiment_log.py) that get each epoch's log entry.
    Returns train_nll_nats, valid_nll_nats, epochs, best_epoch, stopped, seconds (this call).
    """
    start = time.perf_counter()
    if len(train) == 0:  # nothing to fit, and an empty batch would fail deep inside the model
        raise DataError("the train split holds no images; there is nothing to fit")
    name = name or checkpoint_name(model)
    with using_threads(model, options.get("threads")):
        return _fit(model, train, valid, start, out, resume, progress, name, metrics, list(log_to), options,
                    transform)


def _fit(model, train, valid, start, out, resume, progress, name, metrics, log_to, options, transform) -> dict:
    if fits_in_closed_form(model):
        options = {k: v for k, v in options.items() if k != "threads"}
        if options or resume or log_to:
            given = ", ".join(f"{k} (--{k.replace('_', '-')})"
                              for k in (sorted(options) or ["resume"] * resume) + ["log_to"] * bool(log_to))
            raise ConfigError(f"{name} fits in closed form by counting; the training options {given} only apply "
                              "to gradient-trained models")
        with locked_run(out):
            result = fit_closed_form(model, train)
            if valid is not None and len(valid):
                result["valid_nll_nats"] = evaluate(model, valid, threads=torch.get_num_threads())["nll_nats"]
            result["seconds"] = time.perf_counter() - start
            if out is not None and distributed.world().leader:  # under torchrun every rank counts, rank 0 writes
                save_checkpoint(out, model, name, metrics={**result, **(metrics or {})}, transform=transform)
        return result
    if resume and out is None:
        raise ConfigError("resume needs out, the checkpoint path of the run")
    given = {k: v for k, v in options.items() if v is not None}
    check_available(log_to)  # a wrong spec or a missing package before any work
    run = GradientRun(model, train, valid, TrainingOptions().replace(**given), given=set(given), out=out,
                      progress=progress, name=name, extra_metrics=metrics, transform=transform)
    with locked_run(out), experiment_logs(log_to if distributed.world().leader else ()) as run.loggers:
        return run.run(start, resume)
