"""Fitting a model: closed form where the model has one, gradient training otherwise.

Gradient training (``fit`` with a model whose ``closed_form`` is False) minimises the
mean NLL in nats per image with Adam. With ``out`` (the checkpoint path, e.g.
``run.safetensors``) it writes, each atomically:

- ``out`` itself whenever the validation NLL improves (the best weights so far);
- ``run.log.jsonl``: one JSON line per epoch (epoch, train_nll, valid_nll, seconds,
  images (training images in the epoch), images_per_s, lr, processes);
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

import dataclasses
import json
import math
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from densreg.registry import CheckpointError, ConfigError, atomic_write_bytes, save_checkpoint
from densreg.registry.checkpoint import read_tensors
from densreg.registry.locking import output_lock, remove_orphans
from densreg.registry.saved import parse_json

from . import distributed
from .evaluation import evaluate
from .performance import PRECISIONS, CompileTimer, autocast, compiled_log_prob, eval_batch_size, using_threads


@dataclass
class TrainingOptions:
    """Hyperparameters of a gradient-training run; ``densreg train`` shows these defaults.

    epochs: most passes over the training set; batch_size: images per Adam step; lr: Adam's
    learning rate, multiplied by lr_decay after every epoch; weight_decay: Adam's L2 term;
    clip_grad: maximum gradient norm (None: no clipping); patience: epochs without a better
    validation NLL before stopping; max_minutes: stop after the epoch that crosses this budget
    (counted per call, None: no budget); seed: shuffling order; device: torch device (None:
    cuda if available, else cpu); precision: "float32", or "bf16" (the forward pass under
    bf16 autocast, weights and Adam in float32); threads: torch threads (None: the measured
    default of the model kind, see densreg.app.performance); compile: torch.compile the
    log-likelihood (its compile time is reported as compile_seconds); ema: keep an exponential
    moving average of the weights, moved toward them by (1 - ema) after every Adam step (e.g.
    0.999); validation, the checkpoint and the fitted model then use the averaged weights (None: off).
    """

    epochs: int = 20
    batch_size: int = 100
    lr: float = 5e-3
    lr_decay: float = 0.95
    weight_decay: float = 0.0
    clip_grad: float | None = None
    patience: int = 5
    max_minutes: float | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "float32"
    threads: int | None = None
    compile: bool = False
    ema: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the first option out of range."""
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        need(positive_int(self.epochs), "epochs", ">= 1")
        need(positive_int(self.batch_size), "batch_size", ">= 1")
        need(positive_int(self.patience), "patience", ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(0 < self.lr_decay <= 1, "lr_decay", "in (0, 1]")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "> 0")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "> 0")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(self.threads is None or positive_int(self.threads), "threads", ">= 1")
        need(self.ema is None or 0 <= self.ema < 1, "ema", "in [0, 1)")
        need(self.device is None or is_device(self.device), "device", "a torch device such as cpu, cuda or cuda:1")

    def replace(self, **changes) -> "TrainingOptions":
        """A checked copy with ``changes``; unknown names raise ConfigError listing the accepted ones."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}; "
                              f"accepted: {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)


INIT_FROM_DATA = 10000  # training images given to a model's optional init_from_data before the first epoch

# what a resumed run takes from the interrupted one unless given again (max_minutes is per call)
INHERITED = ("epochs", "batch_size", "lr", "weight_decay", "clip_grad", "patience", "lr_decay", "precision", "ema")


class RunPaths(NamedTuple):
    """The files of a run whose checkpoint is ``checkpoint`` (``STEM.safetensors``)."""

    checkpoint: Path  # the best weights so far
    log: Path  # STEM.log.jsonl, one JSON line per epoch
    state: Path  # STEM.last.safetensors, what --resume continues from


def run_paths(out) -> RunPaths:
    out = Path(out)
    return RunPaths(out, out.with_name(out.stem + ".log.jsonl"), out.with_name(out.stem + ".last.safetensors"))


@contextmanager
def locked_run(out):
    """Hold the output lock of every file of the run of ``out`` (nothing when ``out`` is None, or
    on a rank other than 0 under torchrun: rank 0 alone writes).

    A second run on the same files raises DataError at once; temporary files that a killed
    run left behind are removed once the lock is held.
    """
    with ExitStack() as stack:
        if out is not None and distributed.world().leader:
            for path in run_paths(out):
                stack.enter_context(output_lock(path))
            for path in run_paths(out):
                remove_orphans(path)
        yield


def is_device(name) -> bool:
    """Whether torch can parse ``name`` as a device (whether it exists here is checked when used)."""
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fit(model, train: torch.Tensor, valid: torch.Tensor | None = None, *, out=None, resume: bool = False,
        progress: bool = False, name: str | None = None, metrics: dict | None = None, **options) -> dict:
    """Fit ``model`` to int64 images (N, C, H, W), or float values for a continuous model; return metrics
    (NLL in nats per image; for real values a negative log density).

    ``options`` are TrainingOptions fields; those not given take its defaults (or, with
    ``resume``, the interrupted run's). Closed-form models take none. ``out``: the checkpoint
    path (None: write nothing); fit is its only writer. ``resume``: continue the run of ``out``.
    ``progress``: a line per epoch on stderr, and a tqdm bar when stderr is a terminal.
    ``name``: the registry name written in checkpoints (default the model's ``registry_name``).
    ``metrics``: extra entries recorded in the checkpoint's metrics (e.g. the dataset name).
    Returns train_nll_nats, valid_nll_nats, epochs, best_epoch, stopped, seconds (this call).
    """
    start = time.perf_counter()
    name = name or getattr(model, "registry_name", None) or type(model).__name__.lower()
    with using_threads(model, options.get("threads")):
        return _fit(model, train, valid, start, out, resume, progress, name, metrics, options)


def _fit(model, train, valid, start, out, resume, progress, name, metrics, options) -> dict:
    if model.closed_form:
        options = {k: v for k, v in options.items() if k != "threads"}
        if options or resume:
            given = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in sorted(options) or ["resume"])
            raise ConfigError(f"{name} fits in closed form by counting; the training options {given} only apply "
                              "to gradient-trained models")
        with locked_run(out):
            result = dict(model.fit_closed_form(train))
            if valid is not None and len(valid):
                result["valid_nll_nats"] = evaluate(model, valid, threads=torch.get_num_threads())["nll_nats"]
            result["seconds"] = time.perf_counter() - start
            if out is not None and distributed.world().leader:  # under torchrun every rank counts, rank 0 writes
                save_checkpoint(out, model, name, metrics={**result, **(metrics or {})})
        return result
    if resume and out is None:
        raise ConfigError("resume needs out, the checkpoint path of the run")
    given = {k: v for k, v in options.items() if v is not None}
    run = GradientRun(model, train, valid, TrainingOptions().replace(**given), given=set(given), out=out,
                      progress=progress, name=name, extra_metrics=metrics)
    with locked_run(out):
        return run.run(start, resume)


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam's state as flat tensors ``optim.{param index}.{key}`` and JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def _check_optimizer_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    """ValueError unless each saved Adam moment ``optim.I.exp_avg[_sq]`` has the shape of parameter I."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(shapes):
            raise ValueError(f"optimizer tensor {name!r} names no parameter of the model")
        if parts[2] in ("exp_avg", "exp_avg_sq") and tuple(value.shape) != shapes[int(parts[1])]:
            raise ValueError(f"optimizer tensor {name!r} has shape {list(value.shape)}, expected "
                             f"{list(shapes[int(parts[1])])}")


def _averaged_weights(model, tensors: dict[str, torch.Tensor], device) -> list[torch.Tensor] | None:
    """The moving-average weights ``ema.I`` of a resume state, one per parameter I (None: not averaged)."""
    if "ema.0" not in tensors:
        return None
    averaged = [tensors[f"ema.{i}"].to(device) for i, _ in enumerate(model.parameters())]
    for i, (weight, param) in enumerate(zip(averaged, model.parameters())):
        if weight.shape != param.shape:
            raise ValueError(f"averaged weight ema.{i} has shape {list(weight.shape)}, expected {list(param.shape)}")
    return averaged


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class GradientRun:
    """One (possibly resumed) gradient-training run; see ``fit``."""

    def __init__(self, model, train, valid, opts: TrainingOptions, given: set = frozenset(), out=None,
                 progress: bool = False, name: str = "", extra_metrics: dict | None = None) -> None:
        self.opts = opts
        self.given = given
        self.world = distributed.world()
        self.progress = progress and self.world.leader
        self.device = distributed.rank_device(opts.device or default_device(), self.world.local_rank)
        self.model = model.to(self.device)
        self.name = name
        self.extra_metrics = dict(extra_metrics or {})
        small = 2 <= model.num_categories <= 256  # keep the data compact (uint8) on the device
        dtype = torch.float32 if not model.family.discrete else torch.uint8 if small else torch.int64
        self.train = train.to(dtype).to(self.device)
        self.valid = valid.to(dtype) if valid is not None and len(valid) else None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.shuffle = torch.Generator().manual_seed(int(opts.seed))
        self.epoch = 0  # epochs completed
        self.best = {"valid_nll_nats": math.inf, "epoch": 0, "bad_epochs": 0}
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.log: list[dict] = []
        self.paths = run_paths(out) if out is not None else None
        self.averaged: list[torch.Tensor] | None = None  # the moving average of the parameters (option ema)

    # -- persistence ----------------------------------------------------------
    def save_state(self) -> None:
        optim_tensors, groups = _optimizer_tensors(self.optimizer)
        tensors = {**optim_tensors, **{f"best.{k}": v for k, v in self.best_state.items()},
                   "rng.shuffle": self.shuffle.get_state(), "rng.torch": torch.get_rng_state()}
        tensors.update({f"ema.{i}": weight for i, weight in enumerate(self.averaged or [])})
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        resume = {"epoch": self.epoch, "best": self.best, "log": self.log, "param_groups": groups,
                  "options": {**{k: v for k, v in dataclasses.asdict(self.opts).items() if k != "device"},
                              "out": str(self.paths.checkpoint), "name": self.name}}
        save_checkpoint(self.paths.state, self.model, self.name, metrics=self.metrics(), extra={"resume": resume},
                        extra_tensors=tensors)
        text = "".join(json.dumps(entry) + "\n" for entry in self.log)
        atomic_write_bytes(self.paths.log, text.encode())

    def load_state(self) -> None:
        path = self.paths.state
        with distributed.leader_file(path) as readable:  # every rank continues from rank 0's file
            if not readable.is_file():
                raise CheckpointError(f"cannot resume: no resume state {path} (was the run started with this --out?)")
            tensors, metadata = read_tensors(readable)
        try:
            saved_config = parse_json(metadata["config"], "config")
            resume = parse_json(metadata["extra"], "extra")["resume"]
            epoch, best, log = int(resume["epoch"]), dict(resume["best"]), list(resume["log"])
            groups, saved_options = resume["param_groups"], dict(resume["options"])
            float(best["valid_nll_nats"]), int(best["epoch"]), int(best["bad_epochs"])
        except (KeyError, ValueError, TypeError) as exc:
            what = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise CheckpointError(f"{path} is not a usable densreg resume state ({what}); expected the "
                                  ".last.safetensors file densreg train writes beside --out") from exc
        if saved_config != self.model.config():
            raise ConfigError(f"cannot resume: {path} was written for config {saved_config}, "
                              f"but this run's model has config {self.model.config()}")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        try:
            self.model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not match the model: {exc}") from exc
        try:
            _check_optimizer_tensors(self.model, tensors)
            _load_optimizer(self.optimizer, {k: v.to(self.device) if not k.endswith(".step") else v
                                             for k, v in tensors.items()}, groups)
            self.best_state = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
            self.model.load_state_dict(self.best_state, strict=True)  # checks the best weights' names and shapes
            self.model.load_state_dict(model_state, strict=True)
            self.averaged = _averaged_weights(self.model, tensors, self.device)
            self.shuffle.set_state(tensors["rng.shuffle"])
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            what = f"lacks the tensor {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise CheckpointError(f"{path} holds a damaged resume state ({what}); start again without --resume "
                                  "or restore the file") from exc
        self.epoch, self.best, self.log = epoch, best, log
        inherited = {key: saved_options[key] for key in INHERITED  # not given again: as interrupted
                     if key not in self.given and key in saved_options}
        self.opts = self.opts.replace(**inherited)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.opts.weight_decay

    # -- training -------------------------------------------------------------
    def metrics(self) -> dict:
        last = self.log[-1] if self.log else {}
        best_entry = next((e for e in self.log if e["epoch"] == self.best["epoch"]), last)
        timer = getattr(self, "log_prob", None)
        compiled = {"compile_seconds": timer.seconds} if isinstance(timer, CompileTimer) else {}
        return {"train_nll_nats": best_entry.get("train_nll", math.nan),
                "valid_nll_nats": best_entry.get("valid_nll", math.nan),
                "epochs": self.epoch, "best_epoch": self.best["epoch"], **compiled,
                **({"ema": self.opts.ema} if self.averaged is not None else {}), **self.extra_metrics}

    @contextmanager
    def averaged_weights_in_model(self):
        """For the duration, the model holds the moving-average weights (nothing changes without ema)."""
        if self.averaged is None:
            yield
            return
        params = [p.detach() for p in self.model.parameters()]
        live = [p.clone() for p in params]
        for param, weight in zip(params, self.averaged):
            param.copy_(weight)
        try:
            yield
        finally:
            for param, weight in zip(params, live):
                param.copy_(weight)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training set; returns (mean train NLL, images/s)."""
        model, opts = self.model, self.opts
        model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = opts.lr * opts.lr_decay ** self.epoch
        order = torch.randperm(len(self.train), generator=self.shuffle).to(self.device)  # the same on every rank
        batches = order.split(opts.batch_size)
        total, seen, start = 0.0, 0, time.perf_counter()
        weights = [p.detach() for p in model.parameters()]  # views: the moving average follows them in place
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", unit="batch", leave=False,
                   disable=None if self.progress else True)  # None: no bar unless stderr is a terminal
        for batch in bar:
            index = distributed.split_batch(batch, self.world)
            part = index if len(index) else batch[:1]  # an empty part still joins DDP's all-reduce, weighted 0
            with autocast(opts.precision, self.device):
                values = self.train[part] if not model.family.discrete else self.train[part].long()
                nll_sum = -self.log_prob(values).float().sum()
            # DDP averages gradients over ranks: scaled so the result is d(mean NLL over the global batch)
            loss = nll_sum * (self.world.size / len(batch) if len(index) else 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            self.optimizer.step()
            if self.averaged is not None:
                torch._foreach_lerp_(self.averaged, weights, 1 - opts.ema)
            total += float(nll_sum.detach()) if len(index) else 0.0
            seen += len(index)
            rate = seen * self.world.size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(nll=f"{total / max(seen, 1):.3f}", img_s=f"{rate:.0f}")
        bar.close()
        total, seen = distributed.all_sum(total, seen)
        if not math.isfinite(total):
            raise ConfigError(f"training diverged (NLL {total / seen}) in epoch {self.epoch + 1}; lower --lr "
                              "or set --clip-grad")
        return total / seen, seen / max(time.perf_counter() - start, 1e-9)

    def run(self, start: float, resume: bool = False) -> dict:
        if resume:
            self.load_state()
        elif callable(getattr(self.model, "init_from_data", None)):  # e.g. rnade's standardization
            self.model.init_from_data(self.train[:INIT_FROM_DATA])
        self.log_prob = distributed.log_prob_function(self.model, self.device)
        if self.opts.compile:
            self.log_prob = CompileTimer(compiled_log_prob(self.model, self.device, self.log_prob))
        if self.opts.ema is not None and self.averaged is None:  # a new run, or one resumed without averaging
            self.averaged = [p.detach().clone() for p in self.model.parameters()]
        opts = self.opts
        stopped = "epochs"
        while self.epoch < opts.epochs:
            if self.best["bad_epochs"] >= opts.patience:
                stopped = "patience"
                break
            epoch_start = time.perf_counter()
            train_nll, rate = self.train_epoch()
            with self.averaged_weights_in_model():  # validation and the best weights: the averaged ones
                self.model.eval()
                # on fit's threads (using_threads above), not evaluate's own default
                valid_nll = evaluate(self.model, self.valid, eval_batch_size(self.device, self.model),
                                     across_ranks=True, threads=torch.get_num_threads())["nll_nats"] \
                    if self.valid is not None else train_nll
                self.epoch += 1
                entry = {"epoch": self.epoch, "train_nll": train_nll, "valid_nll": valid_nll,
                         "seconds": time.perf_counter() - epoch_start, "images": len(self.train), "images_per_s": rate,
                         "lr": self.optimizer.param_groups[0]["lr"], "processes": self.world.size}
                self.log.append(entry)
                if valid_nll < self.best["valid_nll_nats"]:
                    self.best = {"valid_nll_nats": valid_nll, "epoch": self.epoch, "bad_epochs": 0}
                    self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    if self.paths and self.world.leader:
                        save_checkpoint(self.paths.checkpoint, self.model, self.name, metrics=self.metrics())
                else:
                    self.best["bad_epochs"] += 1
            if self.paths and self.world.leader:
                self.save_state()
            if self.progress:
                tqdm.write(f"epoch {self.epoch}: train {train_nll:.4f} valid {valid_nll:.4f} nats "
                           f"({entry['seconds']:.1f} s, {rate:.0f} images/s)", file=sys.stderr)
            over_budget = opts.max_minutes is not None and time.perf_counter() - start > 60 * opts.max_minutes
            if distributed.leader_decides(over_budget):  # clocks differ: rank 0's decides for all
                stopped = "max_minutes"
                break
        else:
            if self.best["bad_epochs"] >= opts.patience:
                stopped = "patience"
        self.model.load_state_dict(self.best_state)
        self.model.eval()
        return {**self.metrics(), "stopped": stopped, "seconds": time.perf_counter() - start}
