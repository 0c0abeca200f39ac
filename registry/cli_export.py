"""`densreg export` and `densreg runtime`: ONNX export and the onnxruntime side."""

from .cli import cli  # noqa: F401
