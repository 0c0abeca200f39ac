"""Families of one-dimensional conditionals (``base.Family``): what a model's parameters mean.

``Categorical(K)`` (values 0..K-1; K = 2 is the Bernoulli) and ``GaussianMixture(M)`` (real
values). ``family_from_spec`` rebuilds a family from the JSON that checkpoints and export
manifests record. torch-free: the runtime shares these classes.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Family
from .categorical import Categorical, inverse_cdf
from .gaussian_mixture import GaussianMixture, MixtureParams, mixture_log_density

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (Categorical, GaussianMixture)}


def register_family(cls: type[Family]) -> type[Family]:
    """Make ``cls`` known to ``family_from_spec`` under ``cls.name`` (a class decorator); ConfigError if the
    name is taken by another class."""
    if FAMILIES.get(cls.name, cls) is not cls:
        raise ConfigError(f"family name {cls.name!r} is already registered by {FAMILIES[cls.name].__name__}")
    FAMILIES[cls.name] = cls
    return cls


def family_from_spec(spec: dict) -> Family:
    """The family a ``Family.spec()`` describes; ConfigError (one line) for an unknown name or bad arguments."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"a family is described by a JSON object with a name, got {spec!r:.80}")
    cls = FAMILIES.get(spec["name"])
    if cls is None:
        raise ConfigError(f"unknown family {spec['name']!r:.40}; known: {', '.join(FAMILIES)}")
    try:
        return cls(**{k: v for k, v in spec.items() if k != "name"})
    except TypeError as exc:
        raise ConfigError(f"bad arguments for family {spec['name']!r}: {exc}") from None


__all__ = ["Categorical", "FAMILIES", "Family", "GaussianMixture", "MixtureParams", "family_from_spec",
           "inverse_cdf", "mixture_log_density", "register_family"]
