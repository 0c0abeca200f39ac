"""The ``sampling`` check, written once for every family: samples must follow exp(log_prob).

- discrete family: 10000 samples on 1x2x2 (K=2) and 1x1x3 (K=3) against the exact probabilities of
  every image: chi-square goodness of fit, cells with expected count < 5 pooled, fails at p < 1e-3 (a
  correct model fails with probability 1e-3; the seed is fixed, so a result is reproducible). A
  distribution too concentrated for the test (fewer than 4 cells) is retried with the parameters scaled
  down; where it stays degenerate the space is "not run", and the check is skipped if no space ran.
- real family: 50000 samples on 1x1x1 and 1x1x3; each value goes through its exact conditional CDF
  (the family's ``cdf`` of ``conditional_params`` on the sample's own prefix: the Rosenblatt transform),
  which makes the values of a correct sampler independent uniforms. Per position a Kolmogorov-Smirnov
  test, and for each pair of neighbouring positions a chi-square test on an 8x8 grid; all at a
  Bonferroni share of SAMPLING_ALPHA.
"""

from __future__ import annotations

import math

import torch

from .density import expect_params
from .subject import CheckFailed, CheckSkipped, Subject, all_images, image_index, in_float64, notes_of, space, where

SAMPLING_SPACES = {True: (((1, 2, 2), 2), ((1, 1, 3), 3)), False: (((1, 1, 1), 0), ((1, 1, 3), 0))}
SAMPLING_SIZE = 10000  # chi-square noncentrality >= 4 N TV^2 = 100 for a sampler 5% off in total variation
REAL_SAMPLING_SIZE = 50000
SAMPLING_ALPHA = 1e-3
SAMPLING_MIN_DOF = 3  # fewer cells with expected count >= 5 than this: the distribution is degenerate
SAMPLING_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625)  # parameter scales tried against a degenerate distribution
PAIR_BINS = 8


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
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, dof, p


def spread_out(model, images: torch.Tensor) -> tuple[torch.Tensor, float]:
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


