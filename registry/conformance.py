"""Conformance checks: does a model honour the DensityModel contract?

In the spirit of scikit-learn's ``check_estimator``: each check takes a registered
model name (``"markov"``, ``"plugin:model"``) or a factory
(``factory(event_shape=..., num_categories=..., **config)``, e.g. a DensityModel
subclass) plus config overrides, builds the model on tiny image spaces (several
orderings where the model takes ``ordering``), gives it random parameters (and a
closed-form fit on random images where it has one) and returns a ``CheckResult``
whose ``detail`` tells the author what is wrong.

    from densreg.registry.conformance import run_checks
    for result in run_checks("markov", {"order": 2}):
        print(result.name, result.status, result.detail)

The checks (``CHECKS``, in this order):

- ``normalization``: sum of exp(log_prob) over every image of 1x2x3 (K=2) and 1x2x2
  (K=3) is 1 within 1e-5.
- ``chain_rule``: log_prob(x) equals the sum of the log-softmax conditionals.
- ``causality``: the conditional at generation position d does not change when the
  values at positions >= d change: each position alone (x -> (x + 1) mod K), then every
  suffix at once (redrawn from 0..K-1), on 4 probe images drawn by
  ``torch.randint(0, K, (4, C, H, W))`` from a generator seeded with 1 (the suffixes from the
  same generator), so a verdict is reproducible.
- ``step``: under teacher forcing, ``step`` equals ``conditional_logits``, with
  ``position`` an int and a 0-dim int64 tensor; the state keeps its shapes. Probes: 3 images
  drawn as for causality with seed 2.
- ``sampling``: 10000 samples on 1x2x2 (K=2) and 1x1x3 (K=3) follow exp(log_prob):
  chi-square goodness of fit, cells with expected count < 5 pooled, fails at
  p < 1e-3 (a correct model fails each test with probability 1e-3; the seed is fixed,
  so a result is reproducible). A distribution too concentrated for the test (fewer than
  4 cells) is retried with the parameters scaled down; where it stays degenerate the
  space is "not run", and the check is skipped if no space ran.
- ``round_trip``: save_checkpoint, load_checkpoint through the registry: same config,
  same log_prob and same samples for the same noise.
- ``export``: ``densreg.export.export_model`` with parity, then the onnxruntime
  model's log_prob and samples against torch (skipped when the exporter is absent).

chain_rule, causality and step compare on a float64 copy of the model, within 1e-8 times
the logits' scale (max(1, |logits|); a difference of exactly the tolerance passes): float64
rounding sits about six orders below that and a real defect (>= 1e-3) five orders above. A model that does not run in float64 is compared
in its own dtype within sqrt(eps) times that scale (3.5e-4 in float32), and the detail says so.
Every check runs on each tiny space the model accepts (K=2 and K=3); round_trip and export
on the first one it accepts.

Options of every entry point: ``prepare(model, seed)`` replaces ``randomize``,
``orderings`` replaces DEFAULT_ORDERINGS, and ``spaces`` (a sequence of
``(event_shape, K)``) replaces the tiny spaces of every check (round_trip and export use
the first), e.g. ``(((3, 1, 2), 2),)`` for colour images or a model that takes K=2 only.
normalization, chain_rule, sampling and round_trip enumerate every image of a space, so
keep K^(C*H*W) small (a few hundred); causality and step take larger spaces. ``threads``
(default 1) is torch's thread count while the checks run.

Helpers for tests: ``all_images`` (every image of a tiny space), ``randomize`` (random
parameters, optionally random float buffers), ``random_images``, ``image_index``,
``chi_square``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import tempfile
import time
import traceback
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .api import create_model, model_spec, register_plugin, unregister_plugin
from .catalog import check_config
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import ConfigError
from .hookspecs import hookimpl
from .protocol import DensityModel

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
DEFAULT_ORDERINGS = ("raster", "snake", "random:3")
NORMALIZATION_SPACES = (((1, 2, 3), 2), ((1, 2, 2), 3))
CAUSALITY_SPACES = (((1, 2, 3), 2), ((1, 2, 2), 3))
STEP_SPACES = (((1, 2, 3), 2), ((1, 2, 3), 3))
SAMPLING_SPACES = (((1, 2, 2), 2), ((1, 1, 3), 3))
ROUND_TRIP_SPACES = (((1, 2, 3), 2), ((1, 2, 2), 3))  # round_trip and export: the first the model takes
SAMPLING_SIZE = 10000  # chi-square noncentrality >= 4 N TV^2 = 100 for a sampler 5% off in total variation
SAMPLING_ALPHA = 1e-3
SAMPLING_MIN_DOF = 3  # fewer cells with expected count >= 5 than this: the distribution is degenerate
SAMPLING_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625)  # parameter scales tried against a degenerate distribution
NORMALIZATION_TOL = 1e-5
FLOAT64_TOL = 1e-8  # times max(1, |logits|): rounding in float64 is ~1e-14 of that scale, a defect >= 1e-3
EXPORT_TOL = 1e-4
NO_EXPORTER = "densreg.export has no exporter in this installation"


@dataclass
class CheckResult:
    """The outcome of one check: ``status`` is "passed", "failed" or "skipped"."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    @property
    def skipped(self) -> bool:
        return self.status == SKIPPED

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 3)}


