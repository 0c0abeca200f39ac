"""`densreg check`: run the conformance checks on a model."""

from .cli import cli  # noqa: F401
