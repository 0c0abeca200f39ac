"""The conformance kit: broken models are caught by the right check with the right message,
every registered model passes, and `densreg check` reports it with the right exit code."""

import json
import logging
import re
import types

import pytest
import torch
from click.testing import CliRunner

from densreg.registry import ConfigError, DensityModel, UnknownNameError, create_model, hookimpl, list_models
from densreg.registry import register_plugin, unregister_plugin
from densreg.app.cli import cli
from densreg.registry.conformance import (CHECKS, NO_EXPORTER, SAMPLING_SIZE, spread_out, all_images, check_causality,
                                          check_chain_rule,
                                          check_normalization, check_round_trip, check_sampling, check_step,
                                          chi_square, image_index, randomize, run_checks, tolerance)
from densreg.registry.testing import ModelConformance, conformance_tests


class Linear(DensityModel):
    """A correct reference: logits_d = b_d + sum_{j<d} W[d, j] onehot(x_j), with a cached step.

    ``extra`` >= 0 breaks it: the conditional at d also sees x at d + extra.
    """

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster", extra: int = -1):
        super().__init__(event_shape, num_categories, ordering)
        self.extra = extra
        d, k = self.num_positions, self.num_categories
        self.weight = torch.nn.Parameter(torch.zeros(d, k, d, k))
        self.bias = torch.nn.Parameter(torch.zeros(d, k))
        rows, cols = torch.arange(d).unsqueeze(1), torch.arange(d).unsqueeze(0)
        sees = (cols < rows) | ((cols == rows + extra) & (extra >= 0))  # (d, j)
        self.register_buffer("mask", sees.float()[:, None, :, None].expand(d, k, d, k).clone())

    def config(self):
        return {**super().config(), "extra": self.extra}

    def conditional_logits(self, x):
        onehot = torch.nn.functional.one_hot(self.to_sequence(self.validate(x)), self.num_categories).float()
        return torch.einsum("djkl,bkl->bdj", self.weight * self.mask, onehot) + self.bias

    def initial_state(self, batch_size):
        return (torch.zeros(batch_size, self.num_positions, self.num_categories),)

    def step(self, value, position, state):
        (acc,) = state
        position = torch.as_tensor(position)
        prev = (position - 1).clamp(min=0)
        onehot = torch.nn.functional.one_hot(value, self.num_categories).float()  # (B, K)
        column = (self.weight * self.mask).index_select(2, prev.reshape(1)).squeeze(2)  # (D, K, K)
        acc = acc + torch.where(position > 0, torch.einsum("dkl,bl->bdk", column, onehot), 0.0)
        logits = (acc + self.bias).index_select(1, position.reshape(1)).squeeze(1)
        return logits, (acc,)


class SeesItself(Linear):
    """Broken: the conditional at d sees x_d."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
        super().__init__(event_shape, num_categories, ordering, extra=0)

    def config(self):
        return DensityModel.config(self)


class SeesTheFuture(Linear):
    """Broken: the conditional at d sees x_{d+2}."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
        super().__init__(event_shape, num_categories, ordering, extra=2)

    def config(self):
        return DensityModel.config(self)


class Unnormalized(Linear):
    """Broken: log_prob sums raw logits instead of log-softmax conditionals."""

    def log_prob(self, x):
        x = self.validate(x)
        return self.conditional_logits(x).gather(-1, self.to_sequence(x).unsqueeze(-1)).sum((1, 2))


class StaleStep(Linear):
    """Broken: the cached step forgets the value just drawn (off by one)."""

    def step(self, value, position, state):
        logits, new_state = super().step(value, position, state)
        (acc,) = state
        position = torch.as_tensor(position)
        return (acc + self.bias).index_select(1, position.reshape(1)).squeeze(1), new_state


class SkewedSampler(Linear):
    """Broken: sample() feeds the inverse CDF squared uniforms, so it favours value 0."""

    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, naive=False):
        if noise is None:
            noise = torch.rand(n, self.num_positions, generator=generator, dtype=torch.float64) ** 2
        return super().sample(n, noise=noise, naive=naive)


