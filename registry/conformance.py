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

The checks (``CHECKS``, in this order; as run on a discrete family, see the module docstrings of
``registry.checks`` for real values):

- ``normalization``: sum of exp(log_prob) over every image of 1x2x3 (K=2) and 1x2x2
  (K=3) is 1 within 1e-5.
- ``chain_rule``: log_prob(x) equals the sum of the family's log_prob of the conditionals.
- ``causality``: the conditional at generation position d does not change when the
  values at positions >= d change: each position alone (x -> (x + 1) mod K), then every
  suffix at once (redrawn from 0..K-1), on 4 probe images drawn by
  ``torch.randint(0, K, (4, C, H, W))`` from a generator seeded with 1 (the suffixes from the
  same generator), so a verdict is reproducible.
- ``gradient_path``: with gradients on (the training path), log_prob and the conditionals equal
  their values under no_grad, stay causal (each position changed alone), and the gradient of
  log_prob is finite: every other check runs under no_grad.
- ``step``: under teacher forcing, ``step`` equals ``conditional_params``, with
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
  model's log_prob and samples against torch: the check the exporter's plugin registers
  (``register_checks``), skipped when none is loaded. Plugins may add checks of their own
  the same way (``all_checks``).

Every check is written once for every family (``registry.families``): the kind of the model's family
picks the tiny spaces (K >= 2 levels, or real values with K = 0) and the two kind-specific
strategies, normalization by enumeration or by quadrature and the sampling test by chi-square or
by the Rosenblatt transform. The checks live in ``registry.checks``: ``density`` (normalization,
chain_rule, causality, step), ``sampling``, ``files`` (round_trip, export), ``subject`` (the model
under test, random parameters, tolerances).

chain_rule, causality and step compare on a float64 copy of the model, within 1e-8 times the
parameters' scale (max(1, |value|); a difference of exactly the tolerance passes): float64 rounding
sits about six orders below that and a real defect (>= 1e-3) five orders above. A model that does
not run in float64 is compared in its own dtype within sqrt(eps) times that scale (3.5e-4 in
float32), and the detail says so.
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

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from .checks.density import NORMALIZATION_TOL, causality, chain_rule, normalization, step
from .checks.gradients import gradient_path
from .checks.files import EXPORT_TOL, NO_EXPORTER, export, round_trip
from .checks.sampling import SAMPLING_ALPHA, SAMPLING_SIZE, chi_square, ks_p_value, rosenblatt, sampling, spread_out
from .checks.subject import (DEFAULT_ORDERINGS, FLOAT64_TOL, CheckFailed, CheckSkipped, Subject, all_images,
                             describe, image_index, in_float64, random_images, random_values, randomize, space,
                             tolerance)
from .api import get_catalog
from .errors import ConfigError, ModelOutputError

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


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


CHECKS: dict[str, Callable[[Subject], str]] = {
    "normalization": normalization,
    "chain_rule": chain_rule,
    "causality": causality,
    "gradient_path": gradient_path,
    "step": step,
    "sampling": sampling,
    "round_trip": round_trip,
    "export": export,
}


def all_checks() -> dict[str, Callable[[Subject], str]]:
    """``CHECKS``, then the checks plugins add under other names (``register_checks``)."""
    added = get_catalog().checks
    return {**CHECKS, **{name: check for name, check in added.items() if name not in CHECKS}}


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
    checks = all_checks()
    if name not in checks:
        raise ConfigError(f"unknown check {name!r}; checks: {', '.join(checks)}")
    subject = model if isinstance(model, Subject) else Subject(model, config, prepare, orderings, spaces)
    start = time.perf_counter()
    try:
        with one_torch_thread(threads):
            status, detail = PASSED, checks[name](subject)
    except CheckFailed as exc:
        status, detail = FAILED, str(exc)
    except CheckSkipped as exc:
        status, detail = SKIPPED, str(exc)
    except ModelOutputError as exc:  # a result that breaks the protocol: the rule, named
        status, detail = FAILED, exc.rule
    except Exception as exc:  # the model raised: report it as the check's failure
        status, detail = FAILED, f"the model raised {describe(exc)}"
    return CheckResult(name, status, detail, time.perf_counter() - start)


