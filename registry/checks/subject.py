"""The model under conformance check: building it on tiny spaces, its random parameters, probe values,
and the comparisons' tolerance. Shared by every check module (``registry.checks``).

A space is ``(event_shape, K)``: K >= 2 levels for a model of a discrete family, K = 0 for real values.
Which spaces a check uses by default depends on the kind of the model's family (``Subject.discrete``).
"""

from __future__ import annotations

import copy
import inspect
import math
import traceback
from pathlib import Path
from typing import Callable

import torch

from ..api import create_model, model_spec
from ..catalog import check_config
from ..errors import ConfigError
from ..families import Categorical
from ..protocol import DensityModel

DEFAULT_ORDERINGS = ("raster", "snake", "random:3")
FLOAT64_TOL = 1e-8  # times max(1, |logits|): rounding in float64 is ~1e-14 of that scale, a defect >= 1e-3


class CheckFailed(Exception):
    """Raised inside a check with the message the author should read."""


class CheckSkipped(Exception):
    """Raised inside a check when it does not apply."""


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


def is_discrete(model_or_factory) -> bool:
    """Whether a model (or the first family its factory declares) has integer values 0..K-1."""
    family = getattr(model_or_factory, "family", None)
    if family is not None and not isinstance(family, type):
        return family.discrete
    return getattr(model_or_factory, "families", (Categorical,))[0].discrete


def takes_real_values(factory) -> bool:
    """Whether a factory declares a family of real values (among others, maybe: MADE takes both kinds)."""
    return any(not family.discrete for family in getattr(factory, "families", (Categorical,)))


def takes_levels(factory) -> bool:
    """Whether a factory declares a family of integer levels 0..K-1 (among others, maybe)."""
    return any(family.discrete for family in getattr(factory, "families", (Categorical,)))


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
    Then (but for a closed-form fit) ``tame`` halves the parameters until the conditionals'
    parameters are within +-TAME_LIMIT on probe images.
    """
    gen = torch.Generator().manual_seed(seed)
    continuous = not is_discrete(model)
    with torch.no_grad():
        tensors = [*model.parameters(), *(model.buffers() if buffers else ())]
        for tensor in tensors:
            if tensor.is_floating_point():
                scale = tensor.shape[-1] ** -0.5 if continuous and tensor.dim() >= 2 and tensor.shape[-1] else 1.0
                tensor.copy_((torch.randn(tensor.shape, generator=gen) * scale).to(tensor.dtype))
    if getattr(model, "closed_form", False) and not buffers:
        if continuous:  # 2000 values: every component of a mixture gets enough
            model.fit_closed_form(random_values(model.event_shape, 2000, seed=seed))
        else:
            model.fit_closed_form(random_images(model.event_shape, model.num_categories, seed=seed))
    else:
        tame(model, seed)


TAME_LIMIT = 20.0  # the largest |parameter| of a conditional that the kit's random draw keeps
TAME_HALVINGS = 30


def tame(model, seed: int = 0) -> int:
    """Halve every floating parameter of ``model`` (in place) until the finite parameters of its
    conditionals on 20 probe images (``random_images``, or ``random_values`` for real values, seeded
    with ``seed``) are within +-TAME_LIMIT, at most TAME_HALVINGS times: an N(0, 1) draw through a
    wide or deep network gives logits in the hundreds, which no model meets in training and which
    make float32 rounding (export parity) look like a defect. Returns the number of halvings; a
    model whose conditionals raise or are not finite at all is left as it is (the checks say why)."""
    probe = (random_images(model.event_shape, model.num_categories, 20, seed) if is_discrete(model)
             else random_values(model.event_shape, 20, seed).to(model.value_dtype))
    for halvings in range(TAME_HALVINGS + 1):
        try:
            with torch.no_grad():
                params = model.family.unpack(model.family.params(model.conditional_params(probe)))
            finite = [t[torch.isfinite(t)] for t in params]
        except Exception:  # noqa: BLE001 - the checks report a model that cannot run
            return halvings
        largest = max((float(t.abs().max()) for t in finite if t.numel()), default=0.0)
        if largest <= TAME_LIMIT or halvings == TAME_HALVINGS:
            return halvings
        with torch.no_grad():
            for param in model.parameters():
                if param.is_floating_point():
                    param.mul_(0.5)
    return TAME_HALVINGS


def takes(factory, key: str) -> bool:
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
        # the kind of the spaces given (a model that takes both kinds is checked on one at a time), else of
        # the model's first family: chooses the default spaces and the kind-specific strategies
        self.discrete = all(int(k) != 0 for _, k in spaces) if spaces else is_discrete(self.factory)
        if spaces and len({int(k) != 0 for _, k in spaces}) > 1:
            raise ConfigError("spaces mix levels (K >= 2) and real values (K = 0): check each kind on its own")
        check_config(self.factory, self.config)  # a bad key or value is the caller's error, not the model's
        self.prepare = prepare or randomize
        self.spaces = tuple((tuple(shape), int(k)) for shape, k in spaces) if spaces else None
        self.notes: dict[str, list[str]] = {}
        if "ordering" in self.config or not takes(self.factory, "ordering"):
            self.orderings = (None,)
        else:
            self.orderings = tuple(orderings or DEFAULT_ORDERINGS)

    def spaces_or(self, default):
        """The tiny spaces a check runs on: ``spaces`` given to the subject, else the check's own (a dict
        from ``discrete`` to spaces picks by the model's kind)."""
        if self.spaces:
            return self.spaces
        return default[self.discrete] if isinstance(default, dict) else default

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
                              f"{describe(exc)}") from exc
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
                    self.notes.setdefault(str(exc), []).append(space(shape, k, ordering))
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
                    refused.setdefault(str(exc), []).append(space(shape, k, ordering))
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


