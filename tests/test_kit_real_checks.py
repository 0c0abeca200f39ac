"""The conformance kit on real values, check by check: the statistics of the sampling check (Kolmogorov's
law, the pair test), what each check reports on a correct model, and which defect each part of a check
catches on its own, named as documented (the gradient part of causality, the pair part of sampling)."""

import math
import re

import numpy as np
import pytest
import torch

from densreg.registry import ContinuousDensityModel, MixtureParams
from densreg.registry.checks.sampling import (PAIR_BINS, REAL_SAMPLING_SIZE, SAMPLING_ALPHA, kolmogorov_sf,
                                              ks_p_value, pair_independence)
from densreg.registry.conformance import run_check
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture


def test_kolmogorovs_law_matches_scipy_on_both_sides_of_the_switch():
    from scipy import special

    for lam in [0.0005, 0.002, 0.01, 0.1, 0.3, 0.5, 0.8, 0.99, 0.999999, 1.0, 1.000001, 1.2, 1.7, 2.5, 4.0]:
        assert kolmogorov_sf(lam) == pytest.approx(float(special.kolmogorov(lam)), abs=1e-13), lam
    assert kolmogorov_sf(0.0) == 1.0


def test_a_perfectly_even_sample_gets_p_one_not_the_truncated_series_value():
    """50000 values (i + 0.5) / n: D_n = 1 / (2n), lam = 0.0022, where 100 terms of the alternating series
    gave p = 0.096."""
    n = REAL_SAMPLING_SIZE
    stat, p = ks_p_value((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    assert stat == pytest.approx(0.5 / n) and p == 1.0


@pytest.mark.parametrize("top", [1.0, 0.5])
def test_the_pair_test_is_pearsons_on_an_8x8_grid_with_1_in_the_last_bin(top):
    """Cells counted like numpy's histogram2d: a value of exactly 1 in the last bin (not a ninth row or
    column), empty cells counted as 0 (``top`` = 0.5 leaves the upper half of the grid empty)."""
    from scipy import stats

    gen = torch.Generator().manual_seed(5)
    n = 1001  # not a multiple of 64: the expected count is fractional
    a, b = (torch.rand(n, generator=gen, dtype=torch.float64) * top for _ in range(2))
    a[:7], b[3:10], b[12:20] = top, 0.0, top
    counts, _, _ = np.histogram2d(a.numpy(), b.numpy(), bins=PAIR_BINS, range=[[0, 1], [0, 1]])
    expected = stats.chisquare(counts.reshape(-1))
    stat, dof, p = pair_independence(a, b)
    assert (stat, dof) == (pytest.approx(expected.statistic, rel=1e-12), PAIR_BINS ** 2 - 1)
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


class Normals(ContinuousDensityModel):
    """D independent N(shift, 1) values (one component): conditionals that ignore the prefix, so a sampler's
    defect is only what ``defect`` makes it:

    - "reuse": position 2 reuses position 1's noise (every value uniform, positions 1 and 2 dependent);
    - "wide": every value drawn 10% too wide;
    - "shape+1" / "shape-1": one value too many / too few; "int": rounded to integers.

    Each call of ``sample`` records its generator's seed in ``seeds``.
    """

    defect, seeds = "", []

    def __init__(self, event_shape=(1, 1, 3), num_categories: int = 0, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.shift = torch.nn.Parameter(torch.zeros(()))

    def conditional_params(self, x):
        seq = self.to_sequence(self.validate(x))
        zeros = torch.zeros(*seq.shape, 1, dtype=seq.dtype)
        return MixtureParams(zeros, zeros + self.shift, zeros)

    def sample(self, n, generator=None, noise=None):
        self.seeds.append(generator.initial_seed())
        if self.defect == "reuse" and self.num_positions >= 3:
            noise = torch.rand(self.noise_shape(n), generator=generator, dtype=torch.float64)
            noise[:, 2] = noise[:, 1]
        x = super().sample(n, generator=generator, noise=noise)
        if self.defect == "wide":
            return (x - self.shift.detach()) * 1.1 + self.shift.detach()
        if self.defect in ("shape+1", "shape-1"):
            return torch.cat([x, x], -1) if self.defect == "shape+1" else x[..., 1:]
        return x.round().long() if self.defect == "int" else x


def normals(defect: str = ""):
    return type(f"Normals{defect}", (Normals,), {"defect": defect, "seeds": []})


def test_a_correct_sampler_passes_with_the_documented_tests_at_bonferroni_shares():
    """1x1x1: one KS test at alpha; 1x1x3: three KS and two pair tests (63 dof) at alpha / 5; sampled with a
    generator seeded 0 (reproducible)."""
    model = normals()
    result = run_check("sampling", model)
    assert result.passed, result.detail
    one, three = re.fullmatch(r"1x1x1: 1 Kolmogorov-Smirnov tests, smallest p = (\S+) >= 0.001; "
                              r"1x1x3: 3 Kolmogorov-Smirnov tests, 2 pair chi-square tests of 63 dof, "
                              r"smallest p = (\S+) >= 0.0002", result.detail).groups()
    assert SAMPLING_ALPHA < float(one) <= 1 and SAMPLING_ALPHA / 5 < float(three) <= 1
    assert model.seeds == [0, 0]


def test_noise_reused_between_two_positions_is_caught_by_the_pair_test_alone():
    result = run_check("sampling", normals("reuse"))
    assert result.failed and "1x1x3 K=0" in result.detail, result.detail
    assert "the conditional CDF values at positions 1 and 2 are not independent uniforms" in result.detail
    assert "p = 0 < 0.0002" in result.detail


def test_a_sampler_too_wide_is_named_by_its_kolmogorov_smirnov_test():
    result = run_check("sampling", normals("wide"))
    assert result.failed and "do not follow the model's conditionals at position 0 (c=0, h=0, w=0)" in result.detail
    assert "Kolmogorov-Smirnov statistic" in result.detail and "< 0.001" in result.detail, result.detail


@pytest.mark.parametrize("defect, got", [("shape+1", "torch.float32 of shape (50000, 1, 1, 2)"),
                                         ("shape-1", "torch.float32 of shape (50000, 1, 1, 0)"),
                                         ("int", "torch.int64 of shape (50000, 1, 1, 1)")])
def test_samples_of_the_wrong_shape_or_kind_are_named(defect, got):
    result = run_check("sampling", normals(defect))
    assert result.failed and result.detail.startswith(
        f"sample(50000) returned {got}, expected floats of shape (50000, 1, 1, 1)"), result.detail


class Peeking(Normals):
    """Normals whose conditional at d also moves with x at d + 1 and d + 2 (cyclically): the means by
    +eps x, the log-scales by -eps x, so the parameters' plain sum does not change; ``first`` = False makes
    position 0 exact (constant parameters, no gradient path at all) and the peek start at position 1."""

    eps, first = 1e-3, True

    def conditional_params(self, x):
        params = super().conditional_params(x)
        seq = self.to_sequence(self.validate(x))
        peek = self.eps * (seq.roll(-1, 1) + seq.roll(-2, 1)).unsqueeze(-1)
        if not self.first:
            peek = torch.cat([torch.zeros_like(peek[:, :1]), peek[:, 1:]], 1)
            params = params._replace(means=torch.cat([params.means[:, :1].detach(), params.means[:, 1:]], 1))
        return params._replace(means=params.means + peek, log_scales=params.log_scales - peek)


def test_a_correct_model_passes_causality_with_its_gradients_checked():
    for model in (Normals, type("ExactFirst", (Peeking,), {"eps": 0.0, "first": False})):
        result = run_check("causality", model)
        assert result.passed and "(and zero gradients on every later value)" in result.detail, result.detail


@pytest.mark.parametrize("first, d, j", [(True, "0 (c=0, h=0, w=0)", "1 (c=0, h=0, w=1)"),
                                         (False, "1 (c=0, h=0, w=1)", "2 (c=0, h=0, w=2)")])
def test_a_peek_is_found_by_its_gradient_first_and_named(first, d, j):
    """The gradient test weighs the parameters at random: a peek whose effects cancel in their plain sum is
    found; the first later value with a gradient is named; a position with no gradient path is passed over."""
    result = run_check("causality", type("Peek", (Peeking,), {"first": first}))
    assert result.failed, result.detail
    assert re.match(rf"conditional at position {re.escape(d)} has a gradient of \S+ when x at position "
                    rf"{re.escape(j)} changed \(1x2x3 K=0", result.detail), result.detail
    assert result.detail.endswith("the model peeks at the future")


def test_a_real_model_reports_integrals():
    result = run_check("normalization", Normals)
    assert result.passed and result.detail.startswith("integrals (Gauss-Legendre on 1-D and 2-D spaces) within")
    assert "not run" not in result.detail  # 1x1x1 and 1x1x2 both integrated
    assert math.isfinite(float(re.search(r"within (\S+) of 1", result.detail)[1]))


def test_step_parameters_of_the_wrong_shape_are_named_as_parameters():
    class Wrong(Normals):
        def step(self, value, position, state):
            params, state = super().step(value, position, state)
            return MixtureParams(*(t.unsqueeze(0) for t in params)), state

    result = run_check("step", Wrong)
    assert result.failed and result.detail.startswith(
        "step returned parameters of shape (1, 3, 1), expected (B, P) = (3, 1)"), result.detail


def test_the_kit_reads_the_kind_of_values_off_the_family_a_model_emits():
    """A model that can emit two families: its factory counts as its first declared family, an instance as
    the family it was built with."""
    from densreg.registry import DensityModel
    from densreg.registry.checks.subject import is_discrete
    from densreg.registry.families import Categorical, GaussianMixture

    class Either(DensityModel):
        families = (GaussianMixture, Categorical)

    assert not is_discrete(Either) and is_discrete(type("CategoricalFirst", (Either,), {"families": (Categorical,
                                                                                                    GaussianMixture)}))
    assert is_discrete(Either((1, 1, 2), 2, family=Categorical(2)))
    assert not is_discrete(Either((1, 1, 2), 0, family=GaussianMixture(2)))


@pytest.mark.parametrize("check, seed, n", [("chain_rule", 4, 16), ("causality", 1, 4), ("gradient_path", 3, 8)])
def test_the_kit_probes_real_models_with_the_documented_values(check, seed, n):
    """The first batch of the documented count that a check evaluates is ``random_values`` of its documented
    seed (on 1x2x3), so that an author can reproduce a failure by hand."""
    from densreg.registry.conformance import random_values

    class Recording(Normals):
        seen = []

        def conditional_params(self, x):
            self.seen.append(x.detach().clone())
            return super().conditional_params(x)

    assert run_check(check, Recording).passed
    first = next(x for x in Recording.seen if len(x) == n)
    assert torch.equal(first.double(), random_values((1, 2, 3), n, seed=seed).double())


def test_the_kits_random_draw_keeps_the_conditionals_of_a_deep_network_of_order_one():
    """An N(0, 1) draw through four 64-wide layers gives logits in the hundreds; randomize halves the
    parameters until they are within TAME_LIMIT on the probes, and leaves a small model's draw alone."""
    from densreg.registry import DensityModel
    from densreg.registry.checks.subject import TAME_LIMIT, random_images, randomize, tame

    class Deep(DensityModel):
        def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
            super().__init__(event_shape, num_categories, ordering)
            d, layers = self.num_positions, [torch.nn.Linear(self.num_positions, 64)]
            for _ in range(2):
                layers += [torch.nn.ReLU(), torch.nn.Linear(64, 64)]
            self.net = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(64, d * num_categories))

        def conditional_logits(self, x):
            seq = self.to_sequence(self.validate(x)).float()
            return self.net(seq).reshape(len(x), self.num_positions, self.num_categories)

    def largest_logit(model):
        return float(model.conditional_logits(random_images(model.event_shape, 2, 20, 0)).detach().abs().max())

    model = Deep()
    randomize(model, 0)
    tamed = largest_logit(model)
    assert 0.5 < tamed <= TAME_LIMIT and tame(model, 0) == 0  # within the limit: a second tame changes nothing
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)
    assert largest_logit(model) > 10 * TAME_LIMIT and tame(model, 0) >= 2 and largest_logit(model) <= TAME_LIMIT
    small = Normals()
    randomize(small, 0)
    before = [p.clone() for p in small.parameters()]
    assert tame(small, 0) == 0 and all(torch.equal(a, b) for a, b in zip(before, small.parameters()))


class GradientOnly(Normals):
    """Normals with a defect only while autograd records (``how``): "shift" moves the means; "log_prob" adds
    0.01 nats to log_prob alone; "nan" puts a NaN in the gradient of ``shift``, "nan2" in that of ``spare``
    too; "peek" makes the conditional at d move with x at d + 1 by 0.01 times its distance from the kit's
    probe (so that on the probe itself the values agree with no_grad's)."""

    how = ""

    def __init__(self, event_shape=(1, 1, 3), num_categories: int = 0, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.spare = torch.nn.Parameter(torch.zeros(()))

    def conditional_params(self, x):
        params = super().conditional_params(x)
        if not torch.is_grad_enabled() or self.how in ("", "log_prob"):
            return params
        if self.how in ("nan", "nan2"):
            broken = (self.shift * 0).sqrt() + ((self.spare * 0).sqrt() if self.how == "nan2" else 0)
            return params._replace(means=params.means + broken)  # value 0, gradient 0 * inf
        if self.how == "peek":
            from densreg.registry.conformance import random_values

            seq = self.to_sequence(x)
            probe = self.to_sequence(random_values(self.event_shape, len(x), seed=3).to(seq.dtype))
            return params._replace(means=params.means + 0.01 * (seq - probe).roll(-1, 1).unsqueeze(-1))
        return params._replace(means=params.means + 1e-3)

    def log_prob(self, x):
        return super().log_prob(x) + (0.01 if self.how == "log_prob" and torch.is_grad_enabled() else 0.0)


@pytest.mark.parametrize("how, message", [
    ("", r"^3 space/ordering pairs: log_prob and conditionals with gradients on within 0\.0e\+00 of no_grad, causal, "
         r"finite gradients \(in float64\)$"),
    ("shift", r"^conditional_params with gradients on differs from its value under no_grad by 0.001 on 1x2x3 K=0"),
    ("log_prob", r"^log_prob with gradients on differs from its value under no_grad by 0.01 nats on 1x2x3 K=0"),
    ("peek", r"^with gradients on \(the training path\): conditional at position 0 \(c=0, h=0, w=0\) changed by \S+ "
             r"when x at position 1 \(c=0, h=0, w=1\) changed \(1x2x3 K=0"),
    ("nan", r"^the gradient of log_prob on 1x2x3 K=0\S* .*is NaN or infinite in shift: training would diverge"),
    ("nan2", r"^the gradient of log_prob on 1x2x3 K=0\S* .*is NaN or infinite in shift and 1 more: training would"),
])
def test_the_gradient_path_check_finds_a_defect_only_the_training_path_has(how, message):
    model = type(f"GradientOnly{how}", (GradientOnly,), {"how": how})
    result = run_check("gradient_path", model)
    others = ("chain_rule", "step") if how == "peek" else ("chain_rule", "causality", "step")  # causality's
    assert all(run_check(name, model).passed for name in others)  # gradients see a real model's peek too
    assert result.status == ("passed" if not how else "failed") and re.search(message, result.detail), result.detail


def test_real_normalization_skips_spaces_of_more_than_two_values_and_says_so():
    why = "not run on 1x1x3 K=0, ordering 'snake': the integral is computed over 1 or 2 values only"
    result = run_check("normalization", Normals, spaces=[((1, 1, 3), 0), ((1, 1, 2), 0)])
    assert result.passed and re.fullmatch(r"integrals \(Gauss-Legendre on 1-D and 2-D spaces\) within \S+ of 1; "
                                          + re.escape(why), result.detail), result.detail
    result = run_check("normalization", Normals, spaces=[((1, 1, 3), 0)])
    assert result.skipped and result.detail == why
