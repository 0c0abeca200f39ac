"""Property-based tests of the model boundary: random configs (random keys, values of every JSON
type, absurd sizes) into ``create_model`` for every registered model. The only outcomes are a
model or a DensregError, each within seconds and without allocating what the machine lacks."""

import inspect
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densreg.registry import DensityModel, DensregError, create_model, list_models, model_spec
from densreg.registry.catalog import RESERVED_KEYS

SECONDS = 10.0  # per create_model call, on a loaded 2-core machine
MAX_BYTES = 1 << 30  # what a model built from these small shapes may hold

SMALL_SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8))
BAD_SHAPES = st.one_of(st.tuples(st.integers(-2, 0), st.integers(1, 3), st.integers(1, 3)),
                       st.lists(st.integers(1, 3), max_size=5).filter(lambda s: len(s) != 3).map(tuple))
CATEGORIES = st.one_of(st.sampled_from([2, 3, 4, 17, 256]), st.integers(-2, 1))
# Sizes are small or absurd (2^31 and up: refused, or failing at once in the allocator), never
# the gigabyte middle that a default cap sized to this machine would rightly still allow.
ABSURD = st.sampled_from([2 ** 31, 2 ** 40, 2 ** 62, 10 ** 30, -(2 ** 62)])
VALUES = st.one_of(
    st.integers(-3, 12), ABSURD, st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(["raster", "snake", "column", "random:3", "random:x", "sigmoid", "relu",
                                          "em", "gradient", ""]),
    st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def config_keys(name: str) -> list[str]:
    params = inspect.signature(model_spec(name).factory).parameters
    return [key for key in params if key not in RESERVED_KEYS]


def configs(name: str):
    """Random overrides: a subset of the model's own keys, sometimes a key it does not take."""
    keys = st.sampled_from(config_keys(name) + ["nope"])
    return st.dictionaries(keys, VALUES, max_size=4)


def model_bytes(model: DensityModel) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def build(name, shape, k, config):
    """create_model's outcome: the model, or the DensregError it raised; anything else fails the test."""
    start = time.perf_counter()
    try:
        model = create_model(name, shape, k, **config)
    except DensregError as exc:
        model = exc
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"create_model({name!r}, {shape}, {k}, **{config}) took {elapsed:.1f} s"
    if isinstance(model, DensityModel):
        assert model_bytes(model) < MAX_BYTES
        assert model.event_shape == tuple(shape) and model.num_categories == k
    else:
        assert str(model) and "\n" not in str(model).strip()  # one line for the CLI
    return model


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


@pytest.mark.parametrize("name", list_models())
def test_random_configs_give_a_model_or_a_densreg_error(name):
    @SETTINGS
    @given(shape=SMALL_SHAPES, k=CATEGORIES, config=configs(name))
    def check(shape, k, config):
        build(name, shape, k, config)

    with torch.no_grad():
        check()


@pytest.mark.parametrize("name", list_models())
def test_bad_shapes_are_refused_with_a_densreg_error(name):
    @SETTINGS
    @given(shape=BAD_SHAPES, k=CATEGORIES)
    def check(shape, k):
        assert isinstance(build(name, shape, k, {}), DensregError)

    check()


SIZE_KEYS = ("hidden", "layers", "output_hidden", "components", "order")
SIZED = [(name, key) for name in list_models() for key in config_keys(name) if key in SIZE_KEYS]


def test_every_sized_built_in_is_covered():
    assert {("nade", "hidden"), ("pixelrnn", "layers"), ("row-lstm", "output_hidden"),
            ("diagonal-bilstm", "hidden"), ("markov", "order")} <= set(SIZED)


@pytest.mark.parametrize(("name", "key"), SIZED)
def test_absurd_sizes_are_refused_fast(name, key):
    for value in (2 ** 31, 2 ** 62, 10 ** 30):
        assert isinstance(build(name, (1, 8, 8), 2, {key: value}), DensregError), (key, value)