class ForgetsScale(Linear):
    """Broken: ``scale`` shapes the density but config() leaves it out."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster", scale: float = 1.0):
        super().__init__(event_shape, num_categories, ordering)
        self.scale = scale

    def config(self):
        return DensityModel.config(self)

    def conditional_logits(self, x):
        return super().conditional_logits(x) * self.scale


class ExtraConfigKey(Linear):
    """Broken: config() reports a key the constructor does not take."""

    def config(self):
        return {**super().config(), "hidden": 3}


# -- broken models are caught by the right check ---------------------------------------
def test_reference_model_passes_every_check():
    results = {r.name: r for r in run_checks(Linear, skip=("export",))}
    assert all(r.passed for r in results.values()) and len(results) == len(CHECKS) - 1, results
    assert "6 space/ordering pairs" in results["causality"].detail


def test_model_that_sees_x_d_fails_causality():
    result = check_causality(SeesItself)
    assert result.failed
    assert "conditional at position 0 (c=0, h=0, w=0)" in result.detail
    assert "when x at position 0 (c=0, h=0, w=0) changed" in result.detail
    assert "the model sees the value it predicts (x_d)" in result.detail


def test_model_that_peeks_at_the_future_fails_causality():
    result = check_causality(SeesTheFuture, {"ordering": "column"})
    assert result.failed
    # column order on 1x2x3 generates (0,0) (1,0) (0,1) ...; position 0 sees position 2
    assert "conditional at position 0 (c=0, h=0, w=0) changed" in result.detail
    assert "when x at position 2 (c=0, h=0, w=1) changed (1x2x3 K=2, ordering 'column'" in result.detail
    assert "the model peeks at the future" in result.detail


def test_unnormalized_model_fails_normalization_only_there():
    result = check_normalization(Unnormalized)
    assert result.failed  # the protocol refuses its log_prob > 0 before the sum is taken
    assert result.detail.startswith("log_prob returned 8.451 nats for discrete values: a probability above 1")
    assert "not a normalized density" in result.detail
    assert check_chain_rule(Unnormalized).failed
    assert check_causality(Unnormalized).passed and check_step(Unnormalized).passed


def test_stale_step_fails_the_step_check():
    result = check_step(StaleStep)
    assert result.failed
    assert "step at position 1 (c=0, h=0, w=1) (position given as an int, 1x2x3 K=2, ordering 'raster') " \
           "differs from conditional_logits" in result.detail
    assert check_causality(StaleStep).passed and check_normalization(StaleStep).passed


def test_skewed_sampler_fails_the_sampling_check():
    result = check_sampling(SkewedSampler)
    assert result.failed
    assert "10000 samples on 1x2x2 K=2, ordering 'snake' do not follow exp(log_prob): chi-square" in result.detail
    assert check_sampling(Linear).passed and check_step(SkewedSampler).passed


def test_config_that_forgets_a_value_fails_the_round_trip():
    result = check_round_trip(ForgetsScale, {"scale": 3.0})
    assert result.failed
    assert "log_prob of the model reloaded from its checkpoint differs" in result.detail
    assert "neither in config() nor a parameter or buffer" in result.detail


def test_config_with_a_foreign_key_fails_the_round_trip():
    result = check_round_trip(ExtraConfigKey)
    assert result.failed
    assert "load_checkpoint could not rebuild the model from its own checkpoint" in result.detail
    assert "unknown config key 'hidden'" in result.detail


def test_a_model_that_raises_is_a_failure_not_a_crash():
    class Raises(Linear):
        def conditional_logits(self, x):
            raise RuntimeError("shape trouble")

    result = check_causality(Raises)
    assert result.failed and "RuntimeError: shape trouble (at test_conformance.py:" in result.detail


def test_refused_spaces_are_noted_and_all_refused_fails():
    class BinaryOnly(Linear):
        def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
            if num_categories != 2 or ordering != "raster":
                raise ConfigError("only K=2 in raster order")
            super().__init__(event_shape, num_categories, ordering)

        def config(self):
            return DensityModel.config(self)

    result = check_normalization(BinaryOnly)
    assert result.passed and "not run on" in result.detail and "only K=2 in raster order" in result.detail
    result = check_normalization(BinaryOnly, {"ordering": "snake"})
    assert result.failed and "could not be built on any tiny space" in result.detail


def test_caller_errors_raise():
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        run_checks("markov", {"nope": 1})
    with pytest.raises(UnknownNameError):
        run_checks("no-such-model")
    with pytest.raises(ConfigError, match="unknown check 'speed'"):
        run_checks("markov", checks=["speed"])


def test_export_is_skipped_with_the_reason_when_there_is_no_exporter():
    try:
        from densreg.export import export_model  # noqa: F401
    except ImportError:
        (result,) = run_checks("bernoulli", checks=["export"])
        assert result.skipped and result.detail == NO_EXPORTER
    else:
        pytest.skip("the exporter is installed; the export check runs in test_registered_models_pass")


def test_chi_square_pools_small_cells_and_detects_a_wrong_law():
    expected = torch.tensor([1000.0, 1000.0, 10.0, 1.0, 1.0, 3.0])
    stat, dof, p = chi_square(torch.tensor([1000.0, 1000.0, 10.0, 3.0, 2.0, 0.0]), expected)
    assert stat == 0 and dof == 3 and p == 1.0  # the three small cells pooled into one of 5
    stat, dof, p = chi_square(torch.tensor([3.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 1.0]))
    assert dof == 0 and p == 1.0  # no test is possible with one pooled cell
    stat, dof, p = chi_square(torch.tensor([1100.0, 900.0, 10.0, 1.0, 1.0, 3.0]), expected)
    assert abs(stat - 20.0) < 1e-9 and p == pytest.approx(1.6974e-4, rel=1e-4)  # chi2(3) survival at 20


def test_all_images_enumerates_in_base_k():
    images = all_images((1, 1, 3), 3)
    assert images.shape == (27, 1, 1, 3) and images[5].reshape(-1).tolist() == [0, 1, 2]
    assert torch.equal(image_index(images, 3), torch.arange(27))


def test_randomize_draws_buffers_only_when_asked():
    fitted, tables = create_model("markov", (1, 2, 3), 3), create_model("markov", (1, 2, 3), 3)
    randomize(fitted)  # closed-form fit on random images: normalised, non-uniform tables
    randomize(tables, buffers=True)  # N(0, 1) tables, no fit
    torch.testing.assert_close(fitted.log_probs.logsumexp(-1), torch.zeros(6, 3))
    assert fitted.log_probs.std() > 0.1 and tables.log_probs.logsumexp(-1).abs().max() > 0.1
    model = create_model("row-lstm", (1, 2, 3), 2, hidden=4, layers=1)
    masks = {name: b.clone() for name, b in model.named_buffers()}
    randomize(model, 1, buffers=True)  # bool masks and the int ordering never change
    assert all(torch.equal(b, masks[name]) for name, b in model.named_buffers())
    again = create_model("row-lstm", (1, 2, 3), 2, hidden=4, layers=1)
    randomize(again, 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


class ColourOnly(Linear):
    """Correct, but built on 3-channel images only."""

    def __init__(self, event_shape=(3, 1, 2), num_categories=2, ordering="raster"):
        if event_shape[0] != 3:
            raise ConfigError("colour images only")
        super().__init__(event_shape, num_categories, ordering)

    def config(self):
        return DensityModel.config(self)


def test_spaces_replace_the_tiny_spaces_of_every_check():
    result = check_normalization(ColourOnly)
    assert result.failed and "could not be built on any tiny space" in result.detail
    results = {r.name: r for r in run_checks(ColourOnly, spaces=(((3, 1, 2), 2), ((3, 1, 1), 3)), skip=("export",))}
    assert all(r.passed for r in results.values()), results
    assert "6 space/ordering pairs" in results["causality"].detail  # 2 spaces x 3 orderings
    assert "3x1x2 K=2" in results["sampling"].detail and "3x1x1 K=3" in results["sampling"].detail
    result = check_causality(SeesItself, spaces=(((3, 1, 2), 2),), orderings=["column"])
    assert result.failed and "(3x1x2 K=2, ordering 'column'" in result.detail


# -- the pytest forms ----------------------------------------------------------------------
class TestLinearConformance(ModelConformance):
    model, config = Linear, {"extra": -1}
    skip_checks = ("export",)


@pytest.mark.parametrize("case", conformance_tests(SeesItself, checks=["causality"]))
def test_parametrized_form_fails_a_broken_model(case):
    with pytest.raises(pytest.fail.Exception, match="conformance check 'causality' failed for SeesItself-causality"):
        case.run()


def test_parametrized_form_ids_and_skip():
    cases = conformance_tests("markov", skip=("export",), order=2)
    assert [c.id for c in cases] == [f"markov-{n}" for n in CHECKS if n != "export"]
    assert cases[0].values[0].config == {"order": 2}


# -- every registered model passes ------------------------------------------------------------
# Each registered model runs every check in its base config (SMALL, or its defaults for a model
# not listed); the built-in models also run in the configs of EXTRA. This is where the generic
# checks of the per-model test files live: they keep only model-specific maths.
SMALL = {"nade": {"hidden": 8}, "pixelrnn": {"hidden": 4, "layers": 1}, "row-lstm": {"hidden": 4, "layers": 1},
         "diagonal-bilstm": {"hidden": 4, "layers": 1}, "mixture": {"components": 3, "iterations": 3},
         "rnade": {"hidden": 8, "components": 3}, "gaussian-mixture": {"components": 3}}
EXPORT_BY_DEFAULT = {"markov"}  # the rest under -m slow (mixture's export also runs in test_example_plugin.py)
ORDERINGS = ("raster", "snake", "column", "random:3")  # the kit's DEFAULT_ORDERINGS and column
COLOUR = (((3, 1, 2), 2), ((2, 1, 2), 4))  # C > 1 (channel masks) and K = 4; 64 and 256 images
LARGER = (((1, 4, 6), 2), ((3, 3, 4), 4), ((3, 2, 2), 256))  # several rows and K = 256: step only
BUILT_IN = ("bernoulli", "markov", "nade", "pixelrnn", "row-lstm", "diagonal-bilstm")
SPATIAL = ("row-lstm", "diagonal-bilstm")


def random_tables(model, seed):
    """The baselines' probability tables (float buffers) drawn from N(0, 1): unnormalised logits."""
    randomize(model, seed, buffers=True)


