"""Fitting a model: closed form where the model has one, gradient training otherwise.

Gradient training (``fit`` with a model whose ``closed_form`` is False) minimises the
mean NLL in nats per image with Adam. With ``out`` (the checkpoint path, e.g.
``run.safetensors``) it writes, each atomically:

- ``out`` itself whenever the validation NLL improves (the best weights so far);
- ``run.log.jsonl``: one JSON line per epoch (epoch, train_nll, valid_nll, seconds,
  images (training images in the epoch), images_per_s, lr);
- ``run.last.safetensors`` after every epoch: the resume state (model weights, Adam's
  state tensors, best weights, RNG states as tensors; epoch, best-so-far, options and
  the log as JSON metadata). It is also a loadable checkpoint. ``resume=True`` continues
  from it, so an interrupted run (even by SIGKILL) loses at most the epoch in progress;
  options not given again (epochs, batch_size, lr, ...) are those of the interrupted run,
  while ``max_minutes`` always counts from the start of the current call.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from densreg.registry import CheckpointError, ConfigError, atomic_write_bytes, save_checkpoint
from densreg.registry.checkpoint import read_tensors

from .evaluation import evaluate

DEFAULTS = {
    "epochs": 20,
    "batch_size": 100,
    "lr": 5e-3,
    "weight_decay": 0.0,
    "clip_grad": None,
    "patience": 5,
    "seed": 0,
    "device": None,
    "out": None,
    "resume": False,
    "max_minutes": None,
    "lr_decay": 0.95,
    "progress": False,
    "name": None,
}


# what a resumed run takes from the interrupted one unless given again (max_minutes is per call)
INHERITED = ("epochs", "batch_size", "lr", "weight_decay", "clip_grad", "patience", "lr_decay")


def run_paths(out) -> tuple[Path, Path, Path]:
    """Checkpoint path -> (checkpoint, log ``STEM.log.jsonl``, resume state ``STEM.last.safetensors``)."""
    out = Path(out)
    return out, out.with_name(out.stem + ".log.jsonl"), out.with_name(out.stem + ".last.safetensors")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fit(model, train: torch.Tensor, valid: torch.Tensor | None = None, **options) -> dict:
    """Fit ``model`` to int64 images (N, C, H, W); return metrics (NLL in nats per image).

    Closed-form models take no options. Otherwise the options (defaults in ``DEFAULTS``)
    are: epochs, batch_size, lr, weight_decay (Adam's L2 term), clip_grad (max gradient
    norm, or None), patience (epochs without a better validation NLL before stopping),
    seed (shuffling order), device, out (checkpoint path, or None to write nothing),
    resume, max_minutes (stop after the epoch that crosses it), lr_decay (learning rate
    multiplied by this after every epoch), progress (a line per epoch on stderr, and a tqdm
    bar per epoch when stderr is a terminal), name (the registry name
    written in checkpoints; default the model's ``registry_name``).
    Metrics: train_nll_nats, valid_nll_nats, epochs, best_epoch, seconds (this call).
    """
    start = time.perf_counter()
    if model.closed_form:
        if options:
            raise ConfigError(f"{type(model).__name__} fits in closed form; it takes no training "
                              f"options ({', '.join(sorted(options))})")
        metrics = dict(model.fit_closed_form(train))
        if valid is not None and len(valid):
            metrics["valid_nll_nats"] = evaluate(model, valid)["nll_nats"]
        metrics["seconds"] = time.perf_counter() - start
        return metrics
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}; "
                          f"accepted: {', '.join(DEFAULTS)}")
    given = {k: v for k, v in options.items() if v is not None}
    opts = {**DEFAULTS, **given}
    check_options(opts)
    return GradientRun(model, train, valid, opts, given=set(given)).run(start)


def check_options(opts: dict) -> None:
    def need(ok: bool, text: str) -> None:
        if not ok:
            raise ConfigError(text)

    need(isinstance(opts["epochs"], int) and opts["epochs"] >= 1, f"epochs must be >= 1, got {opts['epochs']!r}")
    need(isinstance(opts["batch_size"], int) and opts["batch_size"] >= 1,
         f"batch_size must be >= 1, got {opts['batch_size']!r}")
    need(opts["lr"] > 0, f"lr must be > 0, got {opts['lr']!r}")
    need(opts["weight_decay"] >= 0, f"weight_decay must be >= 0, got {opts['weight_decay']!r}")
    need(opts["clip_grad"] is None or opts["clip_grad"] > 0, f"clip_grad must be > 0, got {opts['clip_grad']!r}")
    need(isinstance(opts["patience"], int) and opts["patience"] >= 1,
         f"patience must be >= 1, got {opts['patience']!r}")
    need(0 < opts["lr_decay"] <= 1, f"lr_decay must be in (0, 1], got {opts['lr_decay']!r}")
    need(opts["max_minutes"] is None or opts["max_minutes"] > 0,
         f"max_minutes must be > 0, got {opts['max_minutes']!r}")
    need(not opts["resume"] or opts["out"] is not None, "resume needs out, the checkpoint path of the run")


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam's state as flat tensors ``optim.{param index}.{key}`` and JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class GradientRun:
    """One (possibly resumed) gradient-training run; see ``fit``."""

    def __init__(self, model, train, valid, opts: dict, given: set = frozenset()) -> None:
        self.opts = opts
        self.given = given
        self.device = torch.device(opts["device"] or default_device())
        self.model = model.to(self.device)
        self.name = opts["name"] or getattr(model, "registry_name", None) or type(model).__name__.lower()
        small = model.num_categories <= 256  # keep the data compact (uint8) on the device
        dtype = torch.uint8 if small else torch.int64
        self.train = train.to(dtype).to(self.device)
        self.valid = valid.to(dtype) if valid is not None and len(valid) else None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
        self.shuffle = torch.Generator().manual_seed(int(opts["seed"]))
        self.epoch = 0  # epochs completed
        self.best = {"valid_nll_nats": math.inf, "epoch": 0, "bad_epochs": 0}
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.log: list[dict] = []
        self.paths = run_paths(opts["out"]) if opts["out"] is not None else None

    # -- persistence ----------------------------------------------------------
    def save_state(self) -> None:
        optim_tensors, groups = _optimizer_tensors(self.optimizer)
        tensors = {**optim_tensors, **{f"best.{k}": v for k, v in self.best_state.items()},
                   "rng.shuffle": self.shuffle.get_state(), "rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        resume = {"epoch": self.epoch, "best": self.best, "log": self.log, "param_groups": groups,
                  "options": {k: str(v) if k == "out" else v for k, v in self.opts.items()
                              if k not in ("progress", "resume", "device")}}
        save_checkpoint(self.paths[2], self.model, self.name, metrics=self.metrics(), extra={"resume": resume},
                        extra_tensors=tensors)
        text = "".join(json.dumps(entry) + "\n" for entry in self.log)
        atomic_write_bytes(self.paths[1], text.encode())

    def load_state(self) -> None:
        path = self.paths[2]
        if not path.is_file():
            raise CheckpointError(f"cannot resume: no resume state {path} (was the run started with this --out?)")
        tensors, metadata = read_tensors(path)
        try:
            resume = json.loads(metadata["extra"])["resume"]
            saved_config = json.loads(metadata["config"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a densreg resume state: {exc}") from exc
        if saved_config != self.model.config():
            raise ConfigError(f"cannot resume: {path} was written for config {saved_config}, "
                              f"but this run's model has config {self.model.config()}")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        try:
            self.model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not match the model: {exc}") from exc
        _load_optimizer(self.optimizer, {k: v.to(self.device) if not k.endswith(".step") else v
                                         for k, v in tensors.items()}, resume["param_groups"])
        self.best_state = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
        self.shuffle.set_state(tensors["rng.shuffle"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.epoch, self.best, self.log = int(resume["epoch"]), resume["best"], list(resume["log"])
        for key in INHERITED:  # options not given again are those of the interrupted run
            if key not in self.given and key in resume["options"]:
                self.opts[key] = resume["options"][key]
        check_options(self.opts)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.opts["weight_decay"]

    # -- training -------------------------------------------------------------
    def metrics(self) -> dict:
        last = self.log[-1] if self.log else {}
        best_entry = next((e for e in self.log if e["epoch"] == self.best["epoch"]), last)
        return {"train_nll_nats": best_entry.get("train_nll", math.nan),
                "valid_nll_nats": best_entry.get("valid_nll", math.nan),
                "epochs": self.epoch, "best_epoch": self.best["epoch"]}

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the shuffled training set; returns (mean train NLL, images/s)."""
        model, opts = self.model, self.opts
        model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = opts["lr"] * opts["lr_decay"] ** self.epoch
        order = torch.randperm(len(self.train), generator=self.shuffle).to(self.device)
        batches = order.split(opts["batch_size"])
        total, seen, start = 0.0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}", unit="batch", leave=False,
                   disable=None if opts["progress"] else True)  # None: no bar unless stderr is a terminal
        for index in bar:
            x = self.train[index].long()
            loss = -model.log_prob(x).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts["clip_grad"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts["clip_grad"])
            self.optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(nll=f"{total / seen:.3f}", img_s=f"{rate:.0f}")
        bar.close()
        if not math.isfinite(total):
            raise ConfigError(f"training diverged (NLL {total / seen}) in epoch {self.epoch + 1}; lower --lr "
                              "or set --clip-grad")
        return total / seen, seen / max(time.perf_counter() - start, 1e-9)

    def run(self, start: float) -> dict:
        opts = self.opts
        if opts["resume"]:
            self.load_state()
        stopped = "epochs"
        while self.epoch < opts["epochs"]:
            if self.best["bad_epochs"] >= opts["patience"]:
                stopped = "patience"
                break
            epoch_start = time.perf_counter()
            train_nll, rate = self.train_epoch()
            self.model.eval()
            valid_nll = evaluate(self.model, self.valid, opts["batch_size"] * 5)["nll_nats"] \
                if self.valid is not None else train_nll
            self.epoch += 1
            entry = {"epoch": self.epoch, "train_nll": train_nll, "valid_nll": valid_nll,
                     "seconds": time.perf_counter() - epoch_start, "images": len(self.train), "images_per_s": rate,
                     "lr": self.optimizer.param_groups[0]["lr"]}
            self.log.append(entry)
            if valid_nll < self.best["valid_nll_nats"]:
                self.best = {"valid_nll_nats": valid_nll, "epoch": self.epoch, "bad_epochs": 0}
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                if self.paths:
                    save_checkpoint(self.paths[0], self.model, self.name, metrics=self.metrics())
            else:
                self.best["bad_epochs"] += 1
            if self.paths:
                self.save_state()
            if opts["progress"]:
                tqdm.write(f"epoch {self.epoch}: train {train_nll:.4f} valid {valid_nll:.4f} nats "
                           f"({entry['seconds']:.1f} s, {rate:.0f} images/s)", file=sys.stderr)
            if opts["max_minutes"] is not None and time.perf_counter() - start > 60 * opts["max_minutes"]:
                stopped = "max_minutes"
                break
        else:
            if self.best["bad_epochs"] >= opts["patience"]:
                stopped = "patience"
        self.model.load_state_dict(self.best_state)
        self.model.eval()
        return {**self.metrics(), "stopped": stopped, "seconds": time.perf_counter() - start}
