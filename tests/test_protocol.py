"""Input validation at the boundary and the orderings."""

import numpy as np
import pytest
import torch

from densreg.registry import DataError, create_model, make_ordering, validate_images
from densreg.registry.errors import ConfigError
from densreg.registry.protocol import categorical_from_uniform


@pytest.mark.parametrize("name", ["raster", "snake", "column", "random:7"])
@pytest.mark.parametrize("shape", [(1, 3, 4), (3, 2, 2)])
def test_orderings_are_permutations(name, shape):
    order = make_ordering(name, shape)
    assert sorted(order.tolist()) == list(range(int(np.prod(shape))))


def test_ordering_layouts():
    # flat index = c*H*W + h*W + w
    assert make_ordering("raster", (1, 2, 3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert make_ordering("snake", (1, 2, 3)).tolist() == [0, 1, 2, 5, 4, 3]
    assert make_ordering("snake", (1, 4, 2)).tolist() == [0, 1, 3, 2, 4, 5, 7, 6]  # every odd row reversed
    assert make_ordering("column", (1, 2, 3)).tolist() == [0, 3, 1, 4, 2, 5]
    # channels R, G, B within a pixel
    assert make_ordering("raster", (3, 1, 2)).tolist() == [0, 2, 4, 1, 3, 5]
    assert make_ordering("random:3", (1, 4, 4)).tolist() == make_ordering("random:3", (1, 4, 4)).tolist()
    assert make_ordering("random:3", (1, 4, 4)).tolist() != make_ordering("random:4", (1, 4, 4)).tolist()


# names before "column" and after "snake" in sort order, and a seed with a second colon
@pytest.mark.parametrize("name", ["diagonal", "", "alpha", "zigzag", "random:", "random:x", "random:3:4"])
def test_bad_ordering(name):
    with pytest.raises(ConfigError, match="ordering"):
        make_ordering(name, (1, 2, 2))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 2, 2, dtype=torch.int64), r"expected images of shape \(B, 1, 2, 2\), got shape \(2, 2, 2\)"),
    (torch.zeros(2, 1, 3, 2, dtype=torch.int64), r"got shape \(2, 1, 3, 2\)"),
    (torch.full((1, 1, 2, 2), 2), r"values must lie in 0..1; got values from 2 to 2"),
    (torch.full((1, 1, 2, 2), -1), r"values must lie in 0..1"),
    (torch.full((1, 1, 2, 2), 0.5), "non-integer"),
    (torch.full((1, 1, 2, 2), float("nan")), "NaN"),
    ([[0, 1]], "expected a tensor or numpy array"),
])
def test_validation_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_images(bad, (1, 2, 2), 2)


def test_validation_accepts_whole_floats_and_numpy():
    x = validate_images(np.ones((3, 1, 2, 2), dtype=np.uint8), (1, 2, 2), 2)
    assert x.dtype == torch.int64 and x.shape == (3, 1, 2, 2)
    assert validate_images(torch.ones(1, 1, 2, 2), (1, 2, 2), 2).dtype == torch.int64


def test_log_prob_validates():
    model = create_model("bernoulli", (1, 2, 2), 2)
    with pytest.raises(DataError):
        model.log_prob(torch.full((1, 1, 2, 2), 3))


def test_sequence_round_trip():
    model = create_model("markov", (3, 2, 3), 4, ordering="random:1")
    x = torch.randint(0, 4, (5, 3, 2, 3))
    assert torch.equal(model.from_sequence(model.to_sequence(x)), x)


def test_categorical_from_uniform_inverts_the_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(5, 3)
    noise = torch.tensor([0.0, 0.19, 0.21, 0.49, 0.99])
    assert categorical_from_uniform(logits, noise).tolist() == [0, 0, 1, 1, 2]
