"""`densreg features`: hidden representations of images (NADE, PixelRNN)."""

from .cli import cli  # noqa: F401
