"""Results are checked at the door (registry/returns.py): a model's result of the wrong shape or dtype, or
non-finite (NaN, inf), or impossible (log p > 0 for discrete values), is refused in one line naming the
model and the rule, with exit status 1, by every command that computes a likelihood, a sample or a score,
for checkpoints, plugin models and export folders alike; training stops at a diverged epoch."""

from __future__ import annotations

import json
import math
import re
import types

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

import densreg
from densreg.app.cli import cli
from densreg.app.completion import complete
from densreg.app.features import extract_features
from densreg.export.manifest import file_digest
from densreg.plugins.baselines import Bernoulli
from densreg.registry import (Dataset, ModelOutputError, hookimpl, load_checkpoint, register_plugin, save_checkpoint,
                              unregister_plugin)
from densreg.registry.conformance import run_check
from densreg.registry.testing import single_torch_thread  # noqa: F401

SHAPE = (1, 8, 8)  # the digits datasets


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, *parts: str) -> str:
    """The run failed with exit 1 and one ``Error:`` line holding every part (no traceback)."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in lines[0], result.output
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


class LongLogProb(Bernoulli):
    """Broken: log_prob returns B + 1 rows."""

    registry_name = "long-log-prob"

    def log_prob(self, x):
        out = super().log_prob(x)
        return torch.cat([out, out[:1]])


class Transposed(Bernoulli):
    """Broken: logits (B, K, D) instead of (B, D, K)."""

    registry_name = "transposed"

    def conditional_logits(self, x):
        return super().conditional_logits(x).transpose(1, 2)


class AboveOne(Bernoulli):
    """Broken: log p = +0.5 nats for every binary image (a probability above 1), with one weight to train."""

    registry_name = "above-one"
    closed_form = False

    def __init__(self, event_shape=SHAPE, num_categories: int = 2, ordering: str = "raster", alpha: float = 1.0):
        super().__init__(event_shape, num_categories, ordering, alpha)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return torch.full((len(x),), 0.5) + 0 * self.w


class NaNAfter(Bernoulli):
    """Trains (one weight); its log_prob turns NaN once it has been called ``after`` times with gradients (a
    run that diverges in its second epoch), or at once with ``after`` = 0."""

    registry_name = "nan-after"
    closed_form = False

    def __init__(self, event_shape=SHAPE, num_categories: int = 2, ordering: str = "raster", alpha: float = 1.0,
                 after: int = 12):
        super().__init__(event_shape, num_categories, ordering, alpha)
        self.after, self.calls = after, 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def config(self):
        return {**super().config(), "after": self.after}

    def log_prob(self, x):
        out = super().log_prob(x) + 0 * self.w
        if torch.is_grad_enabled():
            self.calls += 1
        return out * math.nan if self.calls > self.after or self.after == 0 else out


def load_empty(split, data=None, download=False):
    return np.zeros((0, *SHAPE), dtype=np.int64) if split == "test" else np.zeros((4, *SHAPE), dtype=np.int64)


@pytest.fixture(scope="module", autouse=True)
def plugin():
    @hookimpl
    def register_models(register):
        for model in (LongLogProb, Transposed, AboveOne, NaNAfter):
            register(model, name=model.registry_name, description=model.__doc__.splitlines()[0])

    @hookimpl
    def register_datasets(register):
        register(Dataset(name="empty-test", description="digits-sized, no test images", event_shape=SHAPE,
                         num_categories=2, load=load_empty))

    register_plugin(types.SimpleNamespace(register_models=register_models, register_datasets=register_datasets),
                    "results-plugin")
    yield
    unregister_plugin("results-plugin")


def checkpoint(tmp_path, model, name: str):
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, model, name)
    return path


def bernoulli_with(value: float) -> Bernoulli:
    """A Bernoulli model on digits whose log-probability of a 1 is ``value`` at every position."""
    model = Bernoulli(SHAPE)
    model.log_probs[:, 1] = value
    return model


# -- shapes: every command, one line naming the method and the rule ---------------------------------
def test_log_prob_with_an_extra_row_is_refused_by_eval(tmp_path):
    path = checkpoint(tmp_path, LongLogProb(SHAPE), "long-log-prob")
    one_error_line(run("eval", path, "--dataset", "digits"),
                   "model 'long-log-prob': log_prob returned shape (101,), expected (B,) = (100,)")  # CPU batches: 100


def test_transposed_logits_are_refused_by_eval_and_score(tmp_path):
    path = checkpoint(tmp_path, Transposed(SHAPE), "transposed")
    rule = "model 'transposed': conditional_logits returned ({0}, 2, 64), expected (B, D, K) = ({0}, 64, 2)"
    one_error_line(run("eval", path, "--dataset", "digits"), rule.format(100))  # in batches of 100
    one_error_line(run("score", path, "--dataset", "digits"), rule.format(300))  # of 500


def test_check_names_the_broken_rule_instead_of_a_raw_error():
    result = run("check", "transposed", "--skip", "export")
    failed = [line for line in result.output.splitlines() if "FAILED" in line]
    assert result.exit_code == 1 and failed
    *_, summary, last = result.output.strip().splitlines()
    total = sum(int(n) for n in re.findall(r"(\d+) (?:passed|failed|skipped)", summary))
    assert last == (f"Error: results-plugin:transposed fails {len(failed)} of {total} checks: "
                    + ", ".join(line.split("  ")[0] for line in failed))
    for line in failed:
        assert "conditional_logits returned" in line and "expected (B, D, K)" in line, line
        assert "RuntimeError" not in line and "protocol.py:" not in line, line


# -- non-finite and impossible results ----------------------------------------------------------------
@pytest.mark.parametrize("value, what", [(math.inf, "log_prob returned NaN in"),
                                         (-math.inf, "log-likelihood is -inf in")])
def test_infinite_weights_are_refused_by_eval_score_and_sample(tmp_path, value, what):
    path = checkpoint(tmp_path, bernoulli_with(value), "bernoulli")
    one_error_line(run("eval", path, "--dataset", "digits"), "model 'bernoulli'", what)
    one_error_line(run("score", path, "--dataset", "digits"), "model 'bernoulli'")
    if value == math.inf:  # NaN logits: no image of zeros is drawn silently
        one_error_line(run("sample", path, "-n", "4", "--out", tmp_path / "s.png"),
                       "model 'bernoulli': step returned NaN or +inf values")


def test_completion_and_features_refuse_non_finite_results():
    with pytest.raises(ModelOutputError, match="model 'bernoulli': step returned NaN or \\+inf values"):
        complete(bernoulli_with(math.inf), np.zeros((2, *SHAPE), dtype=np.int64), keep=3)
    nade = densreg.create_model("nade", SHAPE, hidden=4)
    with torch.no_grad():
        nade.W.fill_(math.nan)
    with pytest.raises(ModelOutputError, match="model 'nade': features returned NaN in 8 of 8 values"):
        extract_features(nade, np.zeros((2, *SHAPE), dtype=np.int64))


def test_an_empty_test_split_is_one_line_not_nan_nats(tmp_path):
    path = checkpoint(tmp_path, Bernoulli(SHAPE), "bernoulli")
    one_error_line(run("eval", path, "--dataset", "empty-test"), "'empty-test', split 'test' holds no images")


def poisoned_export(tmp_path, value: float):
    """An export folder of a Bernoulli model whose float weights are all ``value``, with a manifest whose
    digests match (a hostile or corrupted folder that passes the file hashes and the manifest binding; opening
    it, the golden check refuses it in one line naming the export)."""
    folder = tmp_path / "export"
    densreg.export_model(Bernoulli(SHAPE), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            proto = onnx.load(folder / name)
            for i, tensor in enumerate(proto.graph.initializer):
                array = numpy_helper.to_array(tensor)
                if array.dtype.kind == "f":
                    poisoned = numpy_helper.from_array(np.full_like(array, value), tensor.name)
                    proto.graph.initializer[i].CopyFrom(poisoned)
            onnx.save(proto, folder / name)
            manifest["files"][name] = file_digest((folder / name).read_bytes())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_export_folders_with_non_finite_weights_are_refused(tmp_path, value):
    folder = poisoned_export(tmp_path, value)
    for args in (["eval", folder, "--dataset", "digits"], ["score", folder, "--dataset", "digits"],
                 ["sample", folder, "-n", "2", "--out", tmp_path / "s.png"]):
        one_error_line(run(*args), "export 'bernoulli'")
    assert not (tmp_path / "s.png").exists()


# -- training -----------------------------------------------------------------------------------------
def train(tmp_path, model: str, *more):
    out = tmp_path / "run.safetensors"
    return run("train", model, "--dataset", "digits", "--out", out, "--threads", "1", *more), out


def test_a_huge_learning_rate_stops_with_divergence_and_saves_nothing(tmp_path):
    result, out = train(tmp_path, "nade", "--set", "hidden=8", "--lr", "1e9", "--epochs", "3")
    one_error_line(result, "model 'nade': training diverged in epoch 1 after", "nats per value above the NLL at "
                   "initialization", "lower --lr (now 1e+09)", "no epoch was saved")
    assert not out.exists()


def test_nan_at_initialization_is_not_blamed_on_the_learning_rate(tmp_path):
    result, out = train(tmp_path, "nan-after", "--set", "after=0")
    line = one_error_line(result, "model 'nan-after': log_prob returned NaN",
                          "at initialization before any training step: the model or its initialization is broken")
    assert "--lr" not in line and not out.exists()


def test_a_diverged_epoch_is_never_saved_as_the_best(tmp_path):
    # 1197 images in batches of 100: 12 steps an epoch; the 13th call with gradients returns NaN
    result, out = train(tmp_path, "nan-after", "--epochs", "4", "--batch-size", "100")
    one_error_line(result, "training diverged in epoch 2 after 12 steps: log_prob returned NaN",
                   "lower --lr", f"the best epoch so far (1, valid NLL", f"stays in {out}")
    _, info = load_checkpoint(out)
    assert info.metrics["best_epoch"] == 1 and math.isfinite(info.metrics["train_nll_nats"])
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log if "epoch" in entry] == [1]


def test_a_model_above_probability_one_is_refused_in_training(tmp_path):
    result, out = train(tmp_path, "above-one")
    line = one_error_line(result, "model 'above-one': log_prob returned 0.5 nats for discrete values: a probability "
                          "above 1, not a normalized density", "at initialization before any training step")
    assert "--lr" not in line
    assert not out.exists()
