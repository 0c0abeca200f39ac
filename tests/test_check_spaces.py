"""`densreg check` beyond the tiny one-channel spaces: the colour pass (C = 3) that meets channel masks,
and --shape / --categories for a space of the user's choosing."""

import json

import pytest
import torch
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.registry import ConfigError, DensityModel
from densreg.registry.conformance import COLOUR_SPACES, run_checks, run_colour_checks
from densreg.registry.testing import single_torch_thread  # noqa: F401 - autouse fixture

from test_conformance import Linear


class PeeksAtTheNextChannel(Linear):
    """Correct on one channel; with C > 1 the conditional of a value also sees the next channel's value of
    its pixel (reversed channel masks: G seen when R is predicted)."""

    def conditional_logits(self, x):
        logits = super().conditional_logits(x)
        c_count = self.event_shape[0]
        if c_count == 1:
            return logits
        flat = self.validate(x).reshape(len(x), -1).float()  # C, H, W order
        pixels = flat.shape[1] // c_count
        later = torch.cat([flat[:, pixels:], torch.zeros_like(flat[:, :pixels])], 1)  # next channel, same pixel
        return logits + 0.5 * later[:, self.order].unsqueeze(-1) * torch.tensor([1.0, -1.0][: self.num_categories]
                                                                                 + [0.0] * (self.num_categories - 2))


class OneChannelOnly(Linear):
    def __init__(self, event_shape=(1, 2, 3), num_categories=2, ordering="raster"):
        if event_shape[0] != 1:
            raise ConfigError("one channel only")
        super().__init__(event_shape, num_categories, ordering)

    def config(self):
        return DensityModel.config(self)


def test_reversed_channel_masks_pass_on_one_channel_and_fail_the_colour_pass():
    quick = ("export", "round_trip", "sampling")
    assert all(r.passed for r in run_checks(PeeksAtTheNextChannel, skip=quick))
    colour = {r.name: r for r in run_colour_checks(PeeksAtTheNextChannel, skip=quick)}
    assert set(colour) == {"normalization (colour)", "chain_rule (colour)", "causality (colour)",
                           "gradient_path (colour)", "step (colour)"}
    assert colour["causality (colour)"].failed and "(3x1x2 K=2" in colour["causality (colour)"].detail
    assert "the model peeks at the future" in colour["causality (colour)"].detail
    assert colour["normalization (colour)"].failed  # a peek breaks the chain rule's sum to one as well


def test_a_model_that_refuses_colour_gets_one_skipped_line():
    (result,) = run_colour_checks(OneChannelOnly)
    assert result.name == "colour" and result.skipped
    assert result.detail == "not run: the model refuses 3x1x2 K=2: one channel only"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_check_runs_the_colour_pass_and_takes_a_shape():
    result = run("check", "markov", "--only", "causality", "--only", "round_trip")
    assert result.exit_code == 0, result.output
    rows = [line.split()[:3] for line in result.output.splitlines()]
    assert ["causality", "passed"] == rows[2][:2] and ["causality", "(colour)", "passed"] in rows
    assert not any(row[:2] == ["round_trip", "(colour)"] for row in rows)  # nothing to learn there
    result = run("check", "markov", "--only", "causality", "--only", "sampling", "--shape", "3,1,2",
                 "--categories", "3", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.output)["results"]
    assert [r["name"] for r in results] == ["causality", "sampling"]  # one space, no colour pass
    assert results[0]["detail"].startswith("3 space/ordering pairs") and "3x1x2 K=3" in results[1]["detail"]
    result = run("check", "markov", "--only", "causality", "--no-colour")
    assert result.exit_code == 0 and "(colour)" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--shape", "3,1"], "expected C,H,W (three positive integers), got '3,1'"),
    (["--shape", "1,0,2"], "expected C,H,W (three positive integers), got '1,0,2'"),
    (["--shape", "1,8,8"], "1x8x8 with K=2 has 2^64 images; normalization and sampling enumerate every image: at "
                           "most 4096"),
    (["--shape", "1,2,2", "--categories", "1"], "baselines:markov takes K >= 2 levels, got 1"),
    (["--categories", "3"], "--categories goes with --shape"),
])
def test_cli_check_refuses_a_space_it_cannot_check_in_one_line(args, message):
    result = run("check", "markov", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_colour_spaces_are_three_channel_and_small():
    for discrete, spaces in COLOUR_SPACES.items():
        assert all(shape[0] == 3 for shape, _ in spaces) and all((k >= 2) == discrete for _, k in spaces)
