"""Built-in models of real-valued data (mixture-of-Gaussians conditionals): ``rnade`` and ``gaussian-mixture``.

Registered through the same ``register_models`` hook a third-party plugin uses (entry point
``continuous``); both are ``DensityModel`` subclasses whose family is ``GaussianMixture``.
"""

from densreg.registry import hookimpl

from .gaussian_mixture import GaussianMixture
from .rnade import RNADE


@hookimpl
def register_models(register):
    register(RNADE)
    register(GaussianMixture)