def half_scale(model, seed):
    """randomize, then every parameter halved: deep models on the LARGER spaces keep logits of
    order 10 (realistic, and within float32 range for the comparisons of models without float64)."""
    randomize(model, seed)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.5)


def two_layers(name):
    return {"hidden": 6, "layers": 2, **({"output_hidden": 6} if name in SPATIAL else {})}


LARGER_STEP = {"spaces": LARGER, "checks": ["step"], "prepare": half_scale}
# name -> [(label, config, options)]: checks default to all but export, on the kit's spaces
EXTRA = {name: [("colour", SMALL.get(name, {}), {"spaces": COLOUR})] for name in BUILT_IN}
EXTRA["bernoulli"] += [("random-tables", {}, {"prepare": random_tables})]
EXTRA["markov"] += [(f"order={order},random-tables", {"order": order}, {"prepare": random_tables})
                    for order in (1, 2, 3)]
EXTRA["rnade"] = [("standardized", SMALL["rnade"], {"prepare": random_tables}),  # random loc and log_scale
                  ("rescale,sigmoid", {**SMALL["rnade"], "rescale": True, "activation": "sigmoid"},
                   {"prepare": random_tables})]  # and a random rho
EXTRA["nade"] += [("relu", {"hidden": 8, "activation": "relu"}, {}),
                  ("larger", {"hidden": 8}, LARGER_STEP)]
for name in ("pixelrnn", *SPATIAL):
    minimal = {"hidden": 3, "output_hidden": 3} if name in SPATIAL else {}  # one unit per channel group
    EXTRA[name] += [("layers=2", two_layers(name), {}),
                    ("layers=2,colour", {**two_layers(name), **minimal}, {"spaces": COLOUR}),
                    ("layers=2,larger", two_layers(name), LARGER_STEP)]


def registered_cases():
    cases = []
    for name in list_models():
        bare = name.rpartition(":")[2]
        config = SMALL.get(bare, {})
        cases += conformance_tests(name, skip=("export",), orderings=ORDERINGS, **config)
        cases += conformance_tests(name, checks=["export"], orderings=ORDERINGS, **config,
                                   marks=() if bare in EXPORT_BY_DEFAULT else (pytest.mark.slow,))
        if name == bare:  # the built-in models, under their bare names
            for label, config, options in EXTRA.get(bare, ()):
                options = {"skip": ("export",), **options}
                cases += [pytest.param(*case.values, id=f"{bare}({label})-{case.values[0].check}")
                          for case in conformance_tests(name, orderings=ORDERINGS, **options, **config)]
    return cases


def test_registered_cases_cover_every_built_in_model_and_extra_config():
    ids = [case.id for case in registered_cases()]
    assert len(ids) == len(set(ids))
    for name in BUILT_IN:
        assert f"{name}-causality" in ids and f"{name}(colour)-step" in ids
    assert "markov(order=3,random-tables)-sampling" in ids and "nade(relu)-round_trip" in ids
    assert "diagonal-bilstm(layers=2,larger)-step" in ids and "pixelrnn(layers=2)-normalization" in ids


@pytest.mark.parametrize("case", registered_cases())
def test_registered_models_pass(case):
    result = case.run()
    if case.check == "sampling":  # the test ran with power on every space: never vacuous
        dofs = [int(d) for d in re.findall(r"(\d+) dof", result.detail)]
        assert dofs and min(dofs) >= 3 and "not run" not in result.detail, result.detail


