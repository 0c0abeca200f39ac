"""densreg-mixture: a third-party densreg plugin adding the ``mixture`` model and the ``bars`` dataset.

``Mixture`` (and with it torch) is imported on first use, so ``densreg models`` stays fast.
"""

import importlib

__all__ = ["Mixture"]
__version__ = "0.1.0"


def __getattr__(name):
    """``Mixture`` from ``.model`` on first use (PEP 562)."""
    if name == "Mixture":
        return importlib.import_module(".model", __name__).Mixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
