"""Input validation at the boundary and the orderings."""

import math

import numpy as np
import pytest
import torch

from densreg.registry import DataError, DensityModel, create_model, make_ordering, validate_images
from densreg.registry.errors import ConfigError
from densreg.registry.conformance import randomize
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
    (torch.zeros(2, 1, 2, 1, dtype=torch.int64), r"got shape \(2, 1, 2, 1\)"),
    (torch.zeros(1, 1, 2, 2, dtype=torch.complex64), r"expected integer values 0\.\.1, got complex"),
    (torch.full((1, 1, 2, 2), 2), r"values must lie in 0..1; got values from 2 to 2"),
    (torch.full((1, 1, 2, 2), -1), r"values must lie in 0..1"),
    (torch.full((1, 1, 2, 2), 0.5), r"non-integer values; expected integers 0\.\.1"),
    (torch.full((1, 1, 2, 2), 0.7), "non-integer"),  # rounds up: 0.7 < round(0.7)
    (torch.full((1, 1, 2, 2), float("nan")), "NaN"),
    ([[0, 1]], "expected a tensor or numpy array"),
])
def test_validation_rejects(bad, message):
    with pytest.raises(DataError, match=message):  # a DataError: the CLI reports it as a user error (exit 1)
        validate_images(bad, (1, 2, 2), 2)


def test_validation_accepts_whole_floats_and_numpy():
    x = validate_images(np.ones((3, 1, 2, 2), dtype=np.uint8), (1, 2, 2), 2)
    assert x.dtype == torch.int64 and x.shape == (3, 1, 2, 2)
    assert validate_images(torch.ones(1, 1, 2, 2), (1, 2, 2), 2).dtype == torch.int64
    full_range = np.full((1, 1, 2, 2), 255, dtype=np.uint8)  # K = 256 takes 8-bit images as they are
    assert validate_images(full_range, (1, 2, 2), 256).max().item() == 255
    with pytest.raises(ValueError, match="got values from 255 to 255"):
        validate_images(full_range, (1, 2, 2), 255)


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


@pytest.mark.parametrize("shape, k", [((1, 0, 2), 2), ((0, 2, 2), 2), ((1, 2), 2), ((1, 2, 2, 1), 2), ((1, 2, 2), 1),
                                      ((1, 2, 2), 0)])
def test_model_refuses_empty_shapes_and_fewer_than_two_levels(shape, k):
    with pytest.raises(ConfigError):
        create_model("bernoulli", shape, k)


def test_smallest_model_is_one_binary_value():
    model = create_model("bernoulli", (1, 1, 1), 2)
    assert model.num_positions == 1 and model.log_prob(torch.tensor([[[[1]]]])).item() == pytest.approx(-math.log(2))


def test_free_parameters_count_trainable_elements_only():
    from densreg.registry import DensityModel

    class Two(DensityModel):
        def __init__(self):
            super().__init__((1, 2, 3), 2)
            self.trained = torch.nn.Parameter(torch.zeros(2, 3))
            self.frozen = torch.nn.Parameter(torch.zeros(5), requires_grad=False)

    assert Two().free_parameters() == 6


def test_categorical_from_uniform_never_returns_k():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(2, 3)
    assert categorical_from_uniform(logits, torch.tensor([1.0, 1.0 - 1e-12])).tolist() == [2, 2]


def test_pixel_log_probs_are_laid_out_as_the_image():
    model = create_model("markov", (2, 2, 3), 3, order=2, ordering="random:5")
    randomize(model, buffers=True)
    x = torch.randint(0, 3, (4, 2, 2, 3), generator=torch.Generator().manual_seed(1))
    pixels = model.pixel_log_probs(x)
    seq = model.conditional_log_probs(x)  # generation order
    assert pixels.shape == x.shape
    for d, flat in enumerate(model.order.tolist()):
        c, rest = divmod(flat, 6)
        h, w = divmod(rest, 3)
        torch.testing.assert_close(pixels[:, c, h, w], seq[:, d], rtol=0, atol=0)
    torch.testing.assert_close(pixels.sum((1, 2, 3)), model.log_prob(x), rtol=1e-6, atol=1e-5)


