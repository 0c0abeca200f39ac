"""The density checks, written once for every family: ``normalization``, ``chain_rule``, ``causality``, ``step``.

- ``normalization``: a discrete family's exp(log_prob) summed over every image of 1x2x3 (K=2) and
  1x2x2 (K=3) is 1 within 1e-5; a real family's integrates to 1 within 1e-4 on 1x1x1 and 1x1x2, by
  Gauss-Legendre quadrature on the family's ``integration_points`` of every conditional being
  integrated (for x_1, those given each x_0 node).
- ``chain_rule``: log_prob(x) equals the sum over positions of the family's ``log_prob`` of
  ``conditional_params`` (computed here in float64), and the parameters are (B, D, P) and finite
  (logits may be -inf: probability zero); on every image of the discrete spaces, on 16 probes of 1x2x3
  (``random_values`` seeded with 4) for a real family.
- ``causality``: the conditionals at positions <= j do not change when x at position j changes (each
  position alone, then every suffix at once), on 4 probe images (discrete: ``torch.randint`` from a
  generator seeded with 1; real: ``random_values`` seeded with 1, changed by N(0.5, 1) steps); for a
  real family also by gradients (d params_d / d x_j = 0 for j >= d).
- ``step``: under teacher forcing, ``step`` equals ``conditional_params``, with ``position`` an int
  and a 0-dim int64 tensor; the state keeps its shapes.

The comparisons use the family's ``comparable`` view of the parameters on a float64 copy of the model,
within 1e-8 times the scale (max(1, |value|)); see ``subject.tolerance``.
"""

from __future__ import annotations

import math

import torch

from .. import returns
from ..errors import ModelOutputError
from .subject import (CheckFailed, CheckSkipped, Subject, all_images, describe, dtype_note, in_float64, method_name, notes_of,
                      random_values, space, tolerance, where, wide_variants)

NORMALIZATION_SPACES = {True: (((1, 2, 3), 2), ((1, 2, 2), 3)), False: (((1, 1, 1), 0), ((1, 1, 2), 0))}
CHAIN_SPACES = {True: NORMALIZATION_SPACES[True], False: (((1, 2, 3), 0),)}
CAUSALITY_SPACES = {True: (((1, 2, 3), 2), ((1, 2, 2), 3)), False: (((1, 2, 3), 0),)}
STEP_SPACES = {True: (((1, 2, 3), 2), ((1, 2, 3), 3)), False: (((1, 2, 3), 0),)}
NORMALIZATION_TOL = {True: 1e-5, False: 1e-4}


def expect_params(model, x) -> tuple:
    """The model's parameters for ``x`` as a tuple of (B, D, P) tensors, finite (logits may be -inf); the
    protocol's rules (``registry.returns``), whose ModelOutputError the check reports as its failure."""
    raw = model.conditional_params(x)  # checked by the protocol where it is the outermost call
    leading = (x.shape[0], model.num_positions)
    return model.family.unpack(returns.params(model, method_name(model), raw, model.family, leading))


def probe_values(model, shape, k: int, n: int, seed: int, generator: torch.Generator | None = None):
    """``n`` probe images of a space: integers from ``generator`` (seeded with ``seed`` if not given) for a
    discrete family, ``random_values`` seeded with ``seed`` for a real one (in the model's dtype)."""
    if model.family.discrete:
        generator = generator or torch.Generator().manual_seed(seed)
        return torch.randint(0, k, (n, *shape), generator=generator)
    return random_values(shape, n, seed=seed).to(model.value_dtype)


def changed_at(model, seq, positions, k: int, generator: torch.Generator):
    """``seq`` (B, D) with the values at ``positions`` (a slice or an index) changed: (x + 1) mod K for one
    discrete position, redrawn for several; for real values moved by N(0.5, 1), or redrawn as N(0, 4)."""
    changed = seq.clone()
    one = isinstance(positions, int)
    part = changed[:, positions]
    if model.family.discrete:
        changed[:, positions] = (part + 1) % k if one else torch.randint(0, k, part.shape, generator=generator)
    elif one:
        changed[:, positions] = part + torch.randn(len(seq), generator=generator).to(seq.dtype) + 0.5
    else:
        changed[:, positions] = torch.randn(part.shape, generator=generator).to(seq.dtype) * 2
    return changed


