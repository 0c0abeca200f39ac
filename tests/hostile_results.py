"""Hostile-catalogue cases of issue 28 (items 1, 2, 3 and 7): results checked at the door and the kit's
blind spots, through the CLI. Broken plugin models (the ones tests/test_model_results.py,
test_kit_real_checks.py and test_check_spaces.py define) are installed as a plugin in a site folder on
PYTHONPATH; checkpoints and export folders with non-finite weights are built-in models tampered with.
Declared like the other groups (hostile_cases.Catalogue); run by tests/test_hostile_catalogue.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hostile_cases import Catalogue, plugin_site

BROKEN_PLUGIN = '''
from densreg.registry import hookimpl
from test_check_spaces import PeeksAtTheNextChannel
from test_kit_real_checks import GradientOnly
from test_model_results import AboveOne, LongLogProb, NaNAfter, Transposed


class ShiftOnTraining(GradientOnly):
    """Moves its means only while autograd records."""

    how = "shift"


@hookimpl
def register_models(register):
    for model in (LongLogProb, Transposed, AboveOne, NaNAfter):
        register(model, name=model.registry_name, description=model.__doc__.splitlines()[0])
    register(ShiftOnTraining, name="shift-on-training", description="a defect on the gradient path only")
    register(PeeksAtTheNextChannel, name="peeks-at-green", description="reversed R/G/B masks")
'''


def shape_cases(cat: Catalogue, env: dict[str, str]) -> None:
    """Items 1 and 2 for plugin models: wrong shapes, NaN, and probabilities above one, in every command."""
    d = cat.d

    def checkpoints():
        from densreg.registry import save_checkpoint
        from test_model_results import SHAPE, LongLogProb, NaNAfter, Transposed

        for model in (LongLogProb(SHAPE), Transposed(SHAPE), NaNAfter(SHAPE, after=0)):
            save_checkpoint(d / f"{model.registry_name}.safetensors", model, model.registry_name)
    cat.step(checkpoints)
    png = d / "results-out.png"
    for args in (["eval", d / "long-log-prob.safetensors", "--dataset", "digits"],
                 ["eval", d / "transposed.safetensors", "--dataset", "digits"],
                 ["score", d / "transposed.safetensors", "--dataset", "digits"],
                 ["eval", d / "nan-after.safetensors", "--dataset", "digits"]):
        cat.add(f"{args[0]} of a plugin model {Path(args[1]).stem}", "results", args, env=env)
    # score reads the conditionals and complete the step, which these models compute right (their broken
    # log_prob is the chain-rule breach `densreg check` names): success is the right answer there
    for args in (["score", d / "long-log-prob.safetensors", "--dataset", "digits"],
                 ["score", d / "nan-after.safetensors", "--dataset", "digits"],
                 ["complete", d / "transposed.safetensors", "--dataset", "digits", "--keep", "3", "--out", png]):
        cat.add(f"{args[0]} of a plugin model {Path(args[1]).stem} (right where it is used)", "results", args,
                env=env, expect="ok")
    for model, more in (("long-log-prob", []), ("transposed", []), ("above-one", []),
                        ("nan-after", ["--set", "after=0"]), ("nan-after", ["--set", "after=12"])):
        out = d / f"trained-{model}.safetensors"
        cat.add(f"train a plugin model {model} {' '.join(more)}".strip(), "results",
                ["train", model, "--dataset", "digits", "--epochs", "2", "--threads", "1", "--out", out, *more],
                env=env)


def weight_cases(cat: Catalogue) -> None:
    """Item 1 for built-in models: +-inf weights in a checkpoint, NaN/+-inf in an export folder, an empty test
    split, a learning rate that diverges; item 3: an RNADE with extreme weights samples finite values."""
    d, png = cat.d, cat.d / "results-out.png"

    def infinite():
        from densreg.registry import save_checkpoint
        from test_model_results import bernoulli_with, poisoned_export

        for sign, value in (("plus", math.inf), ("minus", -math.inf)):
            save_checkpoint(d / f"bernoulli-{sign}-inf.safetensors", bernoulli_with(value), "bernoulli")
        for label, value in (("nan", math.nan), ("plus-inf", math.inf), ("minus-inf", -math.inf)):
            folder = d / f"poison-{label}"
            folder.mkdir()
            poisoned_export(folder, value).rename(d / f"export-{label}")
    cat.step(infinite)
    for sign in ("plus", "minus"):
        path = d / f"bernoulli-{sign}-inf.safetensors"
        cat.add(f"eval a checkpoint with {sign}-inf weights", "results", ["eval", path, "--dataset", "digits"])
        cat.add(f"score a checkpoint with {sign}-inf weights", "results", ["score", path, "--dataset", "digits"])
    cat.add("sample a checkpoint with +inf weights", "results",
            ["sample", d / "bernoulli-plus-inf.safetensors", "-n", "4", "--out", png])
    for label in ("nan", "plus-inf", "minus-inf"):
        folder = d / f"export-{label}"
        cat.add(f"eval an export with {label} weights", "results", ["eval", folder, "--dataset", "digits"])
        cat.add(f"sample an export with {label} weights", "results", ["sample", folder, "-n", "2", "--out", png])
    z = np.zeros((3, 28, 28), dtype=np.uint8)
    cat.step(lambda: np.savez(d / "empty-test.npz", train=z, valid=z, test=z[:0]))
    cat.add("eval on an empty test split", "results",
            ["eval", d / "nade.safetensors", "--dataset", "binarized-mnist", "--data", d / "empty-test.npz"])
    cat.add("train --lr 1e9", "results", ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--lr", "1e9",
                                          "--epochs", "3", "--threads", "1", "--out", d / "diverged.safetensors"])
    rnade = d / "rnade-extreme.safetensors"

    def extreme_rnade():
        import torch

        from densreg.registry import create_model, save_checkpoint

        torch.manual_seed(0)
        model = create_model("rnade", (1, 1, 63), num_categories=0, hidden=16, components=4)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape) * 30)  # wide, far-off components: the bound keeps samples finite
        save_checkpoint(rnade, model, "rnade")
    cat.step(extreme_rnade)
    cat.add("sample 1000 from an rnade with extreme weights", "results",
            ["sample", rnade, "-n", "1000", "--out", png, "--npz", d / "rnade-extreme.npz"], expect="ok")


def kit_cases(cat: Catalogue, env: dict[str, str]) -> None:
    """Item 7: `densreg check` sees a defect of the gradient path only, and reversed channel masks."""
    cat.add("check a model whose training path differs", "kit",
            ["check", "shift-on-training", "--only", "gradient_path"], env=env)
    cat.add("check a model with reversed R/G/B masks", "kit", ["check", "peeks-at-green", "--only", "causality"],
            env=env)
    cat.add("check a model with reversed R/G/B masks on --shape 3,1,2", "kit",
            ["check", "peeks-at-green", "--only", "causality", "--shape", "3,1,2"], env=env)


def result_cases(cat: Catalogue) -> None:
    """Every group of this module; the broken plugin's site on PYTHONPATH with the tests folder (its models
    are the test suite's)."""
    site = cat.d / "site-broken"
    cat.step(lambda: plugin_site(site, "broken", BROKEN_PLUGIN))
    env = {"PYTHONPATH": f"{site}:{Path(__file__).parent}"}
    for group in (shape_cases, kit_cases):
        group(cat, env)
    weight_cases(cat)
