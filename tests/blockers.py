"""An import blocker for tests that run densreg in a subprocess as on a serving box: a ``sitecustomize.py``
source that makes importing the named top-level packages raise ImportError ("NAME is blocked...")."""

SERVING_BOX = ("torch", "onnx", "onnxscript", "safetensors", "click")  # onnxruntime and numpy only


def blocker(names, reason: str = "a serving box has onnxruntime and numpy only") -> str:
    """sitecustomize source blocking the top-level packages ``names`` (ImportError naming ``reason``)."""
    return f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {set(names)!r}:
            raise ImportError(f"{{name}} is blocked: {reason}")
sys.meta_path.insert(0, Blocker())
"""