def test_sample_from_a_generator_uses_its_uniform_draws():
    model = create_model("markov", (1, 2, 3), 3, order=1, ordering="snake")
    randomize(model, buffers=True)
    drawn = model.sample(5, generator=torch.Generator().manual_seed(7))
    noise = torch.rand(5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(drawn, model.sample(5, noise=noise))
    assert drawn.shape == (5, 1, 2, 3) and drawn.dtype == torch.int64


def test_categorical_from_uniform_at_a_cdf_value_takes_the_lower_level():
    """u exactly F(k) draws k (strictly-below count), as draw.onnx's Less does: torch and
    onnxruntime must break such ties alike."""
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    cdf = torch.cumsum(torch.softmax(logits.double(), -1), -1)[0]
    noise = torch.stack([cdf[0], cdf[1], torch.nextafter(cdf[0], torch.tensor(1.0, dtype=torch.float64))])
    assert categorical_from_uniform(logits.expand(3, 3), noise).tolist() == [0, 1, 1]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_wide_unsigned_numpy_images_are_range_checked_and_widened(dtype):
    """torch cannot compare uint16/32/64: they are checked in numpy and come back as int64."""
    x = validate_images(np.array([[[[0, 1], [1, 0]]]], dtype=dtype), (1, 2, 2), 2)
    assert x.dtype == torch.int64 and x.tolist() == [[[[0, 1], [1, 0]]]]
    for too_big in (2, 7):
        with pytest.raises(DataError, match=rf"values must lie in 0\.\.1; got values from 0 to {too_big}$"):
            validate_images(np.array([[[[0, 1], [too_big, 0]]]], dtype=dtype), (1, 2, 2), 2)
    empty = validate_images(np.zeros((0, 1, 2, 2), dtype=dtype), (1, 2, 2), 2)
    assert empty.dtype == torch.int64 and empty.shape == (0, 1, 2, 2)


def test_numpy_float_and_byte_images_take_the_tensor_checks():
    """Floats are never truncated to integers; uint8 and signed arrays are range-checked as tensors."""
    with pytest.raises(DataError, match="non-integer"):
        validate_images(np.full((1, 1, 2, 2), 0.5), (1, 2, 2), 2)
    assert validate_images(np.ones((1, 1, 2, 2)), (1, 2, 2), 2).dtype == torch.int64
    with pytest.raises(DataError, match=r"values must lie in 0\.\.1; got values from 0 to 2$"):
        validate_images(np.array([[[[0, 1], [2, 0]]]], dtype=np.uint8), (1, 2, 2), 2)
    with pytest.raises(DataError, match=r"values must lie in 0\.\.2; got values from -1 to 1$"):
        validate_images(np.array([[[[0, 1], [-1, 0]]]], dtype=np.int16), (1, 2, 2), 3)


def test_big_endian_numpy_images_keep_their_values():
    x = validate_images(np.array([[[[0, 1], [2, 1]]]], dtype=">i4"), (1, 2, 2), 3)
    assert x.tolist() == [[[[0, 1], [2, 1]]]]


@pytest.mark.parametrize("array", [np.array([[[["a", "b"], ["c", "d"]]]]), np.full((1, 1, 2, 2), None)])
def test_numpy_images_of_a_non_numeric_dtype_are_refused(array):
    with pytest.raises(DataError, match=r"^expected integer values 0\.\.2, got an array of dtype (<U1|object)$"):
        validate_images(array, (1, 2, 2), 3)


def test_categorical_from_uniform_clamps_a_draw_past_a_cdf_rounded_below_one():
    """Seven equal levels: the float64 cdf ends at 1 - 2**-52, so the largest noise below 1 lies past it."""
    logits = torch.zeros(2, 7)
    assert torch.cumsum(torch.softmax(logits.double(), -1), -1)[0, -1] < 1 - 2 ** -53
    assert categorical_from_uniform(logits, torch.tensor([1 - 2 ** -53, 0.5], dtype=torch.float64)).tolist() == [6, 3]


def test_sample_draws_each_value_by_the_inverse_cdf_and_lays_it_out_as_the_image():
    model = create_model("bernoulli", (1, 2, 2), 2, ordering="column")  # generates (0,0) (1,0) (0,1) (1,1)
    with torch.no_grad():
        p_one = torch.tensor([0.2, 0.5, 0.9, 0.7], dtype=torch.float64)
        model.log_probs.copy_(torch.stack([1 - p_one, p_one], -1).log())
    noise = torch.tensor([[0.9, 0.4, 0.05, 0.35], [0.1, 0.6, 0.5, 0.25]], dtype=torch.float64)
    # x = 1 where the noise exceeds p(0) = 0.8, 0.5, 0.1, 0.3 (generation order)
    assert model.sample(2, noise=noise).tolist() == [[[[1, 0], [0, 1]]], [[[0, 1], [1, 0]]]]
    assert model.sample(2, noise=noise, naive=True).tolist() == [[[[1, 0], [0, 1]]], [[[0, 1], [1, 0]]]]


class Counting(DensityModel):
    """Every value independent and uniform; counts the passes of its cached step and of its network."""

    def __init__(self, event_shape=(1, 2, 3)):
        super().__init__(event_shape)
        self.weight = torch.nn.Parameter(torch.zeros(self.num_categories))
        self.calls = {"step": 0, "conditional_logits": 0}
        self.grad_enabled = set()

    def conditional_logits(self, x):
        self.calls["conditional_logits"] += 1
        self.grad_enabled.add(torch.is_grad_enabled())
        return self.weight.expand(x.shape[0], self.num_positions, -1)

    def initial_state(self, batch_size):
        return ()

    def step(self, value, position, state):
        self.calls["step"] += 1
        self.grad_enabled.add(torch.is_grad_enabled())
        return self.weight.expand(value.shape[0], -1), state


def test_sample_runs_the_cached_step_and_naive_the_network_without_gradients():
    model = Counting()
    model.sample(3)
    assert model.calls == {"step": 6, "conditional_logits": 0}
    model.sample(3, naive=True)
    assert model.calls == {"step": 6, "conditional_logits": 6}
    assert model.grad_enabled == {False}  # sampling records no graph


def test_a_bare_model_is_binary_fitted_by_gradients_and_keeps_its_ordering_out_of_its_state():
    model = Counting()
    assert model.num_categories == 2 and model.closed_form is False and model.value_kind == "categorical"
    assert list(model.state_dict()) == ["weight"]  # the order buffer is rebuilt from the config
    with pytest.raises(NotImplementedError, match="Counting has no closed-form fit"):
        model.fit_closed_form(torch.zeros(1, 1, 2, 3, dtype=torch.int64))


def test_real_values_keep_float64_become_float32_otherwise_and_must_be_finite():
    """num_categories 0 means real values (continuous models): no range, no rounding."""
    x64 = validate_images(torch.full((2, 1, 2, 2), 0.25, dtype=torch.float64), (1, 2, 2), 0)
    assert x64.dtype == torch.float64 and x64.shape == (2, 1, 2, 2) and float(x64.sum()) == 2.0
    for values in (torch.full((1, 1, 2, 2), -3), np.full((1, 1, 2, 2), -3, dtype=np.int16),
                   np.full((1, 1, 2, 2), -3.0, dtype=np.float32)):
        x = validate_images(values, (1, 2, 2), 0)
        assert x.dtype == torch.float32 and x.tolist() == [[[[-3.0, -3.0], [-3.0, -3.0]]]]
    assert validate_images(np.full((1, 1, 2, 2), 1e300), (1, 2, 2), 0).dtype == torch.float64
    for bad, message in [(torch.full((1, 1, 2, 2), float("inf")), "NaN or infinite"),
                         (np.full((1, 1, 2, 2), np.nan), "NaN or infinite"),
                         (torch.zeros(1, 2, 2), r"expected values of shape \(B, 1, 2, 2\), got shape \(1, 2, 2\)"),
                         (torch.zeros(1, 1, 2, 3), r"got shape \(1, 1, 2, 3\)"),
                         (torch.zeros(1, 1, 2, 1), r"got shape \(1, 1, 2, 1\)"),
                         (np.full((1, 1, 2, 2), np.inf, dtype=np.float32), "too large for float32"),
                         (np.zeros((1, 1, 2, 2), dtype=np.complex128), "got an array of dtype complex128"),
                         (torch.zeros(1, 1, 2, 2, dtype=torch.complex64), "complex"),
                         ([[0.5]], "expected a tensor or numpy array of real values, got list")]:
        with pytest.raises(DataError, match=message):
            validate_images(bad, (1, 2, 2), 0)
