"""Closed-form fits create every tensor on the data's device (a CUDA run found Markov's did not).

There is no GPU in CI, so the test runs the fit on CPU data while torch's default device is
"meta": any tensor made without an explicit device lands on meta and mixing it with the
CPU data raises, just as a CPU tensor mixed with CUDA data does.
"""
import pytest
import torch

from densreg.registry.api import create_model


@pytest.mark.parametrize("name, config", [("bernoulli", {}), ("markov", {"order": 1}),
                                          ("markov", {"order": 3})])
def test_closed_form_fit_uses_the_data_device(name, config):
    x = torch.randint(0, 3, (50, 1, 3, 4), generator=torch.Generator().manual_seed(0))
    expected = create_model(name, event_shape=(1, 3, 4), num_categories=3, **config)
    expected.fit_closed_form(x)
    model = create_model(name, event_shape=(1, 3, 4), num_categories=3, **config)
    with torch.device("meta"):
        model.fit_closed_form(x)
    torch.testing.assert_close(model.log_probs, expected.log_probs, rtol=0, atol=0)
