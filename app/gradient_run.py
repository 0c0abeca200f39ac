"""The gradient-training loop: one (possibly resumed) run of Adam epochs with validation, the
best weights, early stopping and the time budget; ``fit`` in training.py describes the run.

Divergence. An epoch diverges when a log-likelihood the run computes is not finite (NaN, +-inf) or
impossible (a probability above 1 for discrete values: the protocol's rules, ``registry.returns``),
or when its mean train or validation NLL is more than DIVERGED_NATS_PER_VALUE nats per value above
the NLL at initialization (of the first batch, before any step; at a resume, of the first batch
then). The run then stops with one line (ModelOutputError, exit 1) that says when and why: a
diverged epoch is never logged, saved as the best or written to the resume state, and what was
saved before it (the best epoch so far) stays. A result that is not finite before any step is the
model's or its initialization's fault, and the message says so rather than to lower the learning
rate; a probability above 1 is a density that is not normalized, whatever the step.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm import tqdm

from densreg.registry import returns, save_checkpoint
from densreg.registry.errors import ModelOutputError

from . import distributed
from .evaluation import evaluate
from .performance import CompileTimer, autocast, compiled_log_prob, eval_batch_size
from .run_files import load_resume_state, run_paths, save_resume_state
from .training_options import TrainingOptions, default_device
from .training_protocol import device_images, init_from_data, log_prob_values
from .weight_average import averaged_weights_in, move_average, start_average

DIVERGED_NATS_PER_VALUE = 1000.0  # an epoch this far above the NLL at initialization has diverged (docstring)


class GradientRun:
    """One (possibly resumed) gradient-training run; see ``fit``."""

    def __init__(self, model, train, valid, opts: TrainingOptions, given: set = frozenset(), out=None,
                 progress: bool = False, name: str = "", extra_metrics: dict | None = None,
                 transform: dict | None = None) -> None:
        self.opts = opts
        self.given = given
        self.world = distributed.world()
        self.progress = progress and self.world.leader
        self.device = distributed.rank_device(opts.device or default_device(), self.world.local_rank)
        self.model = model.to(self.device)
        self.name = name
        self.extra_metrics = dict(extra_metrics or {})
        self.transform = transform  # the user's data's preprocessing, recorded in every checkpoint
        self.train, self.valid = device_images(model, train, valid, self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        self.shuffle = torch.Generator().manual_seed(int(opts.seed))
        self.epoch = 0  # epochs completed
        self.best = {"valid_nll_nats": math.inf, "epoch": 0, "bad_epochs": 0}
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.log: list[dict] = []
        self.paths = run_paths(out) if out is not None else None
        self.averaged: list[torch.Tensor] | None = None  # the moving average of the parameters (option ema)
        self.loggers: list = []  # experiment logs (experiment_log.py) that get each epoch's log entry
        self.steps = 0  # optimizer steps taken by this process (a resumed run had taken some before)
        self.initial_nll: float | None = None  # mean NLL of the first batch before its step (docstring)

    def metrics(self) -> dict:
        """The checkpoint's metrics: NLLs (nats per image) of the best epoch, epochs, best_epoch, ..."""
        last = self.log[-1] if self.log else {}
        best_entry = next((e for e in self.log if e["epoch"] == self.best["epoch"]), last)
        timer = getattr(self, "log_prob", None)
        compiled = {"compile_seconds": timer.seconds} if isinstance(timer, CompileTimer) else {}
        return {"train_nll_nats": best_entry.get("train_nll", math.nan),
                "valid_nll_nats": best_entry.get("valid_nll", math.nan),
                "epochs": self.epoch, "best_epoch": self.best["epoch"], **compiled,
                "train_seconds": sum(entry.get("seconds", 0.0) for entry in self.log),
                **({"ema": self.opts.ema} if self.averaged is not None else {}), **self.extra_metrics}

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
                values = log_prob_values(model, self.train[part])
                try:
                    nll_sum = -self.log_prob(values).float().sum()
                except ModelOutputError as exc:
                    raise self.diverged(exc.rule) from None
            if self.initial_nll is None:
                self.initial_nll = float(nll_sum.detach()) / max(len(part), 1)
            # DDP averages gradients over ranks: scaled so the result is d(mean NLL over the global batch)
            loss = nll_sum * (self.world.size / len(batch) if len(index) else 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            self.optimizer.step()
            self.steps += 1
            if self.averaged is not None:
                move_average(self.averaged, weights, opts.ema)
            total += float(nll_sum.detach()) if len(index) else 0.0
            seen += len(index)
            rate = seen * self.world.size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(nll=f"{total / max(seen, 1):.3f}", img_s=f"{rate:.0f}")
        bar.close()
        total, seen = distributed.all_sum(total, seen)
        return total / seen, seen / max(time.perf_counter() - start, 1e-9)

    def diverged(self, what: str) -> ModelOutputError:
        """The one-line error that stops a run whose epoch ``self.epoch + 1`` diverged (module docstring)."""
        kept = f"the best epoch so far ({self.best['epoch']}, valid NLL {self.best['valid_nll_nats']:.4f}) " \
               f"stays {'in ' + str(self.paths.checkpoint) if self.paths else 'in the model'}" \
            if self.best["epoch"] else "no epoch was saved"
        if self.steps == 0 and self.epoch == 0:
            blame = "" if returns.IMPOSSIBLE in what else ": the model or its initialization is broken, not the " \
                                                           "learning rate"
            return returns.fail(self.model, f"{what}, at initialization before any training step{blame}")
        if returns.IMPOSSIBLE in what:  # not normalized, whatever the step
            return returns.fail(self.model, f"{what}, in epoch {self.epoch + 1} after {self.steps} steps; {kept}")
        return returns.fail(self.model, f"training diverged in epoch {self.epoch + 1} after {self.steps} steps: "
                                        f"{what}; lower --lr (now {self.opts.lr:g}) or set --clip-grad; {kept}")

    def check_epoch(self, train_nll: float, valid_nll: float) -> None:
        """Stop the run (``diverged``) when the epoch's NLLs are not finite or too far above the start."""
        limit = (self.initial_nll or 0.0) + DIVERGED_NATS_PER_VALUE * self.model.num_positions
        for name, nll in (("train", train_nll), ("valid", valid_nll)):
            if not math.isfinite(nll):
                raise self.diverged(f"the mean {name} NLL is {nll}")
            if self.initial_nll is not None and nll > limit:
                raise self.diverged(f"the mean {name} NLL is {nll:.4g} nats, more than {DIVERGED_NATS_PER_VALUE:g} "
                                    f"nats per value above the NLL at initialization ({self.initial_nll:.4g})")

    def run(self, start: float, resume: bool = False) -> dict:
        """Train until epochs, patience or max_minutes (counted from ``start``, a perf_counter time)
        stops it; leave the best weights in the model; return metrics with stopped and seconds."""
        if resume:
            load_resume_state(self)
        else:
            init_from_data(self.model, self.train)
        self.log_prob = distributed.log_prob_function(self.model, self.device)
        if self.opts.compile:
            self.log_prob = CompileTimer(compiled_log_prob(self.model, self.device, self.log_prob))
        if self.opts.ema is not None and self.averaged is None:  # a new run, or one resumed without averaging
            self.averaged = start_average(self.model)
        opts = self.opts
        stopped = "epochs"
        while self.epoch < opts.epochs:
            if self.best["bad_epochs"] >= opts.patience:
                stopped = "patience"
                break
            epoch_start = time.perf_counter()
            train_nll, rate = self.train_epoch()
            with averaged_weights_in(self.model, self.averaged):  # validation, best weights: the averaged ones
                self.model.eval()
                # on fit's threads (using_threads in fit), not evaluate's own default
                try:
                    valid_nll = evaluate(self.model, self.valid, eval_batch_size(self.device, self.model),
                                         across_ranks=True, threads=torch.get_num_threads())["nll_nats"] \
                        if self.valid is not None else train_nll
                except ModelOutputError as exc:
                    raise self.diverged(f"on the validation images, {exc.rule}") from None
                self.check_epoch(train_nll, valid_nll)
                self.epoch += 1
                entry = {"epoch": self.epoch, "train_nll": train_nll, "valid_nll": valid_nll,
                         "seconds": time.perf_counter() - epoch_start, "images": len(self.train), "images_per_s": rate,
                         "lr": self.optimizer.param_groups[0]["lr"], "processes": self.world.size}
                self.log.append(entry)
                if valid_nll < self.best["valid_nll_nats"]:
                    self.best = {"valid_nll_nats": valid_nll, "epoch": self.epoch, "bad_epochs": 0}
                    self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    if self.paths and self.world.leader:
                        save_checkpoint(self.paths.checkpoint, self.model, self.name, metrics=self.metrics(),
                                        transform=self.transform)
                else:
                    self.best["bad_epochs"] += 1
            if self.paths and self.world.leader:
                save_resume_state(self)
            for logger in self.loggers:  # after the JSONL log, so that they never hold an epoch it lacks
                logger.write(entry)
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