def comparable(model, x):
    return model.family.comparable(expect_params(model, x))


# -- normalization -------------------------------------------------------------------------
def total_mass(model, shape, k: int) -> float:
    """The sum (discrete) or integral (real) of exp(log_prob) over the whole space."""
    if model.family.discrete:
        images = all_images(shape, k)
        with torch.no_grad():
            log_p = model.log_prob(images)
        if tuple(log_p.shape) != (len(images),):
            raise CheckFailed(f"log_prob returned shape {tuple(log_p.shape)} for {len(images)} images, "
                              f"expected ({len(images)},)")
        if bool(torch.isnan(log_p).any()):
            raise CheckFailed(f"log_prob returned NaN on {space(shape, k, model.ordering)}")
        return float(log_p.double().exp().sum())
    return integral(in_float64(model)[0], shape)


def integral(model, shape) -> float:
    """The integral of exp(log_prob) over R^D for D = 1 or 2, by nested quadrature (module docstring)."""
    d, dtype, family = math.prod(shape), model.value_dtype, model.family
    with torch.no_grad():
        first = tuple(t[:, 0] for t in expect_params(model, torch.zeros(1, *shape, dtype=dtype)))
        x0, w0 = family.integration_points(first)  # (1, N)
        if d == 1:
            return float((model.log_prob(x0.reshape(-1, *shape).to(dtype)).double().exp() * w0[0]).sum())
        prefix = torch.zeros(x0.shape[1], d, dtype=torch.float64)
        prefix[:, 0] = x0[0]
        second = tuple(t[:, 1] for t in expect_params(model, model.from_sequence(prefix.to(dtype))))
        x1, w1 = family.integration_points(second)  # (N0, N1)
        seq = torch.stack([x0[0].unsqueeze(-1).expand_as(x1), x1], -1).reshape(-1, 2)
        total = 0.0
        for part, weights in zip(seq.split(20000), (w0[0].unsqueeze(-1) * w1).reshape(-1).split(20000)):
            total += float((model.log_prob(model.from_sequence(part.to(dtype))).double().exp() * weights).sum())
        return total


def normalization(subject: Subject) -> str:
    worst, tol, too_many, integrated = 0.0, NORMALIZATION_TOL[subject.discrete], [], []
    spaces = subject.spaces_or(NORMALIZATION_SPACES)
    variants = subject.variants(spaces) if subject.discrete else subject.first_variant(spaces)
    for shape, k, ordering, model in variants:
        if not subject.discrete and math.prod(shape) > 2:  # quadrature covers R and R^2
            too_many.append(space(shape, k, ordering))
            continue
        total = total_mass(model, shape, k)
        if not abs(total - 1.0) <= tol:
            how = (f"sum of exp(log_prob) over all {k ** math.prod(shape)} images of {space(shape, k, ordering)} is "
                   f"{total:.6g}" if model.family.discrete else
                   f"exp(log_prob) integrates to {total:.6g} over R^{math.prod(shape)} ({space(shape, k, ordering)})")
            raise CheckFailed(f"{how}, not 1 (tolerance {tol:g}): "
                              f"log_prob is not a normalized density (each conditional must be a normalized "
                              f"{model.family.describe()}, and log_prob their sum)")
        worst = max(worst, abs(total - 1.0))
        integrated.append(shape)
    skipped = f"; not run on {', '.join(too_many)}: the integral is computed over 1 or 2 values only" if too_many \
        else ""
    if not integrated:
        raise CheckSkipped(skipped[2:])
    how = "sums" if subject.discrete else "integrals (Gauss-Legendre on 1-D and 2-D spaces)"
    return f"{how} within {worst:.1e} of 1{skipped}" + notes_of(subject)