class CheckFailed(Exception):
    """Raised inside a check with the message the author should read."""


class CheckSkipped(Exception):
    """Raised inside a check when it does not apply."""


# -- the model under test ----------------------------------------------------------
def all_images(event_shape, num_categories: int) -> torch.Tensor:
    """Every image of a tiny space: ``event_shape`` (C, H, W), K = ``num_categories`` ->
    int64 (K^D, C, H, W) with D = C*H*W; image i is i written in base K (flat C, H, W order,
    most significant value first), so image_index inverts it."""
    d = math.prod(event_shape)
    powers = num_categories ** torch.arange(d - 1, -1, -1)
    index = torch.arange(num_categories ** d).unsqueeze(-1)
    return ((index // powers) % num_categories).reshape(-1, *event_shape)


def image_index(images: torch.Tensor, num_categories: int) -> torch.Tensor:
    """Inverse of ``all_images``: (B, C, H, W) -> (B,) int64."""
    flat = images.reshape(images.shape[0], -1)
    powers = num_categories ** torch.arange(flat.shape[1] - 1, -1, -1, device=flat.device)
    return (flat * powers).sum(-1)


def random_images(event_shape, num_categories: int, n: int = 200, seed: int = 0) -> torch.Tensor:
    """Correlated random images (n, C, H, W): each value copies the previous one (flat order) with
    probability 0.6, so a closed-form fit on them gives non-uniform conditionals."""
    gen = torch.Generator().manual_seed(seed)
    d = math.prod(event_shape)
    fresh = torch.randint(0, num_categories, (n, d), generator=gen)
    copy = torch.rand(n, d, generator=gen) < 0.6
    seq = fresh.clone()
    for j in range(1, d):
        seq[:, j] = torch.where(copy[:, j], seq[:, j - 1], fresh[:, j])
    return seq.reshape(n, *event_shape)


def random_values(event_shape, n: int = 200, seed: int = 0) -> torch.Tensor:
    """Correlated real-valued images (n, C, H, W), float32, for continuous models: each value is 0.8 times
    the previous one (flat order) plus N(0, 0.6^2) noise, the first offset by -1 or +1 per image."""
    gen = torch.Generator().manual_seed(seed)
    d = math.prod(event_shape)
    noise = torch.randn(n, d, generator=gen) * 0.6
    seq = noise.clone()
    seq[:, 0] += torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    for j in range(1, d):
        seq[:, j] = 0.8 * seq[:, j - 1] + noise[:, j]
    return seq.reshape(n, *event_shape)


def randomize(model, seed: int = 0, *, buffers: bool = False) -> None:
    """Random values for ``model`` in place; the kit's default preparation.

    Every floating parameter is drawn from N(0, 1) (same shape, generator seeded with
    ``seed``); buffers are left alone, and a ``closed_form`` model is then fitted on
    ``random_images(event_shape, K, seed=seed)`` (200 correlated images), so its tables are
    not uniform (a continuous model: on ``random_values(event_shape, 2000, seed=seed)``).
    ``buffers=True``: every floating buffer is drawn from N(0, 1) too, after
    the parameters, and there is no closed-form fit (it would overwrite them), e.g. for the
    probability tables of the baselines, which then hold unnormalised logits that log_prob's
    log-softmax must renormalise. Non-float buffers (orderings, bool masks) never change;
    a model that keeps a mask as a float buffer must not get ``buffers=True``.

    A continuous model's tensors of two or more dimensions are drawn from N(0, 1 / n), n their
    last dimension (the fan-in of a torch weight), so the conditionals' means and log-scales
    stay of order one and samples finite (an unscaled draw lets log-scales grow with each value).
    """
    gen = torch.Generator().manual_seed(seed)
    continuous = getattr(model, "continuous", False)
    with torch.no_grad():
        tensors = [*model.parameters(), *(model.buffers() if buffers else ())]
        for tensor in tensors:
            if tensor.is_floating_point():
                scale = tensor.shape[-1] ** -0.5 if continuous and tensor.dim() >= 2 and tensor.shape[-1] else 1.0
                tensor.copy_((torch.randn(tensor.shape, generator=gen) * scale).to(tensor.dtype))
    if getattr(model, "closed_form", False) and not buffers:
        if getattr(model, "continuous", False):  # 2000 values: every component of a mixture gets enough
            model.fit_closed_form(random_values(model.event_shape, 2000, seed=seed))
        else:
            model.fit_closed_form(random_images(model.event_shape, model.num_categories, seed=seed))


def _takes(factory, key: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Subject:
    """A registered name or a factory, with config overrides: builds models on tiny spaces."""

    def __init__(self, model: str | Callable, config: dict | None = None,
                 prepare: Callable | None = None, orderings=None, spaces=None) -> None:
        self.config = dict(config or {})
        if isinstance(model, str):
            self.name = model
            self.factory = model_spec(model).factory
        elif callable(model):
            self.name, self.factory = None, model
        else:
            raise ConfigError(f"expected a registered model name or a factory, got {type(model).__name__}")
        self.continuous = bool(getattr(self.factory, "continuous", False))  # real values: conformance_continuous
        check_config(self.factory, self.config)  # a bad key or value is the caller's error, not the model's
        self.prepare = prepare or randomize
        self.spaces = tuple((tuple(shape), int(k)) for shape, k in spaces) if spaces else None
        self.notes: dict[str, list[str]] = {}
        if "ordering" in self.config or not _takes(self.factory, "ordering"):
            self.orderings = (None,)
        else:
            self.orderings = tuple(orderings or DEFAULT_ORDERINGS)

    def spaces_or(self, default):
        """The tiny spaces a check runs on: ``spaces`` given to the subject, else the check's own."""
        return self.spaces or default

    @property
    def label(self) -> str:
        return self.name or getattr(self.factory, "__name__", repr(self.factory))

    def build(self, event_shape, num_categories: int, ordering: str | None = None, seed: int = 0):
        """A prepared model in eval mode; ConfigError if it does not take this space or ordering."""
        config = dict(self.config)
        if ordering is not None:
            config["ordering"] = ordering
        if self.name is not None:
            model = create_model(self.name, event_shape, num_categories, **config)
        else:
            model = self.factory(event_shape=tuple(event_shape), num_categories=num_categories, **config)
            if not isinstance(model, DensityModel):
                raise CheckFailed(f"the factory returned {type(model).__name__}, not a DensityModel")
        try:
            self.prepare(model, seed)
        except Exception as exc:
            raise CheckFailed(f"preparing the model (random parameters, closed-form fit) failed: "
                              f"{_describe(exc)}") from exc
        return model.eval()

    def variants(self, spaces, orderings=None):
        """Yield (shape, K, ordering, model) for every space x ordering the model accepts.

        Spaces or orderings the model refuses with ConfigError are noted in ``self.notes``;
        CheckFailed if it accepts none of them.
        """
        built = 0
        self.notes = {}
        for shape, k in spaces:
            for ordering in orderings or self.orderings:
                try:
                    model = self.build(shape, k, ordering)
                except ConfigError as exc:
                    self.notes.setdefault(str(exc), []).append(_space(shape, k, ordering))
                    continue
                built += 1
                yield shape, k, model.ordering, model
        if not built:
            raise CheckFailed("the model could not be built on any tiny space: " + self.notes_text())

    def first_variant(self, spaces, preferred=("snake", "random:3", "raster")):
        """One model per space, in the first preferred ordering it accepts."""
        orderings = [o for o in preferred if o in self.orderings] + [o for o in self.orderings if o not in preferred]
        notes, out = {}, []
        for shape, k in spaces:
            refused = {}
            for ordering in orderings:
                try:
                    model = self.build(shape, k, ordering)
                    out.append((shape, k, model.ordering, model))
                    break
                except ConfigError as exc:
                    refused.setdefault(str(exc), []).append(_space(shape, k, ordering))
            else:  # no ordering worked on this space: worth a note
                for message, places in refused.items():
                    notes.setdefault(message, []).extend(places)
        self.notes = notes
        if not out:
            raise CheckFailed("the model could not be built on any tiny space: " + self.notes_text())
        return out

    def first_accepted(self, spaces):
        """(shape, K, ordering, model) on the first of ``spaces`` the model accepts (orderings as in
        ``first_variant``); CheckFailed naming every refusal if it accepts none."""
        refusals: dict[str, list[str]] = {}
        for space in spaces:
            self.notes = {}
            try:
                found = self.first_variant([space])[0]
            except CheckFailed:
                if not self.notes:  # not a refusal: preparing the model failed
                    raise
                for message, places in self.notes.items():
                    refusals.setdefault(message, []).extend(places)
                continue
            self.notes = refusals
            return found
        self.notes = refusals
        raise CheckFailed("the model could not be built on any tiny space: " + self.notes_text())

    def notes_text(self) -> str:
        """What the model refused to be built on, grouped by message."""
        return "; ".join(f"{', '.join(places)}: {message}" for message, places in self.notes.items())


def _space(shape, k, ordering) -> str:
    text = f"{'x'.join(map(str, shape))} K={k}"
    return text + (f", ordering {ordering!r}" if ordering else "")


def _where(model, d: int) -> str:
    flat = int(model.order[d])
    c_count, height, width = model.event_shape
    c, rest = divmod(flat, height * width)
    h, w = divmod(rest, width)
    return f"{d} (c={c}, h={h}, w={w})"


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _notes(subject) -> str:
    """A short note on what the model refused (ConfigError) when the check passed on the rest."""
    if not subject.notes:
        return ""
    count = sum(len(places) for places in subject.notes.values())
    message, places = next(iter(subject.notes.items()))
    return f" (not run on {count} refused space/ordering pairs, e.g. {places[0]}: {message})"


def _expect_logits(model, x) -> torch.Tensor:
    logits = model.conditional_logits(x)
    expected = (x.shape[0], model.num_positions, model.num_categories)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckFailed(f"conditional_logits returned {got}, expected (B, D, K) = {expected}")
    if bool(torch.isnan(logits).any()) or bool((logits == float("inf")).any()):
        raise CheckFailed("conditional_logits returned NaN or +inf values")
    return logits


def in_float64(model) -> tuple[DensityModel, str]:
    """A float64 copy of ``model`` for the comparisons, and "" ; or ``model`` itself and why
    it stays in its own dtype (the copy raises, or its logits do not come out in float64)."""
    try:
        wide = copy.deepcopy(model).double()
        with torch.no_grad():
            if getattr(model, "continuous", False):
                probe = wide.conditional_params(torch.zeros(1, *model.event_shape, dtype=torch.float64)).logits
            else:
                probe = wide.conditional_logits(torch.zeros(1, *model.event_shape, dtype=torch.int64))
    except Exception as exc:  # noqa: BLE001 - any failure means: compare in the model's dtype
        return model, f"the model does not run in float64 ({_describe(exc)})"
    if probe.dtype != torch.float64:
        return model, f"conditional_logits of model.double() come out in {probe.dtype}"
    return wide, ""


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """How far two computations of values of magnitude ``scale`` may differ by rounding alone:
    FLOAT64_TOL in float64, sqrt(eps) in other float dtypes, times max(1, scale)."""
    base = FLOAT64_TOL if dtype == torch.float64 else torch.finfo(dtype).eps ** 0.5
    return base * max(1.0, scale)


def _wide_variants(subject: Subject, spaces):
    """``subject.variants`` with each model replaced by its float64 copy where it has one;
    yields (shape, K, ordering, model, note), ``note`` saying why a model stayed in its dtype."""
    for shape, k, ordering, model in subject.variants(spaces):
        wide, why = in_float64(model)
        yield shape, k, ordering, wide, why


def _dtype_note(notes: list[str]) -> str:
    return f" (in float32 where {notes[0]})" if notes else " (in float64)"


# -- the checks ------------------------------------------------------------------
def _normalization(subject: Subject) -> str:
    worst = 0.0
    for shape, k, ordering, model in subject.variants(subject.spaces_or(NORMALIZATION_SPACES)):
        images = all_images(shape, k)
        with torch.no_grad():
            log_p = model.log_prob(images)
        if tuple(log_p.shape) != (len(images),):
            raise CheckFailed(f"log_prob returned shape {tuple(log_p.shape)} for {len(images)} images, "
                              f"expected ({len(images)},)")
        if bool(torch.isnan(log_p).any()):
            raise CheckFailed(f"log_prob returned NaN on {_space(shape, k, ordering)}")
        total = float(log_p.double().exp().sum())
        if not abs(total - 1.0) <= NORMALIZATION_TOL:
            raise CheckFailed(f"sum of exp(log_prob) over all {len(images)} images of {_space(shape, k, ordering)} "
                              f"is {total:.6g}, not 1 (tolerance {NORMALIZATION_TOL:g}): log_prob is not a "
                              "normalized density (each conditional must be a softmax over K values, and "
                              "log_prob their sum)")
        worst = max(worst, abs(total - 1.0))
    return f"sums within {worst:.1e} of 1" + _notes(subject)


def _chain_rule(subject: Subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in _wide_variants(subject, subject.spaces_or(NORMALIZATION_SPACES)):
        notes += [why] if why else []
        images = all_images(shape, k)
        with torch.no_grad():
            logits = _expect_logits(model, images)
            chain = torch.log_softmax(logits.double(), -1).gather(-1, model.to_sequence(images).unsqueeze(-1)).sum((1, 2))
            log_p = model.log_prob(images).double()
        diff = (chain - log_p).abs()
        tol = tolerance(logits.dtype, float(log_p.abs().max()))
        if not float(diff.max()) <= tol:  # NaN fails
            i = int(diff.nan_to_num(float("inf")).argmax())
            raise CheckFailed(f"log_prob differs from the chain rule of conditional_logits by {float(diff[i]):.3g} "
                              f"nats on image {images[i].reshape(-1).tolist()} of {_space(shape, k, ordering)} "
                              f"(log_prob {float(log_p[i]):.5f}, sum of conditionals {float(chain[i]):.5f}; "
                              f"tolerance {tol:.2g} in {logits.dtype}): sampling and per-pixel scores use the "
                              "conditionals, so they must agree with log_prob")
        worst = max(worst, float(diff.max()))
    return f"log_prob equals the sum of conditionals within {worst:.1e} nats{_dtype_note(notes)}" + _notes(subject)


def _causality(subject: Subject) -> str:
    checked, notes = 0, []
    for shape, k, ordering, model, why in _wide_variants(subject, subject.spaces_or(CAUSALITY_SPACES)):
        notes += [why] if why else []
        gen = torch.Generator().manual_seed(1)
        x = torch.randint(0, k, (4, *shape), generator=gen)
        seq = model.to_sequence(x)
        with torch.no_grad():
            base = _expect_logits(model, x)
            tol = tolerance(base.dtype, float(base.abs().max()))
            for j in range(model.num_positions):  # one position at a time: names the culprit
                changed = seq.clone()
                changed[:, j] = (changed[:, j] + 1) % k
                diff = (_expect_logits(model, model.from_sequence(changed))[:, : j + 1] - base[:, : j + 1]).abs()
                diff = diff.amax(dim=(0, 2))
                if not float(diff.max()) <= tol:
                    p = int((~(diff <= tol)).nonzero()[0])
                    what = ("the model sees the value it predicts (x_d)" if p == j
                            else "the model peeks at the future")
                    raise CheckFailed(f"conditional at position {_where(model, p)} changed by {float(diff[p]):.3g} "
                                      f"when x at position {_where(model, j)} changed ({_space(shape, k, ordering)}; "
                                      f"positions count in generation order; tolerance {tol:.2g} in "
                                      f"{base.dtype}): {what}")
            for d in range(model.num_positions):  # every value at and after d at once
                changed = seq.clone()
                changed[:, d:] = torch.randint(0, k, changed[:, d:].shape, generator=gen)
                diff = (_expect_logits(model, model.from_sequence(changed))[:, : d + 1] - base[:, : d + 1]).abs()
                if not float(diff.max()) <= tol:
                    raise CheckFailed(f"conditionals up to position {d} changed by {float(diff.max()):.3g} when the "
                                      f"values at positions {d} and later changed together "
                                      f"({_space(shape, k, ordering)}; tolerance {tol:.2g} in {base.dtype}): the "
                                      "model peeks at the future")
        checked += 1
    return f"{checked} space/ordering pairs, every position perturbed{_dtype_note(notes)}" + _notes(subject)


def _step(subject: Subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in _wide_variants(subject, subject.spaces_or(STEP_SPACES)):
        notes += [why] if why else []
        x = torch.randint(0, k, (3, *shape), generator=torch.Generator().manual_seed(2))
        seq = model.to_sequence(x)
        with torch.no_grad():
            expected = _expect_logits(model, x)
            tol = tolerance(expected.dtype, float(expected.abs().max()))
            for as_tensor in (False, True):
                kind = "a 0-dim int64 tensor" if as_tensor else "an int"
                state = model.initial_state(3)
                if not isinstance(state, tuple) or not all(isinstance(t, torch.Tensor) for t in state):
                    raise CheckFailed(f"initial_state returned {type(state).__name__}, expected a tuple of tensors")
                shapes = [tuple(t.shape) for t in state]
                value = torch.zeros(3, dtype=torch.int64)
                for d in range(model.num_positions):
                    position = torch.tensor(d, dtype=torch.int64) if as_tensor else d
                    try:
                        logits, state = model.step(value, position, state)
                    except Exception as exc:
                        raise CheckFailed(f"step at position {d} with the position given as {kind} raised "
                                          f"{_describe(exc)}") from exc
                    if tuple(logits.shape) != (3, k):
                        raise CheckFailed(f"step returned logits of shape {tuple(logits.shape)}, expected (B, K) "
                                          f"= {(3, k)}")
                    new_shapes = [tuple(t.shape) for t in state]
                    if new_shapes != shapes:
                        raise CheckFailed(f"the state changed shape from {shapes} to {new_shapes} at position {d}: "
                                          "the state must be a tuple of fixed-shape tensors (for export)")
                    diff = float((logits.double() - expected[:, d].double()).abs().max())
                    if not diff <= tol:
                        raise CheckFailed(f"step at position {_where(model, d)} (position given as {kind}, "
                                          f"{_space(shape, k, ordering)}) differs from conditional_logits by "
                                          f"{diff:.3g} (tolerance {tol:.2g} in {expected.dtype}) under teacher "
                                          "forcing: value is x at the previous position (zeros at 0) and the "
                                          "cached state must reproduce the full pass")
                    worst = max(worst, diff)
                    value = seq[:, d]
    return (f"teacher-forced steps match within {worst:.1e} (int and tensor positions){_dtype_note(notes)}"
            + _notes(subject))


def chi_square(counts: torch.Tensor, expected: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's chi-square of observed ``counts`` against ``expected`` (both (cells,)), cells with
    expected < ``min_expected`` pooled into one (merged with the next smallest if still below).
    Returns (statistic, degrees of freedom, p-value)."""
    order = torch.argsort(expected)
    counts, expected = counts[order].double(), expected[order].double()
    small = int((expected < min_expected).sum())
    if small:
        pooled_e, pooled_c, rest = expected[:small].sum(), counts[:small].sum(), small
        while pooled_e < min_expected and rest < len(expected):
            pooled_e, pooled_c, rest = pooled_e + expected[rest], pooled_c + counts[rest], rest + 1
        expected = torch.cat([pooled_e.reshape(1), expected[rest:]])
        counts = torch.cat([pooled_c.reshape(1), counts[rest:]])
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    if dof < 1:
        return stat, 0, 1.0
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))
    return stat, dof, p


def _spread_out(model, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The exact probabilities (float64, (K^D,)) of every image of a tiny space, with the model's
    float parameters scaled down (SAMPLING_SCALES, in place) until at least SAMPLING_MIN_DOF + 1
    images have an expected count of 5 in SAMPLING_SIZE draws. Returns (probs, scale used);
    the last scale tried when none spreads the distribution enough."""
    originals = [p.detach().clone() for p in model.parameters()]
    for scale in SAMPLING_SCALES:
        with torch.no_grad():
            for param, original in zip(model.parameters(), originals):
                if param.is_floating_point():
                    param.copy_(original * scale)
            probs = model.log_prob(images).double().exp()
        probs = probs / probs.sum()
        if int((probs * SAMPLING_SIZE >= 5).sum()) > SAMPLING_MIN_DOF:
            break
    return probs, scale


def _sampling(subject: Subject) -> str:
    shown, not_run = [], []
    for shape, k, ordering, model in subject.first_variant(subject.spaces_or(SAMPLING_SPACES)):
        images = all_images(shape, k)
        probs, scale = _spread_out(model, images)
        samples = model.sample(SAMPLING_SIZE, generator=torch.Generator().manual_seed(0))
        if tuple(samples.shape) != (SAMPLING_SIZE, *shape) or samples.dtype != torch.int64:
            raise CheckFailed(f"sample({SAMPLING_SIZE}) returned {samples.dtype} of shape {tuple(samples.shape)}, "
                              f"expected int64 {(SAMPLING_SIZE, *shape)}")
        if bool((samples < 0).any()) or bool((samples >= k).any()):
            raise CheckFailed(f"samples hold values outside 0..{k - 1}")
        counts = torch.bincount(image_index(samples, k), minlength=len(images)).double()
        expected = probs * SAMPLING_SIZE
        impossible = (counts > 0) & (probs == 0)
        if bool(impossible.any()):
            i = int(impossible.nonzero()[0])
            raise CheckFailed(f"sampled image {images[i].reshape(-1).tolist()}, whose log_prob is -inf")
        stat, dof, p = chi_square(counts, expected)
        space = _space(shape, k, ordering)
        if dof < SAMPLING_MIN_DOF:
            not_run.append(f"{space}: the distribution is degenerate (only {dof + 1} cells with expected count "
                           f">= 5 in {SAMPLING_SIZE} draws, parameters scaled down to {scale:g})")
            continue
        if not p >= SAMPLING_ALPHA:
            i = int(((counts - expected) / expected.clamp(min=1e-12).sqrt()).abs().argmax())
            raise CheckFailed(f"{SAMPLING_SIZE} samples on {space} do not follow exp(log_prob): "
                              f"chi-square {stat:.1f} with {dof} degrees of freedom, p = {p:.2g} < {SAMPLING_ALPHA:g}; "
                              f"image {images[i].reshape(-1).tolist()} drawn {int(counts[i])} times, expected "
                              f"{float(expected[i]):.1f}: sample() (through step) must draw from the same "
                              "conditionals as log_prob")
        scaled = f", parameters scaled by {scale:g}" if scale != 1.0 else ""
        shown.append(f"{'x'.join(map(str, shape))} K={k}: chi2 {stat:.1f}, {dof} dof, p={p:.2g} >= "
                     f"{SAMPLING_ALPHA:g}{scaled}")
    if not shown:
        raise CheckSkipped("not run: " + "; ".join(not_run))
    return "; ".join(shown + [f"not run on {text}" for text in not_run]) + _notes(subject)


@contextmanager
def _registered(subject: Subject):
    """The subject's registry name; a factory is registered in-process for the duration."""
    if subject.name is not None:
        yield subject.name
        return

    def register_models(register):
        register(subject.factory, name="subject", description="model under conformance check")

    plugin = types.SimpleNamespace(register_models=hookimpl(register_models))
    register_plugin(plugin, "conformance")
    try:
        yield "conformance:subject"
    finally:
        unregister_plugin("conformance")


def _round_trip(subject: Subject) -> str:
    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    config = model.config()
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise CheckFailed(f"config() is not JSON-able: {exc}") from exc
    images = all_images(shape, k)
    noise = torch.rand(64, model.num_positions, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        before = model.log_prob(images).double()
    before_samples = model.sample(64, noise=noise)
    with tempfile.TemporaryDirectory() as tmp, _registered(subject) as name:
        path = Path(tmp) / "model.safetensors"
        save_checkpoint(path, model, name)
        try:
            again, _ = load_checkpoint(path)
        except Exception as exc:
            raise CheckFailed(f"load_checkpoint could not rebuild the model from its own checkpoint: {exc} "
                              "(config() must return keyword arguments the factory accepts, and every tensor "
                              "must be a parameter or buffer of the rebuilt model)") from exc
    if type(again) is not type(model):
        raise CheckFailed(f"the checkpoint rebuilt a {type(again).__name__}, not a {type(model).__name__}")
    if again.config() != config:
        keys = sorted(key for key in set(config) | set(again.config()) if config.get(key) != again.config().get(key))
        raise CheckFailed(f"config() of the reloaded model differs in {', '.join(map(repr, keys))}: "
                          f"saved {({key: config.get(key) for key in keys})}, rebuilt "
                          f"{({key: again.config().get(key) for key in keys})} (does the constructor store "
                          "what config() reports?)")
    with torch.no_grad():
        after = again.log_prob(images).double()
    diff = float((after - before).abs().max())
    if diff > 1e-6:
        raise CheckFailed(f"log_prob of the model reloaded from its checkpoint differs by {diff:.3g} nats: state "
                          "that shapes the density is neither in config() nor a parameter or buffer "
                          "(register tensors with register_buffer, or add the value to config())")
    if not torch.equal(again.sample(64, noise=noise), before_samples):
        raise CheckFailed("samples of the reloaded model differ from the original's for the same noise: the step "
                          "state depends on something not saved in the checkpoint")
    return f"config {json.dumps(config)} rebuilt through the registry; log_prob and samples identical"


def _export(subject: Subject) -> str:
    try:
        from densreg.export import export_model
    except ImportError as exc:
        raise CheckSkipped(NO_EXPORTER) from exc
    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    images = all_images(shape, k)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        try:
            info = export_model(model, folder, name=subject.label.replace(":", "-"), parity=True)
        except Exception as exc:
            raise CheckFailed(f"export_model failed on {_space(shape, k, ordering)}: {_describe(exc)} (export needs a "
                              "step that works with a 0-dim tensor position: no int(position), .item(), Python if "
                              "on tensor values or data-dependent shapes; and state tensors with one batch axis, "
                              "whose shapes depend only on the batch size; see PLUGINS.md)") from exc
        reported = (info or {}).get("max_abs_diff")
        if reported is not None and not float(reported) <= EXPORT_TOL:
            raise CheckFailed(f"the exporter's parity check found a difference of {float(reported):.3g} "
                              f"between onnxruntime and torch (tolerance {EXPORT_TOL:g})")
        try:
            from densreg.export.runtime import ExportedModel
        except ImportError:
            return f"exported with parity {reported} (no runtime to cross-check)"
        runtime = ExportedModel(folder)
        with torch.no_grad():
            expected = model.log_prob(images).double().numpy()
        got = runtime.log_prob(images.numpy())
        diff = float(abs(torch.as_tensor(got, dtype=torch.float64).numpy() - expected).max())
        if not diff <= EXPORT_TOL:
            raise CheckFailed(f"log_prob in onnxruntime differs from torch by {diff:.3g} nats on "
                              f"{_space(shape, k, ordering)} (tolerance {EXPORT_TOL:g})")
        noise = torch.rand(200, model.num_positions, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        ours = model.sample(200, noise=noise).numpy()
        theirs = runtime.sample(200, noise=noise.numpy())
        mismatched = int((torch.as_tensor(theirs).reshape(200, -1) != torch.as_tensor(ours).reshape(200, -1))
                         .any(-1).sum())
        if mismatched > 2:  # a value drawn right at a CDF boundary may legitimately differ
            raise CheckFailed(f"{mismatched} of 200 samples drawn in onnxruntime differ from torch's for the same "
                              "noise: the exported step does not reproduce the torch step")
    return (f"onnxruntime ({getattr(runtime, 'provider', '?')}) log_prob within {diff:.1e} nats; "
            f"samples for the same noise agree ({mismatched} of 200 differ)")


CHECKS: dict[str, Callable[[Subject], str]] = {
    "normalization": _normalization,
    "chain_rule": _chain_rule,
    "causality": _causality,
    "step": _step,
    "sampling": _sampling,
    "round_trip": _round_trip,
    "export": _export,
}


def checks_for(subject: Subject) -> dict[str, Callable[[Subject], str]]:
    """The check functions for the subject's kind: ``CHECKS``, or those of conformance_continuous."""
    if subject.continuous:
        from .conformance_continuous import CHECKS as CONTINUOUS_CHECKS

        return CONTINUOUS_CHECKS
    return CHECKS


@contextmanager
def one_torch_thread(threads: int = 1):
    """Run torch with ``threads`` intra-op threads (default single-threaded) for the duration: on
    tiny tensors and many small ops, more threads only add synchronisation, which costs 5-25x on a
    busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_check(name: str, model: str | Callable, config: dict | None = None, *,
              prepare: Callable | None = None, orderings=None, spaces=None, threads: int = 1) -> CheckResult:
    """Run one check (a key of ``CHECKS``) on ``model`` (registered name or factory) with ``config``.

    A model that raises, or breaks the contract, gives a failed result; an unknown model
    name or a config the factory refuses raises (UnknownNameError, ConfigError).

    ``prepare(model, seed)`` replaces ``randomize`` (give a trained-looking model random
    parameters your way); ``orderings`` replaces DEFAULT_ORDERINGS; ``spaces`` (a sequence
    of ``(event_shape, K)``) replaces every check's tiny spaces; ``threads`` is torch's thread
    count while the check runs.
    """
    if name not in CHECKS:
        raise ConfigError(f"unknown check {name!r}; checks: {', '.join(CHECKS)}")
    subject = model if isinstance(model, Subject) else Subject(model, config, prepare, orderings, spaces)
    start = time.perf_counter()
    try:
        with one_torch_thread(threads):
            status, detail = PASSED, checks_for(subject)[name](subject)
    except CheckFailed as exc:
        status, detail = FAILED, str(exc)
    except CheckSkipped as exc:
        status, detail = SKIPPED, str(exc)
    except Exception as exc:  # the model raised: report it as the check's failure
        status, detail = FAILED, f"the model raised {_describe(exc)}"
    return CheckResult(name, status, detail, time.perf_counter() - start)


def run_checks(model: str | Callable, config: dict | None = None, *, checks=None, skip=(),
               prepare: Callable | None = None, orderings=None, spaces=None, threads: int = 1) -> list[CheckResult]:
    """Run ``checks`` (default: all of ``CHECKS`` but those in ``skip``) and return their results."""
    names = list(checks or CHECKS)
    unknown = [n for n in [*names, *skip] if n not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown check {unknown[0]!r}; checks: {', '.join(CHECKS)}")
    subject = Subject(model, config, prepare, orderings, spaces)
    return [run_check(n, subject, threads=threads) for n in names if n not in skip]


def check_normalization(model, config=None, **options) -> CheckResult:
    """sum exp(log_prob) over every image of tiny spaces is 1 (1e-5)."""
    return run_check("normalization", model, config, **options)


def check_chain_rule(model, config=None, **options) -> CheckResult:
    """log_prob equals the sum of log-softmax conditionals (1e-4 nats)."""
    return run_check("chain_rule", model, config, **options)


def check_causality(model, config=None, **options) -> CheckResult:
    """The conditional at d ignores values at d and after."""
    return run_check("causality", model, config, **options)


def check_step(model, config=None, **options) -> CheckResult:
    """Teacher-forced step equals conditional_logits (1e-5), int and tensor positions."""
    return run_check("step", model, config, **options)


def check_sampling(model, config=None, **options) -> CheckResult:
    """Sample frequencies match exp(log_prob) (chi-square, p >= 1e-3)."""
    return run_check("sampling", model, config, **options)


def check_round_trip(model, config=None, **options) -> CheckResult:
    """Checkpoint save and load through the registry keeps config, log_prob and samples."""
    return run_check("round_trip", model, config, **options)


def check_export(model, config=None, **options) -> CheckResult:
    """ONNX export parity (skipped without densreg.export)."""
    return run_check("export", model, config, **options)
