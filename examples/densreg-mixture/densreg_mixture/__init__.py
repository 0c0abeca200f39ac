"""densreg-mixture: a third-party densreg plugin adding the ``mixture`` model and the ``bars`` dataset."""

from .model import Mixture

__all__ = ["Mixture"]
__version__ = "0.1.0"