def discrete_sampling(subject: Subject) -> str:
    shown, not_run = [], []
    for shape, k, ordering, model in subject.first_variant(subject.spaces_or(SAMPLING_SPACES)):
        images = all_images(shape, k)
        probs, scale = spread_out(model, images)
        # shape, dtype and values 0..K-1: checked by the protocol (registry.returns.samples)
        samples = model.sample(SAMPLING_SIZE, generator=torch.Generator().manual_seed(0))
        counts = torch.bincount(image_index(samples, k), minlength=len(images)).double()
        expected = probs * SAMPLING_SIZE
        impossible = (counts > 0) & (probs == 0)
        if bool(impossible.any()):
            i = int(impossible.nonzero()[0])
            raise CheckFailed(f"sampled image {images[i].reshape(-1).tolist()}, whose log_prob is -inf")
        stat, dof, p = chi_square(counts, expected)
        where_ = space(shape, k, ordering)
        if dof < SAMPLING_MIN_DOF:
            not_run.append(f"{where_}: the distribution is degenerate (only {dof + 1} cells with expected count "
                           f">= 5 in {SAMPLING_SIZE} draws, parameters scaled down to {scale:g})")
            continue
        if not p >= SAMPLING_ALPHA:
            i = int(((counts - expected) / expected.clamp(min=1e-12).sqrt()).abs().argmax())
            raise CheckFailed(f"{SAMPLING_SIZE} samples on {where_} do not follow exp(log_prob): "
                              f"chi-square {stat:.1f} with {dof} degrees of freedom, p = {p:.2g} < {SAMPLING_ALPHA:g}; "
                              f"image {images[i].reshape(-1).tolist()} drawn {int(counts[i])} times, expected "
                              f"{float(expected[i]):.1f}: sample() (through step) must draw from the same "
                              "conditionals as log_prob")
        scaled = f", parameters scaled by {scale:g}" if scale != 1.0 else ""
        shown.append(f"{'x'.join(map(str, shape))} K={k}: chi2 {stat:.1f}, {dof} dof, p={p:.2g} >= "
                     f"{SAMPLING_ALPHA:g}{scaled}")
    if not shown:
        raise CheckSkipped("not run: " + "; ".join(not_run))
    return "; ".join(shown + [f"not run on {text}" for text in not_run]) + notes_of(subject)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for Kolmogorov's limit law K of sqrt(n) D_n: for lam >= 1 the alternating series
    2 sum_i (-1)^(i-1) exp(-2 i^2 lam^2); below 1, where that series converges too slowly (100 terms
    give 0.1 instead of 1 at lam = 0.002), 1 minus its theta-function form
    sqrt(2 pi) / lam sum_i exp(-(2i-1)^2 pi^2 / (8 lam^2)). Ten terms of either are exact in float64."""
    if lam >= 1.0:
        return 2 * sum((-1) ** (i - 1) * math.exp(-2 * i * i * lam * lam) for i in range(1, 11))
    if lam <= 0.0:
        return 1.0
    return 1.0 - math.sqrt(2 * math.pi) / lam * sum(math.exp(-(2 * i - 1) ** 2 * math.pi ** 2 / (8 * lam * lam))
                                                    for i in range(1, 11))


def ks_p_value(u: torch.Tensor) -> tuple[float, float]:
    """Kolmogorov-Smirnov test of values ``u`` (n,) against U(0, 1): (statistic, asymptotic p-value,
    with Stephens' small-sample correction)."""
    n = len(u)
    u = torch.sort(u.double()).values
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    stat = float(torch.maximum(ranks / n - u, u - (ranks - 1) / n).max())
    return stat, kolmogorov_sf((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * stat)


def pair_independence(u_first: torch.Tensor, u_next: torch.Tensor) -> tuple[float, int, float]:
    """Chi-square test that two columns of conditional CDF values (each (n,) in [0, 1]) are independent
    uniforms: counts on a PAIR_BINS x PAIR_BINS grid (a value of exactly 1 in the last bin) against n /
    PAIR_BINS^2 each. Returns (statistic, degrees of freedom, p-value)."""
    cells = (u_first * PAIR_BINS).long().clamp(max=PAIR_BINS - 1) * PAIR_BINS \
        + (u_next * PAIR_BINS).long().clamp(max=PAIR_BINS - 1)
    counts = torch.bincount(cells, minlength=PAIR_BINS ** 2).double()
    return chi_square(counts, torch.full_like(counts, len(u_first) / PAIR_BINS ** 2))


def rosenblatt(model, samples: torch.Tensor) -> torch.Tensor:
    """The conditional CDF of every value given its prefix: (n, C, H, W) -> (n, D) in [0, 1]."""
    out = []
    with torch.no_grad():
        for part in samples.split(5000):
            params = tuple(t.double() for t in expect_params(model, part))
            out.append(model.family.cdf(params, model.to_sequence(part).double()))
    return torch.cat(out)


def real_sampling(subject: Subject) -> str:
    shown = []
    for shape, k, ordering, model in subject.first_variant(subject.spaces_or(SAMPLING_SPACES)):
        n = REAL_SAMPLING_SIZE
        samples = model.sample(n, generator=torch.Generator().manual_seed(0))  # shape, dtype, finite: the protocol
        wide, _ = in_float64(model)
        u = rosenblatt(wide, samples.to(wide.value_dtype))
        d_total = u.shape[1]
        alpha = SAMPLING_ALPHA / (2 * d_total - 1)
        where_ = space(shape, k, ordering)
        worst, dofs = 1.0, []
        for d in range(d_total):
            stat, p = ks_p_value(u[:, d])
            if not p >= alpha:
                raise CheckFailed(f"{n} samples on {where_} do not follow the model's conditionals at position "
                                  f"{where(model, d)}: Kolmogorov-Smirnov statistic {stat:.4f} of the conditional CDF "
                                  f"values against U(0, 1), p = {p:.2g} < {alpha:.2g}: sample() (through step) must "
                                  "draw from the same conditionals as log_prob")
            worst = min(worst, p)
        for d in range(d_total - 1):
            stat, dof, p = pair_independence(u[:, d], u[:, d + 1])
            if not p >= alpha:
                raise CheckFailed(f"{n} samples on {where_}: the conditional CDF values at positions {d} and {d + 1} "
                                  f"are not independent uniforms (chi-square {stat:.1f}, {dof} dof, p = {p:.2g} < "
                                  f"{alpha:.2g}): a value is drawn given the wrong prefix")
            worst, dofs = min(worst, p), dofs + [dof]
        pairs = f", {len(dofs)} pair chi-square tests of {dofs[0]} dof" if dofs else ""
        shown.append(f"{'x'.join(map(str, shape))}: {d_total} Kolmogorov-Smirnov tests{pairs}, smallest p = "
                     f"{worst:.2g} >= {alpha:.2g}")
    return "; ".join(shown) + notes_of(subject)


def sampling(subject: Subject) -> str:
    """Chi-square against enumerated probabilities (discrete family) or the Rosenblatt transform (real)."""
    return discrete_sampling(subject) if subject.discrete else real_sampling(subject)