# -- densreg check -------------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_cli_check_passes_a_builtin_model():
    result = run("check", "markov", "--set", "order=2", "--skip", "export")
    assert result.exit_code == 0, result.output
    assert "baselines:markov with {'order': 2}" in result.output
    for name in CHECKS:
        if name != "export":
            assert any(line.split()[:2] == [name, "passed"] for line in result.output.splitlines()), name
    colour = [name for name in CHECKS if name not in ("round_trip", "export")]  # the colour pass runs these again
    assert f"{len(CHECKS) - 1 + len(colour)} passed, 0 failed, 0 skipped" in result.output


def broken_plugin():
    @hookimpl
    def register_models(register):
        register(SeesTheFuture, name="peeker", description="peeks at the future")
        register(Linear, name="linear", description="a correct linear model")

    return types.SimpleNamespace(register_models=register_models)


def test_cli_check_fails_a_broken_model_with_the_detail():
    try:
        register_plugin(broken_plugin(), "broken-plugin")
        result = run("check", "peeker", "--skip", "export")
        assert result.exit_code == 1
        causality = next(line for line in result.output.splitlines() if line.startswith("causality"))
        assert "FAILED" in causality and "the model peeks at the future" in causality
        *_, summary, last = result.output.splitlines()
        assert "failed" in summary and last.startswith("Error: broken-plugin:peeker fails 10 of 13 checks: ")
        result = run("check", "broken-plugin:peeker", "--only", "causality", "--json")
        data = json.loads(result.output)
        assert result.exit_code == 1 and data["passed"] is False and data["model"] == "broken-plugin:peeker"
        assert data["results"][0]["status"] == "failed"
        result = run("check", "linear", "--only", "step", "--only", "round_trip", "--json")
        data = json.loads(result.output)
        assert result.exit_code == 0 and data["passed"] is True
        assert [r["name"] for r in data["results"]] == ["step", "round_trip", "step (colour)"]
    finally:
        unregister_plugin("broken-plugin")


def test_cli_check_user_errors_are_one_line():
    result = run("check", "no-such-model")
    assert result.exit_code == 1 and "unknown model 'no-such-model'" in result.output
    result = run("check", "markov", "--set", "hidden=3")
    assert result.exit_code == 1 and "unknown config key 'hidden'" in result.output
    assert run("check", "markov", "--only", "speed").exit_code == 2


class IntPosition(Linear):
    """Broken for export only: the step turns the position into a Python int."""

    def step(self, value, position, state):
        (acc,) = state
        d = int(position)
        if d > 0:
            onehot = torch.nn.functional.one_hot(value, self.num_categories).float()
            acc = acc + torch.einsum("dkl,bl->bdk", (self.weight * self.mask)[:, :, d - 1], onehot)
        return acc[:, d] + self.bias[d], (acc,)


@pytest.mark.slow
def test_export_check_catches_a_step_that_is_not_traceable():
    pytest.importorskip("densreg.export.exporter", reason=NO_EXPORTER)
    assert check_step(IntPosition).passed  # eager torch is happy with int(position)
    result = run_checks(IntPosition, checks=["export"])[0]
    assert result.failed and "export_model failed on 1x2x3 K=2" in result.detail
    assert "no int(position), .item()" in result.detail


class KeepsItsState(Linear):
    """Correct: a second state tensor (a constant) that step passes on untouched."""

    def initial_state(self, batch_size):
        return (*super().initial_state(batch_size), torch.ones(batch_size, 2))

    def step(self, value, position, state):
        logits, (acc,) = super().step(value, position, state[:1])
        return logits, (acc, state[1])


def test_a_step_that_passes_a_state_tensor_on_unchanged_exports():
    pytest.importorskip("densreg.export.exporter", reason=NO_EXPORTER)
    result = run_checks(KeepsItsState, checks=["export"])[0]
    assert result.passed, result.detail


def test_the_traceable_step_hint_comes_only_with_a_step_that_does_not_trace():
    pytest.importorskip("densreg.export.exporter", reason=NO_EXPORTER)
    class RowDependentState(Linear):
        def initial_state(self, batch_size):
            (acc,) = super().initial_state(batch_size)
            return (acc + torch.arange(batch_size).reshape(-1, 1, 1),)

    result = run_checks(RowDependentState, checks=["export"])[0]
    assert result.failed and "the initial value of state tensor 0 differs between batch rows" in result.detail
    assert "0-dim tensor position" not in result.detail
    result = run_checks(IntPosition, checks=["export"])[0]
    assert result.failed and "its step does not export to ONNX" in result.detail
    assert "(export needs a step that works with a 0-dim tensor position" in result.detail


def test_a_failed_export_logs_no_blank_trace_records(caplog):
    pytest.importorskip("densreg.export.exporter", reason=NO_EXPORTER)
    caplog.set_level(logging.DEBUG)
    assert run_checks(IntPosition, checks=["export"])[0].failed
    assert not [r for r in caplog.records if r.name == "torch.__trace"]  # pytest printed them as blank lines


def test_model_conformance_uses_the_class_prepare():
    calls = []

    def record(model, seed):
        calls.append((type(model).__name__, model.event_shape, seed))

    class Prepared(ModelConformance):
        model, prepare = Linear, staticmethod(record)

    Prepared().test_step()
    assert calls and all(name == "Linear" for name, _, _ in calls)

    class Plain(ModelConformance):  # a plain function works too, and so does a function as factory
        model, prepare = (lambda **config: Linear(**config)), record

    calls.clear()
    Plain().test_round_trip()
    assert len(calls) == 1


# -- verdicts at the edges (mutation testing, issue 17) ---------------------------------
def test_tolerance_is_1e_8_in_float64_and_sqrt_eps_in_float32_times_a_scale_above_one():
    assert tolerance(torch.float64, 0.5) == 1e-8 and tolerance(torch.float64, 300.0) == 1e-8 * 300.0
    eps = torch.finfo(torch.float32).eps ** 0.5
    assert tolerance(torch.float32, 0.0) == eps and tolerance(torch.float32, 4.0) == 4 * eps


