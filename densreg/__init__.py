"""densreg: explicit density models for discrete images, from plugins.

The public face:

>>> import densreg
>>> model = densreg.create_model("markov", event_shape=(1, 8, 8), order=2)
>>> metrics = densreg.fit(model, densreg.load_split("digits", "train"))   # counting; nade: gradient
>>> nll = -model.log_prob(densreg.load_split("digits", "test"))           # nats, (300,)
>>> round(nll.mean().item(), 2)
23.13

Every name here comes from a subpackage, loaded on first use: the core
(``densreg.registry``: protocol, registry, checkpoints, errors, conformance kit), the
application (``densreg.app``: training, evaluation, the CLI) and the ONNX side
(``densreg.export``; its runtime never imports torch).
"""

from __future__ import annotations

from densreg.registry.lazy import lazy_exports

_EXPORTS = {
    "densreg.registry": (
        "CheckpointError", "ConfigError", "ContinuousDensityModel", "DataError", "Dataset", "DensityModel", "DensregError", "ExportError",
        "ModelSpec", "PluginError", "RuntimeLoadError", "SavedModelInfo", "State", "UnknownNameError",
        "__version__", "at_position", "categorical_from_uniform", "create_model", "get_dataset", "hookimpl",
        "list_datasets", "list_models", "list_plugins", "load_checkpoint", "load_split", "make_ordering",
        "MixtureParams", "Categorical", "Family", "GaussianMixture", "model_spec", "register_plugin", "save_checkpoint", "unregister_plugin", "validate_images"),
    "densreg.registry.pretrained": ("list_pretrained", "load_pretrained"),
    "densreg.app.training": ("TrainingOptions", "fit"),
    "densreg.app.evaluation": ("evaluate",),
    "densreg.app.scoring": ("score_images",),
    "densreg.app.completion": ("complete",),
    "densreg.export": ("export_model",),
    "densreg.export.runtime": ("ExportedModel",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
