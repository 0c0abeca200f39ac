"""Property-based tests (hypothesis) of the rules for what a model returns (``densreg.registry.returns``):
random shapes, dtypes and values (NaN, +-inf, log p above 0) given to each rule, as numpy arrays and as
torch tensors. A rule accepts exactly what its documented conditions accept, the same for both kinds of
array, and refuses with a one-line ModelOutputError that starts with the method's name."""

import math
import types

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from densreg.registry import Categorical, GaussianMixture, ModelOutputError  # noqa: E402
from densreg.registry import returns  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = types.SimpleNamespace(registry_name="toy")
VALUES = st.sampled_from([0.0, -1.0, -30.0, 2.0, 5e-4, 0.5, math.nan, math.inf, -math.inf])
DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.bool_])


def arrays(shapes):
    return DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, shapes, elements=VALUES.map(lambda v: _cast(v, dtype))))


def _cast(value, dtype):
    if np.dtype(dtype).kind == "f":
        return value
    return bool(value) if dtype == np.bool_ else int(value) if math.isfinite(value) else 0


def verdicts(rule, array) -> set:
    """The rule's verdict (True: accepted) on the array and on the same values as a torch tensor."""
    out = set()
    for x in (array, torch.from_numpy(np.ascontiguousarray(array))):
        try:
            rule(x)
            out.add(True)
        except ModelOutputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("model 'toy': ")
            out.add(False)
    return out


@SETTINGS
@given(array=arrays(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)), batch=st.integers(1, 4),
       discrete=st.booleans())
def test_log_probs_accept_exactly_floats_of_the_shape_without_nan_or_posinf(array, batch, discrete):
    floating = array.dtype.kind == "f"
    expected = array.shape == (batch,) and floating and not np.isnan(array).any() and \
        not (array == np.inf).any() and not (discrete and array.size and array.max() > returns.LOG_PROB_SLACK)
    rule = lambda x: returns.log_probs(MODEL, "log_prob", x, (batch,), "(B,)", discrete)  # noqa: E731
    assert verdicts(rule, array) == {expected}


@SETTINGS
@given(logits=arrays(st.just((2, 3, 2))), means=arrays(st.sampled_from([(2, 3, 2), (2, 2, 3)])),
       log_scales=arrays(st.just((2, 3, 2))))
def test_mixture_parameters_need_their_shape_and_finite_values_but_log_weights_may_be_minus_inf(logits, means,
                                                                                                 log_scales):
    params = (logits, means, log_scales)
    shaped = all(p.shape == (2, 3, 2) and p.dtype.kind == "f" for p in params)
    expected = shaped and not np.isnan(logits).any() and not (logits == np.inf).any() and \
        (logits.max(-1) > -np.inf).all() and np.isfinite(means).all() and np.isfinite(log_scales).all()
    family = GaussianMixture(2)
    out = set()
    for convert in (np.asarray, lambda a: torch.from_numpy(np.ascontiguousarray(a))):
        try:
            returns.params(MODEL, "conditional_params", tuple(convert(p) for p in params), family, (2, 3))
            out.add(True)
        except ModelOutputError as exc:
            assert exc.rule.startswith("conditional_params returned")
            out.add(False)
    assert out == {expected}


@SETTINGS
@given(array=arrays(st.sampled_from([(3, 1, 1, 2), (3, 1, 2, 1), (2, 1, 1, 2)])))
def test_discrete_samples_are_int64_of_the_shape_in_0_to_k_minus_1(array):
    expected = array.shape == (3, 1, 1, 2) and array.dtype == np.int64 and (array >= 0).all() and (array < 3).all()
    rule = lambda x: returns.samples(MODEL, x, 3, (1, 1, 2), Categorical(3))  # noqa: E731
    assert verdicts(rule, array) == {expected}
