"""Files written by densreg 0.1.0 (before families) still load and give the same numbers.

``tests/data/densreg-0.1.0/`` holds a checkpoint and an export folder of each value kind (a
NADE on 1x3x3 binary images and an RNADE on 1x1x4 real values, random parameters), and the
log-probabilities and samples 0.1.0 computed for fixed inputs and noise (``expected.safetensors``;
``written_by.py.txt`` is the script that wrote them), and the example plugin's package as 0.1.0 shipped
it (``densreg_mixture_0_1_0/*.py.txt``, installed into a temporary folder by the test). Also: a third-party model written in the style before families
(``conditional_logits`` only; ``ContinuousDensityModel``) passes the kit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from densreg.export.runtime import ExportedModel
from densreg.registry import ContinuousDensityModel, DensityModel, MixtureParams, load_checkpoint
from densreg.registry.conformance import run_checks
from densreg.registry.families import Categorical, GaussianMixture

FIXTURES = Path(__file__).parent / "data" / "densreg-0.1.0"
CASES = {"nade": ("nade-3x3", "nade_images"), "rnade": ("rnade-1x4", "rnade_values")}


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURES / "expected.safetensors")


@pytest.mark.parametrize("name", CASES)
def test_a_checkpoint_of_0_1_0_scores_and_samples_the_same(name, expected):
    stem, inputs = CASES[name]
    model, info = load_checkpoint(FIXTURES / f"{stem}.safetensors")
    with torch.no_grad():
        log_prob = model.log_prob(expected[inputs]).double()
    assert torch.allclose(log_prob, expected[f"{name}_log_prob"], atol=1e-6, rtol=0)
    samples = model.sample(3, noise=expected[f"{name}_noise"]).double()
    assert torch.allclose(samples, expected[f"{name}_samples"].double(), atol=1e-6, rtol=0)
    assert info.value_kind == model.value_kind


@pytest.mark.parametrize("name", CASES)
def test_an_export_folder_of_0_1_0_scores_and_samples_the_same(name, expected):
    stem, inputs = CASES[name]
    exported = ExportedModel(FIXTURES / f"{stem}-export", provider="cpu")
    assert "family" not in exported.manifest  # written before families: derived from value_kind and K
    assert exported.family == (Categorical(2) if name == "nade" else GaussianMixture(2))
    log_prob = exported.log_prob(expected[inputs].numpy()).astype(np.float64)
    assert np.allclose(log_prob, expected[f"{name}_log_prob"].numpy(), atol=1e-4, rtol=0)
    samples = exported.sample(3, noise=expected[f"{name}_noise"].numpy()).astype(np.float64)
    assert np.allclose(samples, expected[f"{name}_samples"].numpy(), atol=1e-4, rtol=0)


class OldStyleCategorical(DensityModel):
    """A model written against the 0.1.0 contract: ``conditional_logits`` and a logits-returning step."""

    def __init__(self, event_shape=(1, 2, 3), num_categories: int = 2, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.table = torch.nn.Parameter(torch.zeros(self.num_positions, num_categories, num_categories))

    def conditional_logits(self, x):
        previous = torch.nn.functional.pad(self.to_sequence(x)[:, :-1], (1, 0))  # x at d-1, zeros at 0
        return self.table[torch.arange(self.num_positions, device=x.device), previous]  # (B, D, K)


class OldStyleReal(ContinuousDensityModel):
    """A real-valued model written against 0.1.0: ``ContinuousDensityModel`` with ``MixtureParams``."""

    def __init__(self, event_shape=(1, 2, 3), num_categories: int = 0, ordering: str = "raster") -> None:
        super().__init__(event_shape, num_categories, ordering)
        self.weights = torch.nn.Parameter(torch.zeros(self.num_positions, 3, 2))

    def conditional_params(self, x):
        seq = self.to_sequence(self.validate(x))
        previous = torch.nn.functional.pad(seq[:, :-1], (1, 0)).unsqueeze(-1)  # (B, D, 1)
        logits, means, log_scales = (self.weights[:, i] * (1 + 0.1 * i * previous) for i in range(3))
        return MixtureParams(logits, means + 0.5 * previous, log_scales)


@pytest.mark.parametrize("factory", [OldStyleCategorical, OldStyleReal])
def test_a_plugin_model_written_before_families_passes_the_kit(factory):
    results = run_checks(factory)
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]
    model = factory()
    assert model.family == (Categorical(2) if factory is OldStyleCategorical else GaussianMixture())


def test_the_example_plugin_as_0_1_0_shipped_it_passes_densreg_check(tmp_path):
    """``densreg_mixture_0_1_0`` is examples/densreg-mixture's package as released with 0.1.0 (registering the
    class itself, importing torch at the top), installed here through an entry point of its own."""
    package = tmp_path / "densreg_mixture_0_1_0"  # kept as .py.txt: the tree holds no second copy of its code
    package.mkdir()
    for source in (FIXTURES / "densreg_mixture_0_1_0").glob("*.py.txt"):
        (package / source.name.removesuffix(".txt")).write_text(source.read_text())
    dist = tmp_path / "old_mixture-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: old-mixture\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[densreg]\nold-mixture = densreg_mixture_0_1_0.plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DENSREG_STRICT_PLUGINS": "1"}
    run = subprocess.run([sys.executable, "-m", "densreg", "check", "old-mixture:mixture", "--set", "components=2",
                          "--set", "iterations=3", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    statuses = {r["name"]: r["status"] for r in json.loads(run.stdout)["results"]}
    assert statuses == {name: "passed" for name in statuses} and "export" in statuses, statuses
