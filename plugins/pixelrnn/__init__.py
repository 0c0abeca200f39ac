"""PixelRNN family (van den Oord et al., 2016): ``pixelrnn``, ``row-lstm``, ``diagonal-bilstm``.

Modules: ``masks`` (mask A / mask B with channel groups), ``base`` (input layer, residual
stack, output layers and the cached step shared by the two spatial variants),
``row_lstm``, ``diagonal_bilstm`` and ``plain`` (an LSTM over the flattened sequence).
"""

from densreg.registry import hookimpl

from .diagonal_bilstm import DiagonalBiLSTM
from .plain import PlainPixelRNN
from .row_lstm import RowLSTM

__all__ = ["DiagonalBiLSTM", "PlainPixelRNN", "RowLSTM"]


@hookimpl
def register_models(register):
    register(PlainPixelRNN)
    register(RowLSTM)
    register(DiagonalBiLSTM)
