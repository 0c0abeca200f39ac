"""The checker is decisive: float64 comparisons separate rounding from defects, the sampling test
has power (and says "not run" rather than "passed" when it cannot run), every check runs on every
tiny space a model accepts, and `densreg check` passes every built-in model at its default config."""

import re

import pytest
import torch
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.plugins.baselines import Markov
from densreg.registry import ConfigError, DensityModel
from densreg.registry.conformance import (SAMPLING_SIZE, all_images, check_causality, check_chain_rule,
                                          check_round_trip, check_sampling, check_step, randomize, run_checks)
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture


class MixesInUniform(Markov):
    """Wrong sampler: draws a uniform image with probability w, so its law is 5% off in total variation."""

    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, naive=False):
        good = super().sample(n, generator=generator)
        images = all_images(self.event_shape, self.num_categories)
        probs = self.log_prob(images).double().exp()
        off_uniform = 0.5 * float((probs - 1 / len(images)).abs().sum())  # TV(p, uniform)
        self.weight = 0.05 / off_uniform  # TV(mixture, p) = w * TV(uniform, p) = 0.05
        uniform = images[torch.randint(len(images), (n,), generator=generator)]
        swap = torch.rand(n, generator=generator, dtype=torch.float64) < self.weight
        return torch.where(swap.reshape(n, 1, 1, 1), uniform, good)


def test_a_sampler_5_percent_off_in_total_variation_fails():
    result = check_sampling(MixesInUniform)
    assert result.failed, result.detail
    assert f"{SAMPLING_SIZE} samples on 1x2x2 K=2" in result.detail and "do not follow exp(log_prob)" in result.detail
    model = MixesInUniform((1, 2, 2))
    randomize(model, 0)
    model.sample(10)
    assert model.weight <= 1  # the mixture weight is a probability: TV really is 0.05
    correct = check_sampling(Markov)
    assert correct.passed and "1x2x2 K=2: chi2" in correct.detail and "1x1x3 K=3: chi2" in correct.detail


def test_sampling_detail_shows_dof_and_p_as_it_is():
    result = check_sampling(Markov)
    assert result.passed
    detail = result.detail
    for dof, p in re.findall(r"(\d+) dof, p=([^ ]+) >= 0\.001", detail):
        assert int(dof) >= 3 and float(p) >= 1e-3 and p not in ("0.00", "0.0")
    assert len(re.findall(r"dof", detail)) == 2


def test_degenerate_distribution_is_not_run_not_passed():
    def concentrated(model, seed):
        randomize(model, seed, buffers=True)
        with torch.no_grad():
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    buffer.mul_(1000)  # one image gets all the mass; no parameters to scale back

    result = check_sampling(Markov, prepare=concentrated)
    assert result.skipped and result.detail.startswith("not run: 1x2x2 K=2")
    assert "the distribution is degenerate (only" in result.detail


def test_degenerate_network_is_scaled_until_the_test_has_power():
    def sharp(model, seed):
        randomize(model, seed)
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(4)

    result = check_sampling("nade", {"hidden": 8}, prepare=sharp)
    assert result.passed and "parameters scaled by" in result.detail
    assert all(float(scale) < 1 for scale in re.findall(r"scaled by (\S+?)(?:;|$| )", result.detail))
    assert min(int(d) for d in re.findall(r"(\d+) dof", result.detail)) >= 3


class OffStep(Markov):
    """Broken by 1e-3: the cached step's logits at position 1 are shifted."""

    def step(self, value, position, state):
        logits, state = super().step(value, position, state)
        bump = torch.zeros_like(logits)
        bump[:, 0] = 1e-3
        return torch.where(torch.as_tensor(position) == 1, logits + bump, logits), state


class Float32Only(Markov):
    """Correct, but its logits stay in float32 whatever the parameters' dtype."""

    def conditional_logits(self, x):
        return super().conditional_logits(x).float()


def test_comparisons_run_in_float64_and_a_1e_3_defect_fails():
    for check in (check_step, check_causality, check_chain_rule):
        result = check("markov")
        assert result.passed and "(in float64)" in result.detail, result.detail
    result = check_step(OffStep)
    assert result.failed and "differs from conditional_logits by 0.001 (tolerance" in result.detail
    assert "in torch.float64" in result.detail
    assert check_causality(OffStep).passed


def test_a_model_without_float64_is_compared_in_its_dtype_with_a_derived_tolerance():
    result = check_step(Float32Only)
    assert result.passed and "in float32 where conditional_logits of model.double() come out in torch.float32" \
        in result.detail


class BinaryOnly(Markov):
    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster", order=1, alpha=1.0):
        if num_categories != 2:
            raise ConfigError("binary images only")
        super().__init__(event_shape, num_categories, ordering, order, alpha)


class TernaryOnly(Markov):
    def __init__(self, event_shape=(1, 2, 3), num_categories=3, ordering="raster", order=1, alpha=1.0):
        if num_categories != 3:
            raise ConfigError("three levels only")
        super().__init__(event_shape, num_categories, ordering, order, alpha)


def test_every_check_runs_on_every_space_the_model_takes():
    results = {r.name: r for r in run_checks(BinaryOnly, skip=("export",))}
    assert all(r.passed for r in results.values()), {n: r.detail for n, r in results.items()}
    assert "binary images only" in results["step"].detail  # K=3 noted as refused, K=2 checked
    results = {r.name: r for r in run_checks(TernaryOnly, checks=["step", "round_trip"])}
    assert all(r.passed for r in results.values()), {n: r.detail for n, r in results.items()}


@pytest.mark.slow
def test_export_check_runs_on_a_model_that_refuses_k2():
    result = run_checks(TernaryOnly, checks=["export"])[0]
    assert result.passed, result.detail


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_reserved_keys_are_named_in_one_line():
    for args in (["check", "markov", "--set", "num_categories=2"],
                 ["train", "markov", "--dataset", "digits", "--set", "event_shape=[1,2,2]", "--out", "x.safetensors"],
                 ["info", "nade", "--set", "num_categories=3"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "cannot be set as config: the image shape and K come from the data" in lines[0]
        assert "TypeError" not in result.output


@pytest.mark.parametrize("model", ["row-lstm", "diagonal-bilstm"])
def test_cli_check_passes_the_spatial_models_at_default_config_on_1_and_2_threads(model):
    for threads, skip in ((1, ["export"]), (2, ["export", "sampling", "round_trip"])):
        args = ["check", model, "--threads", threads] + [x for name in skip for x in ("--skip", name)]
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert "0 failed" in result.output and "FAILED" not in result.output
        assert "(in float64)" in result.output
