"""densreg.export: ONNX export (torch side) and the onnxruntime runtime (no torch).

    from densreg.export import export_model            # imports torch, onnx
    from densreg.export.runtime import ExportedModel   # onnxruntime + numpy only

The exporter is imported lazily (module ``__getattr__``), so importing this package
or its runtime never imports torch.
"""

from densreg.registry.errors import ExportError, RuntimeLoadError

_EXPORTER = ("export_model", "parity_check", "ConditionalsGraph", "StepGraph")


def __getattr__(name):
    if name in _EXPORTER:
        from . import exporter

        return getattr(exporter, name)
    if name == "ExportedModel":
        from .runtime import ExportedModel

        return ExportedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExportError", "ExportedModel", "RuntimeLoadError", *_EXPORTER]
