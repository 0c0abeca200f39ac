"""The checks that write the model out, written once for every family: ``round_trip`` and ``export``.

- ``round_trip``: save_checkpoint, load_checkpoint through the registry: same class and config, the
  checkpoint records the model's value kind, same log_prob and same samples for the same noise.
- ``export``: the check the exporter's plugin registers (``register_checks``; ``densreg.export.check``):
  ``export_model`` with parity, then the onnxruntime model's log_prob (1e-4 nats for a discrete
  family, 1e-3 for a real one) and samples for the same noise (identical values, or within 1e-3 for
  real values; at most 2 of 200 may differ: a value drawn right at a CDF boundary may legitimately
  differ). Skipped when no plugin provides it. The core never imports the exporter.
"""

from __future__ import annotations

import json
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import torch

from ..api import register_plugin, unregister_plugin
from ..checkpoint import load_checkpoint, save_checkpoint
from ..hookspecs import hookimpl
from .subject import CheckFailed, CheckSkipped, Subject, all_images, describe, random_values, space

ROUND_TRIP_SPACES = {True: (((1, 2, 3), 2), ((1, 2, 2), 3)), False: (((1, 2, 3), 0),)}
EXPORT_TOL = 1e-4  # nats, discrete families
EXPORT_LOG_PROB_TOL = {True: EXPORT_TOL, False: 1e-3}  # nats per image
EXPORT_SAMPLE_TOL = 1e-3  # real values, absolute per value
NO_EXPORTER = "no plugin provides the export check (densreg.export's plugin 'export' is not loaded)"


def probes(model, shape, k: int, seed: int) -> torch.Tensor:
    """Every image of a discrete space, or 16 ``random_values`` of a real one (seeded)."""
    if model.family.discrete:
        return all_images(shape, k)
    return random_values(shape, 16, seed=seed).to(model.value_dtype)


def noise_for(model, n: int, seed: int) -> torch.Tensor:
    return torch.rand(model.noise_shape(n), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@contextmanager
def registered(subject: Subject):
    """The subject's registry name; a factory is registered in-process for the duration."""
    if subject.name is not None:
        yield subject.name
        return

    def register_models(register):
        register(subject.factory, name="subject", description="model under conformance check")

    plugin = types.SimpleNamespace(register_models=hookimpl(register_models))
    register_plugin(plugin, "conformance")
    try:
        yield "conformance:subject"
    finally:
        unregister_plugin("conformance")


def reload(subject: Subject, model):
    with tempfile.TemporaryDirectory() as tmp, registered(subject) as name:
        path = Path(tmp) / "model.safetensors"
        save_checkpoint(path, model, name)
        try:
            return load_checkpoint(path)
        except Exception as exc:
            raise CheckFailed(f"load_checkpoint could not rebuild the model from its own checkpoint: {exc} "
                              "(config() must return keyword arguments the factory accepts, and every tensor "
                              "must be a parameter or buffer of the rebuilt model)") from exc


def round_trip(subject: Subject) -> str:
    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    config = model.config()
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise CheckFailed(f"config() is not JSON-able: {exc}") from exc
    x, noise = probes(model, shape, k, seed=5), noise_for(model, 64, seed=5)
    with torch.no_grad():
        before = model.log_prob(x).double()
    before_samples = model.sample(64, noise=noise)
    again, info = reload(subject, model)
    if type(again) is not type(model):
        raise CheckFailed(f"the checkpoint rebuilt a {type(again).__name__}, not a {type(model).__name__}")
    if again.config() != config:
        keys = sorted(key for key in set(config) | set(again.config()) if config.get(key) != again.config().get(key))
        raise CheckFailed(f"config() of the reloaded model differs in {', '.join(map(repr, keys))}: "
                          f"saved {({key: config.get(key) for key in keys})}, rebuilt "
                          f"{({key: again.config().get(key) for key in keys})} (does the constructor store "
                          "what config() reports?)")
    if info.value_kind != model.value_kind:
        raise CheckFailed(f"the checkpoint records value_kind {info.value_kind!r}, expected {model.value_kind!r}")
    with torch.no_grad():
        diff = float((again.log_prob(x).double() - before).abs().max())
    if diff > 1e-6:
        raise CheckFailed(f"log_prob of the model reloaded from its checkpoint differs by {diff:.3g} nats: state "
                          "that shapes the density is neither in config() nor a parameter or buffer "
                          "(register tensors with register_buffer, or add the value to config())")
    if not torch.equal(again.sample(64, noise=noise), before_samples):
        raise CheckFailed("samples of the reloaded model differ from the original's for the same noise: the step "
                          "state depends on something not saved in the checkpoint")
    return f"config {json.dumps(config)} rebuilt through the registry; log_prob and samples identical"


def export(subject: Subject) -> str:
    """The exporter's check, registered by its plugin (``register_checks``); skipped where none is loaded."""
    from ..api import get_catalog

    check = get_catalog().checks.get("export")
    if check is None:
        raise CheckSkipped(NO_EXPORTER)
    return check(subject)
