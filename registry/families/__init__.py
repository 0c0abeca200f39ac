"""Families of one-dimensional conditionals (``base.Family``): what a model's parameters mean.

``Categorical(K)`` (values 0..K-1; K = 2 is the Bernoulli), ``LogisticMixture(K, M)`` (PixelCNN++'s
discretized logistic mixture over 0..K-1) and ``GaussianMixture(M)`` (real values). ``family_from_spec`` rebuilds a family from the JSON that checkpoints and export
manifests record. torch-free: the runtime shares these classes.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Family, check_positive_int
from .categorical import Categorical, check_discrete_data, inverse_cdf
from .gaussian_mixture import MAX_COMPONENTS, GaussianMixture, MixtureParams, mixture_log_density
from .logistic_mixture import LogisticMixture

FAMILIES: dict[str, type[Family]] = {cls.name: cls for cls in (Categorical, GaussianMixture, LogisticMixture)}
LEVEL_FAMILIES = (Categorical, LogisticMixture)  # what a model of levels may emit, by its config key ``family``


def register_family(cls: type[Family]) -> type[Family]:
    """Make ``cls`` known to ``family_from_spec`` under ``cls.name`` (a class decorator); ConfigError if the
    name is taken by another class."""
    if FAMILIES.get(cls.name, cls) is not cls:
        raise ConfigError(f"family name {cls.name!r} is already registered by {FAMILIES[cls.name].__name__}")
    FAMILIES[cls.name] = cls
    return cls


def levels_family(name: str, num_categories: int, components: int) -> Family:
    """The family a model of levels 0..K-1 emits, chosen by its config key ``family``: "categorical" (a K-way
    softmax) or "logistic-mixture" (``components`` discretized logistics); ConfigError for another name or a
    ``components`` out of range (checked whichever the family: it is the model's config key too)."""
    check_positive_int("components", components, MAX_COMPONENTS)
    if name == Categorical.name:
        return Categorical.for_data(num_categories)
    if name == LogisticMixture.name:
        return LogisticMixture(check_discrete_data(num_categories), components)
    raise ConfigError(f"unknown family {name!r:.40} for values 0..K-1; known: "
                      f"{', '.join(cls.name for cls in LEVEL_FAMILIES)}")


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


__all__ = ["Categorical", "FAMILIES", "Family", "GaussianMixture", "LEVEL_FAMILIES", "LogisticMixture",
           "MixtureParams", "family_from_spec", "inverse_cdf", "levels_family", "mixture_log_density",
           "register_family"]
