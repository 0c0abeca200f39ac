"""PixelRNN family (van den Oord et al., 2016): ``pixelrnn``, ``row-lstm``, ``diagonal-bilstm``.

Modules: ``masks`` (mask A / mask B with channel groups), ``base`` (input layer, residual
stack, output layers and the cached step shared by the two spatial variants),
``row_lstm``, ``diagonal_bilstm`` and ``plain`` (an LSTM over the flattened sequence);
``surgery`` (growing a trained model deeper or wider) and ``commands`` (``densreg grow``,
registered here through ``register_commands``; it imports torch only when it runs).
"""

from densreg.registry import hookimpl

from .commands import register_commands
from .diagonal_bilstm import DiagonalBiLSTM
from .plain import PlainPixelRNN
from .row_lstm import RowLSTM

__all__ = ["DiagonalBiLSTM", "PlainPixelRNN", "RowLSTM", "register_commands"]


@hookimpl
def register_models(register):
    register(PlainPixelRNN)
    register(RowLSTM)
    register(DiagonalBiLSTM)