def test_passed_details_report_the_worst_deviation():
    results = {r.name: r for r in run_checks(Linear, checks=["normalization", "chain_rule", "step"])}
    worst = {name: float(re.search(r"within (\S+)", r.detail)[1]) for name, r in results.items()}
    assert all(r.passed for r in results.values())
    assert all(0 <= value <= 1e-5 for value in worst.values()), worst  # rounding only: a defect is >= 1e-3


class PaddedLogits(Linear):
    """Broken: conditional_logits (B, D, K) grow or lose a column of zeros (``pad`` = 1 or -1)."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster", pad: int = 1):
        super().__init__(event_shape, num_categories, ordering)
        self.pad = pad

    def config(self):
        return {**DensityModel.config(self), "pad": self.pad}

    def conditional_logits(self, x):
        return torch.nn.functional.pad(super().conditional_logits(x), (0, self.pad))


@pytest.mark.parametrize("pad", [1, -1])
def test_logits_of_the_wrong_shape_fail_even_a_causal_model(pad):
    result = check_causality(PaddedLogits, {"pad": pad})
    assert result.failed and f"returned (4, 6, {2 + pad}), expected (B, D, K) = (4, 6, 2)" in result.detail


@pytest.mark.parametrize("bad, named", [(float("nan"), "NaN"), (float("inf"), "+inf")])
def test_nan_or_infinite_logits_are_named(bad, named):
    class Bad(Linear):
        def conditional_logits(self, x):
            logits = super().conditional_logits(x)
            return torch.where(torch.arange(logits.shape[1]) == logits.shape[1] - 1, bad, logits.transpose(1, 2)
                               ).transpose(1, 2)  # the last position only

    for check in (check_chain_rule, check_causality, check_step):
        result = check(Bad)
        assert result.failed and named in result.detail, result.detail
        assert "conditional_logits returned NaN or +inf values" in result.detail and " in logits" not in result.detail


@pytest.mark.parametrize("shape", [(-1, 1), (-1, 2)])
def test_log_prob_of_the_wrong_shape_fails_normalization_though_it_sums_to_one(shape):
    class Reshaped(Linear):
        def log_prob(self, x):
            return super().log_prob(x).reshape(shape)

    result = check_normalization(Reshaped)
    assert result.failed and "log_prob returned shape" in result.detail


def test_a_chain_rule_failure_names_the_image():
    class OffByTheOnes(Linear):
        def log_prob(self, x):
            return super().log_prob(x) + 1e-3 * self.to_sequence(self.validate(x)).sum(-1)

    result = check_chain_rule(OffByTheOnes)
    assert result.failed and "on image [1, 1, 1, 1, 1, 1] of 1x2x3 K=2" in result.detail


class PeeksFromPositionOne(Linear):
    """Broken: positions 1 and later see x at the next position; position 0 sees nothing."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
        super().__init__(event_shape, num_categories, ordering, extra=1)
        self.mask[0] = 0

    def config(self):
        return DensityModel.config(self)


def test_causality_names_the_first_conditional_that_changed():
    result = check_causality(PeeksFromPositionOne)
    assert result.failed and "conditional at position 1 (c=0, h=0, w=1) changed" in result.detail
    assert "when x at position 2 (c=0, h=0, w=2) changed" in result.detail


def test_causality_names_the_first_of_two_conditionals_that_changed():
    class TwoPeekAtTwo(Linear):
        def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
            super().__init__(event_shape, num_categories, ordering)
            self.mask[:2, :, 2] = 1  # positions 0 and 1 both see x at position 2

        def config(self):
            return DensityModel.config(self)

    result = check_causality(TwoPeekAtTwo)
    assert result.failed and "conditional at position 0 (c=0, h=0, w=0) changed" in result.detail
    assert "when x at position 2 (c=0, h=0, w=2) changed" in result.detail


def test_logits_that_are_exactly_zero_pass_causality():
    def zero_first(model, seed):
        randomize(model, seed)
        with torch.no_grad():
            model.bias[0] = 0  # position 0 sees nothing: its logits are exactly 0

    assert check_causality(Linear, prepare=zero_first).passed


class TensorPositionFails(Linear):
    """Broken: step raises when the position is a 0-dim tensor (as exported graphs give it)."""

    def step(self, value, position, state):
        if isinstance(position, torch.Tensor):
            raise TypeError("position must be an int")
        return super().step(value, position, state)


def test_a_step_that_takes_only_int_positions_fails():
    result = check_step(TensorPositionFails)
    assert result.failed and "with the position given as a 0-dim int64 tensor raised TypeError" in result.detail


def test_a_state_that_is_not_a_tuple_fails_the_step_check():
    class ListState(Linear):
        def initial_state(self, batch_size):
            return list(super().initial_state(batch_size))

    assert check_step(ListState).failed


@pytest.mark.parametrize("change", [1, -1])
def test_a_state_that_changes_shape_fails_the_step_check(change):
    class Growing(Linear):
        def initial_state(self, batch_size):
            return (*super().initial_state(batch_size), torch.zeros(batch_size, 8))

        def step(self, value, position, state):
            logits, (acc,) = super().step(value, position, state[:1])
            size = state[1].shape[1] + change
            return logits, (acc, torch.zeros(state[1].shape[0], size))

    result = check_step(Growing)
    assert result.failed and "the state changed shape" in result.detail


@pytest.mark.parametrize("spoil, shape", [(lambda logits: logits.unsqueeze(0), (1, 3, 2)),
                                          (lambda logits: torch.nn.functional.pad(logits, (0, 1)), (3, 3))])
def test_step_logits_of_the_wrong_shape_fail(spoil, shape):
    class Wrong(Linear):
        def step(self, value, position, state):
            logits, state = super().step(value, position, state)
            return spoil(logits), state

    result = check_step(Wrong)
    assert result.failed and f"step returned logits of shape {shape}, expected (B, K) = (3, 2)" in result.detail


