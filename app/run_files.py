"""The files of a gradient-training run: their paths, their output locks, and the resume state
(``STEM.last.safetensors``) with the per-epoch log (``STEM.log.jsonl``) written beside the checkpoint.
What each file holds is described in training.py.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from densreg.registry import CheckpointError, ConfigError, atomic_write_bytes, save_checkpoint
from densreg.registry.checkpoint import read_tensors
from densreg.registry.locking import remove_orphans
from densreg.registry.outputs import writing
from densreg.registry.saved import parse_json

from . import distributed
from .training_protocol import model_config
from .weight_average import average_from_tensors, average_tensors

if TYPE_CHECKING:
    from .gradient_run import GradientRun

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


RUN_KINDS = ("checkpoint", "log", "checkpoint")  # what each of RunPaths holds (registry/outputs.py)


@contextmanager
def locked_run(out, force: bool = False):
    """Hold the output lock of every file of the run of ``out`` (nothing when ``out`` is None, or
    on a rank other than 0 under torchrun: rank 0 alone writes).

    A second run on the same files raises DataError at once, as does a file of the run's name
    that holds another kind (a picture where the log goes), unless ``force``; temporary files
    that a killed run left behind are removed once the lock is held.
    """
    with ExitStack() as stack:
        if out is not None and distributed.world().leader:
            stack.enter_context(writing(zip(run_paths(out), RUN_KINDS), force))
            for path in run_paths(out):
                remove_orphans(path)
        yield


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


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_resume_state(run: GradientRun) -> None:
    """Write ``run``'s resume state and its log (rank 0 of a run with ``out``), each atomically."""
    optim_tensors, groups = _optimizer_tensors(run.optimizer)
    tensors = {**optim_tensors, **{f"best.{k}": v for k, v in run.best_state.items()},
               "rng.shuffle": run.shuffle.get_state(), "rng.torch": torch.get_rng_state()}
    tensors.update(average_tensors(run.averaged))
    if run.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    resume = {"epoch": run.epoch, "best": run.best, "log": run.log, "param_groups": groups,
              "options": {**{k: v for k, v in dataclasses.asdict(run.opts).items() if k != "device"},
                          "out": str(run.paths.checkpoint), "name": run.name}}
    save_checkpoint(run.paths.state, run.model, run.name, metrics=run.metrics(), extra={"resume": resume},
                    extra_tensors=tensors, transform=run.transform)
    text = "".join(json.dumps(entry) + "\n" for entry in run.log)
    atomic_write_bytes(run.paths.log, text.encode())


def load_resume_state(run: GradientRun) -> None:
    """Continue ``run`` from its resume state: weights, Adam, best weights, average, RNG states,
    epoch, best-so-far, log, and the INHERITED options not given again. Rank 0 reads the file
    and sends it to the others. CheckpointError or ConfigError when it does not fit the run."""
    path = run.paths.state
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
        for group in groups:  # Adam would fail on its first step with a TypeError
            for key in ("lr", "weight_decay", "eps"):
                if isinstance(group[key], bool) or not isinstance(group[key], (int, float)):
                    raise ValueError(f"its optimizer's {key} is {group[key]!r}, not a number")
    except (KeyError, ValueError, TypeError) as exc:
        what = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{path} is not a usable densreg resume state ({what}); expected the "
                              ".last.safetensors file densreg train writes beside --out") from exc
    if saved_config != model_config(run.model):
        raise ConfigError(f"cannot resume: {path} was written for config {saved_config}, "
                          f"but this run's model has config {model_config(run.model)}")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    try:
        run.model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model: {exc}") from exc
    try:
        _check_optimizer_tensors(run.model, tensors)
        _load_optimizer(run.optimizer, {k: v.to(run.device) if not k.endswith(".step") else v
                                        for k, v in tensors.items()}, groups)
        run.best_state = {k[5:]: v.to(run.device) for k, v in tensors.items() if k.startswith("best.")}
        run.model.load_state_dict(run.best_state, strict=True)  # checks the best weights' names and shapes
        run.model.load_state_dict(model_state, strict=True)
        run.averaged = average_from_tensors(run.model, tensors, run.device)
        run.shuffle.set_state(tensors["rng.shuffle"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and run.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], run.device)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        what = f"lacks the tensor {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CheckpointError(f"{path} holds a damaged resume state ({what}); start again without --resume "
                              "or restore the file") from exc
    run.epoch, run.best, run.log = epoch, best, log
    inherited = {key: saved_options[key] for key in INHERITED  # not given again: as interrupted
                 if key not in run.given and key in saved_options}
    try:
        run.opts = run.opts.replace(**inherited)
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a damaged resume state (its option {exc}); start again without "
                              "--resume or restore the file") from exc
    for group in run.optimizer.param_groups:
        group["weight_decay"] = run.opts.weight_decay
