"""The ``baselines`` plugin: ``bernoulli`` and ``markov`` (``densreg.plugins.baselines``).

Registered by import path, so listing them imports no torch; the module is imported on
first use. Names and descriptions equal the classes' own (tests/test_lazy_plugins.py).
"""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    register("densreg.plugins.baselines:Bernoulli", name="bernoulli",
             description="Independent Bernoulli/categorical per value, fit by counting (add-alpha smoothing)")
    register("densreg.plugins.baselines:Markov", name="markov",
             description="Markov chain of order k along the ordering (AR-k table), fit by counting")
