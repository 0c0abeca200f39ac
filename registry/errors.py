"""Every exception densreg reports to a user; the CLI turns them into one line on stderr and exit 1.

Imports nothing, so the torch-free runtime (densreg.export.runtime) shares it.
"""


class DensregError(Exception):
    """Base class of every error densreg reports to a user."""


class ConfigError(DensregError, ValueError):
    """A model or dataset configuration value is invalid."""


class UnknownNameError(DensregError, KeyError):
    """No model, dataset or plugin has that name (or the name is ambiguous)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(DensregError):
    """A file is not a readable densreg checkpoint."""


class DataError(DensregError, ValueError):
    """Images or a data file are missing, corrupt, or not in the expected layout."""


class PluginError(DensregError):
    """A plugin failed to import or register (fatal with DENSREG_STRICT_PLUGINS=1)."""


class ExportError(DensregError):
    """A model cannot be exported to ONNX, or the export fails its parity check."""


class RuntimeLoadError(DensregError):
    """An export folder cannot be opened: a file missing, corrupt or truncated, or another format version."""


class ModelOutputError(DensregError):
    """A model returned a result that breaks the protocol (a shape, a dtype) or is not finite or not possible
    (NaN, inf, a probability above 1). ``who`` names the model ("model 'nade'", "export 'nade'"),
    ``rule`` the method and what it broke; the message is both."""

    def __init__(self, who: str, rule: str | None = None) -> None:
        super().__init__(who if rule is None else f"{who}: {rule}")  # one argument: unpickled
        self.who, self.rule = ("", who) if rule is None else (who, rule)
