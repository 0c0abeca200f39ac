"""PixelRNN family (van den Oord et al., 2016): ``pixelrnn``, ``row-lstm``, ``diagonal-bilstm``.

Modules: ``masks`` (mask A / mask B with channel groups), ``base`` (input layer, residual
stack, output layers and the cached step shared by the two spatial variants),
``row_lstm``, ``diagonal_bilstm`` and ``plain`` (an LSTM over the flattened sequence);
``surgery`` (growing a trained model deeper or wider) and ``commands`` (``densreg grow``,
registered here through ``register_commands``; it imports torch only when it runs).

This module is the plugin (entry point ``pixelrnn``) and imports no torch: the models are
registered by import path, and the classes it re-exports are imported on first use.
"""

from densreg.registry import hookimpl
from densreg.registry.lazy import lazy_exports

from .commands import register_commands  # noqa: F401 - the plugin's hook (imports no torch)

_EXPORTS = {".diagonal_bilstm": ("DiagonalBiLSTM",), ".plain": ("PlainPixelRNN",), ".row_lstm": ("RowLSTM",)}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def register_models(register):
    register("densreg.plugins.pixelrnn.plain:PlainPixelRNN", name="pixelrnn",
             description="Plain Pixel RNN: stacked LSTM over the flattened value sequence, any ordering")
    register("densreg.plugins.pixelrnn.row_lstm:RowLSTM", name="row-lstm",
             description="PixelRNN Row LSTM (van den Oord et al. 2016): row-by-row LSTM, triangular context")
    register("densreg.plugins.pixelrnn.diagonal_bilstm:DiagonalBiLSTM", name="diagonal-bilstm",
             description="PixelRNN Diagonal BiLSTM (van den Oord et al. 2016): LSTMs along diagonals in both "
                         "directions")