def test_chi_square_pools_cells_below_five_expected_with_the_next_smallest():
    from scipy.stats import chi2

    # 4.5 < 5 is pooled with the next smallest cell (5.0): 9.5 expected, 8 counted; the other 5.0 stays
    stat, dof, p = chi_square(torch.tensor([2.0, 6.0, 6.0, 4.0, 7.0]), torch.tensor([4.5, 5.0, 5.0, 5.4, 5.6]))
    assert dof == 3 and stat == pytest.approx(1.5**2 / 9.5 + 1 / 5 + 1.4**2 / 5.4 + 1.4**2 / 5.6)
    assert p == pytest.approx(chi2.sf(stat, 3))
    stat, dof, p = chi_square(torch.tensor([3.0, 7.0]), torch.tensor([5.0, 5.0]))  # one degree of freedom
    assert dof == 1 and stat == pytest.approx(1.6) and p == pytest.approx(chi2.sf(1.6, 1))


class ImageTable(torch.nn.Module):
    """An unnormalised law over the 16 images of 1x2x2 K=2, one logit each: what ``spread_out`` reads
    (parameters, log_prob)."""

    def __init__(self, counts):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(counts, dtype=torch.float64).log())

    def log_prob(self, images):
        return self.logits[image_index(images, 2)]


@pytest.mark.parametrize("counts, scale", [
    ([5000, 4000, 985, 5.5] + [9.5 / 12] * 12, 1.0),  # four cells expected >= 5 times: tested as it is
    ([5000, 4000, 991, 4.5] + [4.5 / 12] * 12, 0.5),  # three: the law is flattened (parameters halved)
    ([9000, 990] + [10 / 14] * 14, 0.5),  # two
    ([5000, 4006, 986.6, 5] + [0.2] * 12, 1.0),  # four, the fourth exactly 5 times (bit for bit): counted
])
def testspread_out_flattens_a_law_until_four_cells_are_expected_five_times(counts, scale):
    table, images = ImageTable(counts), all_images((1, 2, 2), 2)
    probs, used = spread_out(table, images)
    assert used == scale and torch.allclose(table.logits, torch.tensor(counts, dtype=torch.float64).log() * scale)
    law = torch.tensor(counts, dtype=torch.float64) ** scale
    torch.testing.assert_close(probs, law / law.sum())  # normalised


class ExactSampler(Linear):
    """Draws whole images from exp(log_prob) (multinomial); subclasses spoil the draws."""

    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, naive=False):
        images = all_images(self.event_shape, self.num_categories)
        probs = self.log_prob(images).double().exp()
        return self.spoil(images[torch.multinomial(probs, n, replacement=True, generator=generator)])

    def spoil(self, samples):
        return samples


@pytest.mark.parametrize("spoil", [lambda s: s.reshape(len(s), -1), lambda s: s.reshape(len(s), 1, 1, -1),
                                   lambda s: s.double()])
def test_samples_of_the_wrong_shape_or_dtype_fail(spoil):
    class Spoilt(ExactSampler):
        def spoil(self, samples):
            return spoil(samples)

    assert check_sampling(ExactSampler).passed
    result = check_sampling(Spoilt)
    assert result.failed and "sample(10000) returned" in result.detail


@pytest.mark.parametrize("value", [-1, 2, 3])
def test_samples_outside_0_to_k_minus_1_fail(value):
    class OutOfRange(ExactSampler):
        def spoil(self, samples):
            samples[0, 0, 0, 0] = value
            return samples

    result = check_sampling(OutOfRange)
    assert result.failed and "outside 0..1" in result.detail  # the first space has K = 2


def first_value_one_impossible(logits):
    """Logits (B, D, K) with value 1 at position 0 made impossible (-inf)."""
    first_is_one = (torch.arange(logits.shape[1])[:, None] == 0) & (torch.arange(logits.shape[2]) == 1)
    return torch.where(first_is_one, float("-inf"), logits)


class DrawsTheImpossible(ExactSampler):
    """Images whose first value is 1 have probability 0; the sampler draws two of them once each."""

    def conditional_logits(self, x):
        return first_value_one_impossible(super().conditional_logits(x))

    def spoil(self, samples):
        samples[0] = torch.tensor([1, 1, 1, 1]).reshape(samples.shape[1:])
        samples[1] = torch.tensor([1, 0, 0, 0]).reshape(samples.shape[1:])
        return samples


def test_a_sampler_that_draws_an_impossible_image_once_fails():
    result = check_sampling(DrawsTheImpossible)
    assert result.failed and "sampled image [1, 0, 0, 0], whose log_prob is -inf" in result.detail  # the first


def nearly_deterministic_after_two(model, seed):
    """Linear with uniform first two values and the rest almost surely 0: four images share the law."""
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.bias[2:, 0] = 12.0


def test_a_law_with_exactly_three_degrees_of_freedom_is_tested():
    result = check_sampling(Linear, prepare=nearly_deterministic_after_two)
    assert result.passed and re.search(r"1x2x2 K=2: chi2 \S+, 3 dof", result.detail), result.detail
    assert "scaled" not in result.detail  # tested as it is


def test_a_space_too_concentrated_to_test_does_not_stop_the_next():
    def concentrated_for_two_values(model, seed):
        randomize(model, seed, buffers=True)
        if model.num_categories == 2:
            with torch.no_grad():
                model.log_probs.mul_(1000)

    result = check_sampling("markov", prepare=concentrated_for_two_values)
    assert result.passed and "1x1x3 K=3: chi2" in result.detail
    assert re.search(r"not run on 1x2x2 K=2.*degenerate \(only 1 cells", result.detail), result.detail


class FlattensTheLaw(ExactSampler):
    """Broken: draws from exp(log_prob)^(1/2) (renormalised): rare images too often, likely ones too seldom."""

    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, naive=False):
        images = all_images(self.event_shape, self.num_categories)
        probs = self.log_prob(images).double().exp() ** 0.5
        return images[torch.multinomial(probs, n, replacement=True, generator=generator)]