def space(shape, k, ordering) -> str:
    text = f"{'x'.join(map(str, shape))} K={k}"
    return text + (f", ordering {ordering!r}" if ordering else "")


def where(model, d: int) -> str:
    flat = int(model.order[d])
    c_count, height, width = model.event_shape
    c, rest = divmod(flat, height * width)
    h, w = divmod(rest, width)
    return f"{d} (c={c}, h={h}, w={w})"


def describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def notes_of(subject) -> str:
    """A short note on what the model refused (ConfigError) when the check passed on the rest."""
    if not subject.notes:
        return ""
    count = sum(len(places) for places in subject.notes.values())
    message, places = next(iter(subject.notes.items()))
    return f" (not run on {count} refused space/ordering pairs, e.g. {places[0]}: {message})"


def method_name(model) -> str:
    """How the author named the teacher-forced pass: conditional_logits or conditional_params."""
    overrides_logits = type(model).conditional_logits is not DensityModel.conditional_logits
    return "conditional_logits" if isinstance(model.family, Categorical) and overrides_logits else \
        "conditional_params"


def in_float64(model) -> tuple[DensityModel, str]:
    """A float64 copy of ``model`` for the comparisons, and "" ; or ``model`` itself and why
    it stays in its own dtype (the copy raises, or its logits do not come out in float64)."""
    try:
        wide = copy.deepcopy(model).double()
        with torch.no_grad():
            zeros = torch.zeros(1, *model.event_shape, dtype=wide.value_dtype)
            probe = wide.family.unpack(wide.conditional_params(zeros))[0]
    except Exception as exc:  # noqa: BLE001 - any failure means: compare in the model's dtype
        return model, f"the model does not run in float64 ({describe(exc)})"
    if probe.dtype != torch.float64:
        return model, f"{method_name(model)} of model.double() come out in {probe.dtype}"
    return wide, ""


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """How far two computations of values of magnitude ``scale`` may differ by rounding alone:
    FLOAT64_TOL in float64, sqrt(eps) in other float dtypes, times max(1, scale)."""
    base = FLOAT64_TOL if dtype == torch.float64 else torch.finfo(dtype).eps ** 0.5
    return base * max(1.0, scale)


def wide_variants(subject: Subject, spaces):
    """``subject.variants`` with each model replaced by its float64 copy where it has one;
    yields (shape, K, ordering, model, note), ``note`` saying why a model stayed in its dtype."""
    for shape, k, ordering, model in subject.variants(spaces):
        wide, why = in_float64(model)
        yield shape, k, ordering, wide, why


def dtype_note(notes: list[str]) -> str:
    return f" (in float32 where {notes[0]})" if notes else " (in float64)"


