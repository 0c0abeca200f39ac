"""Fast tracing of ``nn.LSTM``: its output shapes without unrolling the sequence.

torch.export keeps ``aten.lstm.input`` as one node (the ONNX exporter writes one ONNX ``LSTM``
per layer), but to learn the node's output shapes it runs torch's Python decomposition of
the op on fake tensors: one cell per time step and layer. For the plain PixelRNN at 28x28
(784 steps, 3 layers) that costs minutes per trace, and an export traces three times
(torch.export, the exporter's decomposition pass, its type-promotion pass).

``fast_lstm_shapes()`` gives the op, for the length of the ``with`` block, a shape-only
answer where its input is a fake tensor, and leaves every call on real tensors to torch's
kernels. It changes no computed value: the traced graph still holds the LSTM node, and the
exporter's parity check compares the exported graph with torch on real inputs.
"""

from __future__ import annotations

import contextlib

import torch

LSTM = torch.ops.aten.lstm.input


def lstm_shapes(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """Empty outputs of ``aten.lstm.input`` with its shapes and strides: output (T, B, dirs*H)
    (transposed to (B, T, dirs*H) when ``batch_first``, as torch's kernel returns it), h_n, c_n."""
    directions = 2 if bidirectional else 1
    sequence = input.transpose(0, 1) if batch_first else input
    output = sequence.new_empty((sequence.shape[0], sequence.shape[1], directions * hx[0].shape[2]))
    return (output.transpose(0, 1) if batch_first else output), hx[0].new_empty(hx[0].shape), \
        hx[1].new_empty(hx[1].shape)


def _shape_only_on_fake(original):
    from torch._subclasses.fake_tensor import is_fake

    def kernel(*args, **kwargs):
        if is_fake(args[0]):
            return lstm_shapes(*args, **kwargs)
        return original(*args, **kwargs)

    return kernel


@contextlib.contextmanager
def fast_lstm_shapes():
    """Within the block, shape propagation of ``aten.lstm.input`` on fake tensors costs one call
    instead of T x layers cells. Uses torch internals (the op's Python kernels and the
    decomposition table); where they are laid out differently, the block changes nothing."""
    try:
        from torch._decomp import decomposition_table

        keys = [k for k in (torch._C.DispatchKey.CompositeImplicitAutograd, torch._C.DispatchKey.Autograd)
                if k in LSTM.py_kernels]
        saved = {k: LSTM.py_kernels[k] for k in keys}
        saved_decomposition = decomposition_table.get(LSTM)
    except Exception:  # noqa: BLE001 - another torch layout: trace the slow way
        yield
        return
    try:
        for key in keys:
            LSTM.py_kernels[key] = _shape_only_on_fake(saved[key])
        if saved_decomposition is not None:
            decomposition_table[LSTM] = _shape_only_on_fake(saved_decomposition)
        LSTM._dispatch_cache.clear()
        yield
    finally:
        LSTM.py_kernels.update(saved)
        if saved_decomposition is not None:
            decomposition_table[LSTM] = saved_decomposition
        LSTM._dispatch_cache.clear()