# -- chain rule ------------------------------------------------------------------------------
def chain_rule(subject: Subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in wide_variants(subject, subject.spaces_or(CHAIN_SPACES)):
        notes += [why] if why else []
        x = all_images(shape, k) if model.family.discrete else random_values(shape, 16, seed=4).to(model.value_dtype)
        with torch.no_grad():
            params = expect_params(model, x)
            seq = model.to_sequence(x)
            chain = model.family.log_prob(tuple(t.double() for t in params), seq if model.family.discrete
                                          else seq.double()).sum(-1)
            log_p = model.log_prob(x).double()
        diff = (chain - log_p).abs()
        tol = tolerance(params[0].dtype, float(log_p.abs().max()))
        if not float(diff.max()) <= tol:  # NaN fails
            i = int(diff.nan_to_num(float("inf")).argmax())
            image = f" on image {x[i].reshape(-1).tolist()}" if model.family.discrete else ""
            raise CheckFailed(f"log_prob differs from the chain rule of {method_name(model)} by "
                              f"{float(diff[i]):.3g} nats{image} of {space(shape, k, ordering)} (log_prob "
                              f"{float(log_p[i]):.5f}, sum of conditionals {float(chain[i]):.5f}; tolerance {tol:.2g} "
                              f"in {params[0].dtype}): sampling and per-pixel scores use the conditionals, so they "
                              "must agree with log_prob")
        worst = max(worst, float(diff.max()))
    return f"log_prob equals the sum of conditionals within {worst:.1e} nats{dtype_note(notes)}" + notes_of(subject)


# -- causality -------------------------------------------------------------------------------
def peek(model, shape, k, ordering, j, p, diff, tol, how="changed by") -> CheckFailed:
    what = "the model sees the value it predicts (x_d)" if p == j else "the model peeks at the future"
    return CheckFailed(f"conditional at position {where(model, p)} {how} {diff:.3g} when x at position "
                       f"{where(model, j)} changed ({space(shape, k, ordering)}; positions count in generation "
                       f"order; tolerance {tol:.2g}): {what}")


def causal_gradients(model, shape, k, ordering, seq, generator) -> None:
    """A real family: d params_d / d x_j is 0 for every j >= d (CheckFailed otherwise)."""
    for d in range(model.num_positions):
        wanted = seq.clone().requires_grad_(True)
        params = comparable(model, model.from_sequence(wanted))
        weights = torch.randn(params[:, d].shape, generator=generator, dtype=torch.float64).to(params.dtype)
        (grad,) = torch.autograd.grad((params[:, d] * weights).sum(), wanted, allow_unused=True)
        if grad is None:
            continue
        tol = tolerance(params.dtype, float(params.detach().abs().max()))
        late = grad[:, d:].abs().amax(0)
        if not float(late.max()) <= tol:
            j = d + int((~(late <= tol)).nonzero()[0])
            raise peek(model, shape, k, ordering, j, d, float(late.max()), tol, "has a gradient of")


def each_position(model, shape, k, ordering, seq, base, tol: float, generator) -> None:
    """The value at each position j changed alone (``changed_at``): the conditionals at positions <= j
    stay ``base`` (the comparable parameters of ``seq``) within ``tol``; CheckFailed naming the first
    position that moved. Runs in the caller's grad mode."""
    for j in range(model.num_positions):
        moved = comparable(model, model.from_sequence(changed_at(model, seq, j, k, generator)))[:, : j + 1].detach()
        diff = (moved - base[:, : j + 1]).abs().flatten(2).amax(dim=(0, 2))
        if not float(diff.max()) <= tol:
            p = int((~(diff <= tol)).nonzero()[0])
            raise peek(model, shape, k, ordering, j, p, float(diff[p]), tol)


def causality(subject: Subject) -> str:
    checked, notes = 0, []
    for shape, k, ordering, model, why in wide_variants(subject, subject.spaces_or(CAUSALITY_SPACES)):
        notes += [why] if why else []
        gen = torch.Generator().manual_seed(1)
        x = probe_values(model, shape, k, 4, seed=1, generator=gen)
        seq = model.to_sequence(x)
        if not model.family.discrete:
            causal_gradients(model, shape, k, ordering, seq, gen)
        with torch.no_grad():
            base = comparable(model, x)
            tol = tolerance(base.dtype, float(base.abs().max()))
            each_position(model, shape, k, ordering, seq, base, tol, gen)
            for d in range(model.num_positions):  # every value at and after d at once
                changed = changed_at(model, seq, slice(d, None), k, gen)
                diff = (comparable(model, model.from_sequence(changed))[:, : d + 1] - base[:, : d + 1]).abs()
                if not float(diff.max()) <= tol:
                    raise CheckFailed(f"conditionals up to position {d} changed by {float(diff.max()):.3g} when the "
                                      f"values at positions {d} and later changed together "
                                      f"({space(shape, k, ordering)}; tolerance {tol:.2g} in {base.dtype}): the "
                                      "model peeks at the future")
        checked += 1
    how = "" if subject.discrete else " (and zero gradients on every later value)"
    return f"{checked} space/ordering pairs, every position perturbed{how}{dtype_note(notes)}" + notes_of(subject)


# -- step ------------------------------------------------------------------------------------
def check_state(state) -> list[tuple]:
    if not isinstance(state, tuple) or not all(isinstance(t, torch.Tensor) for t in state):
        raise CheckFailed(f"initial_state returned {type(state).__name__}, expected a tuple of tensors")
    return [tuple(t.shape) for t in state]


def step(subject: Subject) -> str:
    worst, notes = 0.0, []
    for shape, k, ordering, model, why in wide_variants(subject, subject.spaces_or(STEP_SPACES)):
        notes += [why] if why else []
        family, x = model.family, probe_values(model, shape, k, 3, seed=2)
        seq = model.to_sequence(x)
        with torch.no_grad():
            expected = comparable(model, x)
            tol = tolerance(expected.dtype, float(expected.abs().max()))
            for as_tensor in (False, True):
                kind = "a 0-dim int64 tensor" if as_tensor else "an int"
                state = model.initial_state(3)
                shapes = check_state(state)
                value = torch.zeros(3, dtype=seq.dtype)
                for d in range(model.num_positions):
                    position = torch.tensor(d, dtype=torch.int64) if as_tensor else d
                    try:
                        out, state = model.step(value, position, state)
                        got = family.comparable(family.unpack(family.params(out)))
                    except ModelOutputError:
                        raise  # the rule it broke, named by the protocol
                    except Exception as exc:
                        raise CheckFailed(f"step at position {d} with the position given as {kind} raised "
                                          f"{describe(exc)}") from exc
                    if tuple(got.shape) != tuple(expected[:, d].shape):
                        what, letter = ("logits", "K") if family.discrete else ("parameters", "P")
                        raise CheckFailed(f"step returned {what} of shape {tuple(got.shape[:-1])}, expected "
                                          f"(B, {letter}) = {tuple(expected[:, d].shape[:-1])}")
                    if [tuple(t.shape) for t in state] != shapes:
                        raise CheckFailed(f"the state changed shape from {shapes} to {[tuple(t.shape) for t in state]}"
                                          f" at position {d}: the state must be a tuple of fixed-shape tensors (for "
                                          "export)")
                    diff = float((got.double() - expected[:, d].double()).abs().max())
                    if not diff <= tol:
                        raise CheckFailed(f"step at position {where(model, d)} (position given as {kind}, "
                                          f"{space(shape, k, ordering)}) differs from {method_name(model)} by "
                                          f"{diff:.3g} (tolerance {tol:.2g} in {expected.dtype}) under teacher "
                                          "forcing: value is x at the previous position (zeros at 0) and the "
                                          "cached state must reproduce the full pass")
                    worst = max(worst, diff)
                    value = seq[:, d]
    return (f"teacher-forced steps match within {worst:.1e} (int and tensor positions){dtype_note(notes)}"
            + notes_of(subject))
