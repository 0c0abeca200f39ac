"""The installed densreg version (of densreg, or of densreg-runtime, its torch-free half)."""

from importlib.metadata import PackageNotFoundError, version


def _installed() -> str:
    for distribution in ("densreg", "densreg-runtime"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "0.0.0+unknown"  # running from a source tree that is not installed


__version__ = _installed()
