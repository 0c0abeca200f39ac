"""`densreg plot`: learning curves from a training log."""

from .cli import cli  # noqa: F401
