"""PixelRNN family (van den Oord et al., 2016): ``pixelrnn``, ``row-lstm``, ``diagonal-bilstm``."""

from densreg.registry import hookimpl


@hookimpl
def register_models(register):
    """Nothing registered yet."""