def run_checks(model: str | Callable, config: dict | None = None, *, checks=None, skip=(),
               prepare: Callable | None = None, orderings=None, spaces=None, threads: int = 1) -> list[CheckResult]:
    """Run ``checks`` (default: every check, ``all_checks``, but those in ``skip``) and return their results."""
    known = all_checks()
    names = list(checks or known)
    unknown = [n for n in [*names, *skip] if n not in known]
    if unknown:
        raise ConfigError(f"unknown check {unknown[0]!r}; checks: {', '.join(known)}")
    subject = Subject(model, config, prepare, orderings, spaces)
    return [run_check(n, subject, threads=threads) for n in names if n not in skip]


COLOUR_SPACES = {True: (((3, 1, 2), 2), ((3, 1, 1), 3)), False: (((3, 1, 1), 0),)}
COLOUR_LEFT_OUT = ("round_trip", "export")  # they do not depend on the space's channels


def run_colour_checks(model: str | Callable, config: dict | None = None, *, checks=None, skip=(),
                      prepare: Callable | None = None, threads: int = 1) -> list[CheckResult]:
    """The checks again on colour spaces (``COLOUR_SPACES``: C = 3, the channels of a pixel generated
    R, G, B), each result named "NAME (colour)", but those in COLOUR_LEFT_OUT. A model that refuses
    C = 3 (ConfigError) gives one skipped result, "colour", saying so. Reversed channel masks pass
    on one-channel spaces: this is where ``causality`` meets them."""
    subject = Subject(model, config, prepare)
    subject.spaces = COLOUR_SPACES[subject.discrete]
    start = time.perf_counter()
    try:
        subject.build(*subject.spaces[0])
    except ConfigError as exc:
        return [CheckResult("colour", SKIPPED, f"not run: the model refuses {space(*subject.spaces[0], None)}: {exc}",
                            time.perf_counter() - start)]
    except Exception:  # noqa: BLE001 - the model breaks on colour: every check below says how
        pass
    names = [n for n in (checks or all_checks()) if n not in (*skip, *COLOUR_LEFT_OUT)]
    results = [run_check(name, subject, threads=threads) for name in names]
    return [CheckResult(f"{r.name} (colour)", r.status, r.detail, r.seconds) for r in results]


def _single(name: str, doc: str) -> Callable[..., CheckResult]:
    """``check_NAME(model, config=None, **options)``: ``run_check(NAME, ...)``, documented by ``doc``."""
    def check(model, config=None, **options) -> CheckResult:
        return run_check(name, model, config, **options)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = doc
    return check


check_normalization = _single("normalization", "sum (or integral) of exp(log_prob) over tiny spaces is 1.")
check_chain_rule = _single("chain_rule", "log_prob equals the sum of the family's log-probabilities of the conditionals.")
check_causality = _single("causality", "The conditional at d ignores values at d and after.")
check_gradient_path = _single("gradient_path", "With gradients on, log_prob and the conditionals equal no_grad's, "
                                                 "stay causal, and give finite gradients.")
check_step = _single("step", "Teacher-forced step equals conditional_params, int and tensor positions.")
check_sampling = _single("sampling", "Samples follow exp(log_prob) (chi-square, or the Rosenblatt transform).")
check_round_trip = _single("round_trip", "Checkpoint save and load through the registry keeps config, log_prob and samples.")
check_export = _single("export", "ONNX export parity (skipped without the exporter's plugin).")


__all__ = ["CHECKS", "COLOUR_SPACES", "all_checks", "run_colour_checks", "CheckFailed", "CheckResult", "CheckSkipped", "DEFAULT_ORDERINGS", "EXPORT_TOL", "FLOAT64_TOL",
           "NORMALIZATION_TOL", "NO_EXPORTER", "SAMPLING_ALPHA", "SAMPLING_SIZE", "Subject", "all_images",
           "check_causality", "check_chain_rule", "check_export", "check_normalization", "check_round_trip",
           "check_sampling", "check_gradient_path", "check_step", "chi_square", "image_index", "in_float64", "ks_p_value", "one_torch_thread",
           "random_images", "random_values", "randomize", "rosenblatt", "run_check", "run_checks", "spread_out",
           "tolerance"]