def test_a_failed_sampling_check_names_the_image_furthest_off_in_standard_deviations():
    result = check_sampling(FlattensTheLaw)
    assert result.failed
    model = FlattensTheLaw((1, 2, 2), 2, "snake")  # as the check builds it: the first space, snake order
    randomize(model, 0)
    images = all_images((1, 2, 2), 2)
    probs, _ = spread_out(model, images)
    drawn = model.sample(SAMPLING_SIZE, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(image_index(drawn, 2), minlength=16).double()
    expected = probs * SAMPLING_SIZE
    worst = int(((counts - expected) / expected.sqrt()).abs().argmax())
    assert int(((counts - expected)).abs().argmax()) != worst  # furthest off in counts is another image
    assert f"image {images[worst].reshape(-1).tolist()} drawn {int(counts[worst])} times" in result.detail


def test_a_failed_sampling_check_never_names_an_image_of_probability_zero():
    class FlattensWithImpossibles(FlattensTheLaw):
        def conditional_logits(self, x):
            return first_value_one_impossible(super().conditional_logits(x))

    result = check_sampling(FlattensWithImpossibles)
    assert result.failed and re.search(r"image \[0, \d, \d, \d\] drawn \d+ times", result.detail), result.detail


# -- the probes themselves (mutation testing, issue 17) ----------------------------------
# The kit documents its probe images: causality draws 4 with torch.randint(0, K, ..., seed 1), step 3 with
# seed 2. The tests below rebuild them to place a defect where a probe does or does not show it.
def causality_probes(shape, k):
    return torch.randint(0, k, (4, *shape), generator=torch.Generator().manual_seed(1)).reshape(4, -1)


def step_probes(shape, k):
    return torch.randint(0, k, (3, *shape), generator=torch.Generator().manual_seed(2)).reshape(3, -1)


class Uniform(DensityModel):
    """Zero logits (uniform conditionals) in the dtype of its one parameter, plus ``leak(seq)``: a
    subclass's defect, (B, D, K) added to them. The step is the protocol's recompute_step."""

    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
        super().__init__(event_shape, num_categories, ordering)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def conditional_logits(self, x):
        seq = self.to_sequence(self.validate(x))
        return self.leak(seq).to(self.unused.dtype)

    def leak(self, seq):
        return torch.zeros(*seq.shape, self.num_categories, dtype=torch.float64)


def leaking(*leaks):
    """A Uniform whose conditional at position p adds ``size`` * [x_j > 0] to its last logit, for each
    (p, j, size): a peek at the future (or at x_p) when j >= p."""

    class Leaky(Uniform):
        def leak(self, seq):
            logits = super().leak(seq)
            for p, j, size in leaks:
                logits[:, p, -1] += size * (seq[:, j] > 0).double()
            return logits

    return Leaky


ABOVE_1E_8 = float(torch.nextafter(torch.tensor(1e-8, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)))


def test_causality_allows_a_change_of_exactly_the_tolerance_and_no_more():
    """Logits within 1: the float64 tolerance is 1e-8, inclusive, in both passes (each position alone,
    then every suffix): a peek that moves a logit by exactly 1e-8 passes, by the next float fails."""
    assert tolerance(torch.float64, 1e-8) == 1e-8
    assert check_causality(leaking((0, -1, 1e-8))).passed
    assert check_causality(leaking((0, -1, ABOVE_1E_8))).failed


def test_causality_names_the_first_conditional_beyond_the_tolerance():
    """Changing x_2 moves conditional 0 by exactly the tolerance (allowed) and conditional 1 by 1: the
    culprit named is conditional 1."""
    result = check_causality(leaking((0, 2, 1e-8), (1, 2, 1.0)), spaces=[((1, 2, 3), 2)], orderings=["raster"])
    assert result.failed and "conditional at position 1 (c=0, h=0, w=1) changed by 1 when x at position 2" \
        in result.detail, result.detail


def test_causality_changes_each_value_to_the_next_level():
    """Each position alone is changed to (x + 1) mod K: with K = 3 a peek that shows only when x_9 is 1 is
    found at position 9 from probes that all hold 0 there (x - 1 would make them 2, and 0 leave them)."""
    shape = (1, 1, 12)
    assert not causality_probes(shape, 3)[:, 9].any()

    class PeeksAtOne(Uniform):
        def leak(self, seq):
            logits = super().leak(seq)
            logits[:, 0, -1] += (seq[:, 9] == 1).double()
            return logits

    result = check_causality(PeeksAtOne, spaces=[(shape, 3)], orderings=["raster"])
    assert result.failed and "when x at position 9 (c=0, h=0, w=9) changed" in result.detail, result.detail


def test_causality_probes_every_suffix_for_a_peek_no_single_change_shows():
    """Conditional 0 sees x_a and x_b only when both are 0; at a and b every probe holds 1, so no change
    of one value shows it: the pass that redraws every value from d on at once (from 0..K-1) does."""
    shape = (1, 1, 24)
    a, b = [j for j in range(24) if causality_probes(shape, 2)[:, j].all()][:2]

    class PeeksAtTwoZeros(Uniform):
        def leak(self, seq):
            logits = super().leak(seq)
            logits[:, 0, -1] += ((seq[:, a] == 0) & (seq[:, b] == 0)).double()
            return logits

    result = check_causality(PeeksAtTwoZeros, spaces=[(shape, 2)], orderings=["raster"])
    assert result.failed and "changed together" in result.detail, result.detail


def on_one_image(target):
    """A Uniform whose conditional 0 sees the last value, but only on images that equal ``target`` (D,)
    everywhere else: a defect that only a probe equal to ``target`` can show."""

    class PeeksOnOneImage(Uniform):
        def leak(self, seq):
            logits = super().leak(seq)
            logits[:, 0, -1] += ((seq[:, :-1] == target[:-1]).all(1) * seq[:, -1]).double()
            return logits

    return PeeksOnOneImage


def test_causality_probes_the_documented_images():
    """A peek confined to the first documented probe (seed 1) fails; confined to another image, it is not
    seen: the probes are reproducible, and these (a defect outside them can pass)."""
    shape = (1, 4, 4)
    probe = causality_probes(shape, 2)[0]
    assert check_causality(on_one_image(probe), spaces=[(shape, 2)], orderings=["raster"]).failed
    assert check_causality(on_one_image(1 - probe), spaces=[(shape, 2)], orderings=["raster"]).passed


def test_chain_rule_allows_a_difference_of_exactly_the_tolerance_and_no_more():
    """Logits (0, -1000) at every position: the all-zero image has chain-rule log-probability exactly 0,
    the all-one image -6000, so the tolerance is 1e-8 * 6000; log_prob off by exactly that on the
    all-zero image passes, by the next float fails."""
    tol = tolerance(torch.float64, 6000.0)

    def off_by(size):
        class OffOnZeros(Uniform):
            def leak(self, seq):
                logits = super().leak(seq)
                logits[..., 1] = -1000.0
                return logits

            def log_prob(self, x):
                x = self.validate(x)
                return super().log_prob(x) + size * (x.reshape(len(x), -1) == 0).all(1).double()

        return OffOnZeros

    above = float(torch.nextafter(torch.tensor(tol, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)))
    assert check_chain_rule(off_by(tol), spaces=[((1, 2, 3), 2)]).passed
    assert check_chain_rule(off_by(above), spaces=[((1, 2, 3), 2)]).failed


def step_off_by(size, target=None):
    """A Uniform whose step adds ``size`` to the last logit at position 2 (with ``target`` (D,): at the
    last position, and only when the values before it are those of ``target``)."""

    class OffStep(Uniform):
        def step(self, value, position, state):
            logits, state = self.recompute_step(value, position, state)
            position = torch.as_tensor(position)
            if target is None:
                wrong = (position == 2).expand(len(logits))
            else:
                (prefix,) = state
                wrong = (position == self.num_positions - 1) & (prefix[:, :-1] == target[:-1]).all(1)
            bump = torch.zeros_like(logits)
            bump[:, -1] = size * wrong.double()
            return logits + bump, state

    return OffStep


def test_step_allows_a_difference_of_exactly_the_tolerance_and_no_more():
    assert check_step(step_off_by(1e-8)).passed
    assert check_step(step_off_by(ABOVE_1E_8)).failed


def test_step_probes_the_documented_images():
    """A step wrong only after the values of the first documented step probe (seed 2) fails; after another
    image's values, it is not seen."""
    shape = (1, 4, 4)
    probe = step_probes(shape, 2)[0]
    assert check_step(step_off_by(1.0, probe), spaces=[(shape, 2)], orderings=["raster"]).failed
    assert check_step(step_off_by(1.0, 1 - probe), spaces=[(shape, 2)], orderings=["raster"]).passed


def test_the_sampling_check_fails_below_alpha_only(monkeypatch):
    """The verdict of the chi-square test: p exactly 1e-3 passes, the next float below fails."""
    from densreg.registry.checks import sampling

    alpha = sampling.SAMPLING_ALPHA
    for p, passed in ((alpha, True), (float(torch.nextafter(torch.tensor(alpha), torch.tensor(0.0))), False)):
        monkeypatch.setattr(sampling, "chi_square", lambda counts, expected, p=p: (30.0, 15, p))
        assert check_sampling(ExactSampler, spaces=[((1, 2, 2), 2)]).passed is passed


def fixed_counts(counts, bias=None):
    """An ExactSampler-like Linear whose ``sample`` returns the images of 1x2x2 K=2 (raster) ``counts``
    times each, and whose positions are independent with last logits ``bias`` (D,) (default uniform)."""

    class FixedCounts(Linear):
        @torch.no_grad()
        def sample(self, n, generator=None, noise=None, naive=False):
            assert n == sum(counts)
            return all_images(self.event_shape, 2).repeat_interleave(torch.tensor(counts), 0)

    def prepare(model, seed):
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
            if bias is not None:
                model.bias[:, 1] = torch.tensor(bias)

    return FixedCounts, prepare


def test_a_failed_sampling_check_names_the_largest_residual_not_its_floor():
    """Uniform law (625 expected per image, 25 per standard deviation): image 0 drawn 755 times (+5.2 sd)
    and image 1 497 times (-5.12 sd): image 0 is the one named (flooring the residuals would make image 1
    the furthest off, -6 against 5)."""
    model, prepare = fixed_counts([755, 497, 624, 624] + [625] * 12)
    result = check_sampling(model, prepare=prepare, spaces=[((1, 2, 2), 2)], orderings=["raster"])
    assert result.failed and "image [0, 0, 0, 0] drawn 755 times, expected 625.0" in result.detail, result.detail


def test_a_failed_sampling_check_measures_rare_images_in_their_own_standard_deviation():
    """The last value is 1 with probability 1/2001: images ending in 1 are expected 0.62 times (0.79 per
    sd). Image [0, 0, 0, 1] drawn 30 times is 37 sd off, more than image 0's 1165 extra draws (33 sd):
    it is the one named (a standard deviation of at least 1 would put it at 29)."""
    q = 1 / 2001
    expected = 10000 * 0.125 * (1 - q)
    counts = [round(expected + 1165), 30] + [0] * 14
    counts[2::2] = [round(expected - 1195 / 7)] * 7
    counts[0] += 10000 - sum(counts)
    model, prepare = fixed_counts(counts, bias=[0.0, 0.0, 0.0, -torch.log(torch.tensor(2000.0)).item()])
    result = check_sampling(model, prepare=prepare, spaces=[((1, 2, 2), 2)], orderings=["raster"])
    assert result.failed and "image [0, 0, 0, 1] drawn 30 times" in result.detail, result.detail


def test_a_defect_only_on_the_gradient_path_fails_only_that_check():
    class TrainingBias(Linear):
        def conditional_logits(self, x):
            return super().conditional_logits(x) + (0.01 if torch.is_grad_enabled() else 0.0)

    results = {r.name: r for r in run_checks(TrainingBias, skip=("export", "sampling", "round_trip"))}
    assert [name for name, r in results.items() if r.failed] == ["gradient_path"], results
    assert "conditional_logits with gradients on differs from its value under no_grad by 0.01" in \
        results["gradient_path"].detail
