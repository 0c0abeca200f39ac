"""The ``baselines`` plugin: ``bernoulli`` and ``markov`` (``densreg.plugins.baselines``).

Registered by import path, so listing them imports no torch; the module is imported on
first use. Names and descriptions equal the classes' own (tests/test_lazy_plugins.py).
"""

from densreg.registry import hookimpl


MODELS = {  # name: (import path, description)
    "bernoulli": ("densreg.plugins.baselines:Bernoulli",
                  "Independent Bernoulli/categorical per value, fit by counting (add-alpha smoothing)"),
    "markov": ("densreg.plugins.baselines:Markov",
               "Markov chain of order k along the ordering (AR-k table), fit by counting"),
}


@hookimpl
def register_models(register):
    for name, (target, description) in MODELS.items():
        register(target, name=name, description=description)
