"""Growing a trained spatial PixelRNN without changing its density: more layers (Row LSTM or
Diagonal BiLSTM), wider layers (Row LSTM). ``densreg grow`` (commands.py) runs it, then trains on.

Deeper: extra residual layers are appended after the trained ones with their cell-candidate gate
weights at zero, so each starts with c = 0 and h = 0 and adds nothing to the residual stream.

Wider: every parameter of the new model starts from its fresh initialization; the trained
entries are copied to their places (``old_positions``: each gate's trained units first in its
block of ``4 * hidden``, trained channels first), and every weight from a new channel into a
trained unit or into the output layers starts at zero. The new units start random and feed only
themselves, so the density is unchanged, and the zeroed weights learn from there.

Either way ``same_density`` checks the grown model against the trained one on real images
before any training.
"""

from __future__ import annotations

import torch

from densreg.registry import ConfigError, DensregError, api

GROWABLE = ("row-lstm", "diagonal-bilstm")
WIDENABLE = ("row-lstm",)  # its layers are two convolutions with gates along dim 0 (row_lstm.py)
# The check catches a wrong growth (whole nats apart), not rounding: growing the 7-layer Row LSTM to
# 9 layers once stopped at 1.45e-4 nats, and the same command passed at 0 a minute later (CPU
# float32 GEMMs are not guaranteed bitwise reproducible from one run to the next).
TOLERANCE_NATS = 1e-3


def zero_cell_gates(tensor: torch.Tensor, hidden: int) -> None:
    """Zero the cell-candidate rows of a gate tensor in place: the gates (input, forget, output,
    cell) lie along the first dimension whose size is a multiple of 4 * hidden, possibly once
    per direction; the cell block of each is its last ``hidden`` entries."""
    dim = next(d for d, size in enumerate(tensor.shape) if size % (4 * hidden) == 0)
    for block in range(tensor.shape[dim] // (4 * hidden)):
        tensor.narrow(dim, block * 4 * hidden + 3 * hidden, hidden).zero_()


def resized(model, **changes):
    """A freshly initialized model of ``model``'s kind and config, with ``changes`` to the config."""
    return api.create_model(model.registry_name, **{**model.config(), **changes})


def old_positions(old: int, new: int, hidden: int, wider: int) -> torch.Tensor:
    """Where the ``old`` entries of a dimension sit once it has ``new`` (int64, (old,)): a dimension
    of 4 * hidden gates becomes 4 * wider (each gate's trained units first in its block), one of
    hidden channels becomes wider (trained channels first); any other size is unchanged."""
    if old == new:
        return torch.arange(old)
    if (old, new) == (4 * hidden, 4 * wider):
        return (torch.arange(4)[:, None] * wider + torch.arange(hidden)).flatten()
    if (old, new) == (hidden, wider):
        return torch.arange(hidden)
    raise ValueError(f"cannot widen a dimension of {old} to {new} (hidden {hidden} -> {wider})")


def widened(model, hidden: int):
    """A copy of the Row LSTM ``model`` with ``hidden`` channels per layer, equal to it as a density.

    Each parameter of the new model starts from its fresh initialization; the trained entries
    are copied to their places (``old_positions``), and the entries through which a new channel
    reaches a trained output (dim 0 kept, dim 1 a new channel) are zeroed.
    """
    if model.registry_name not in WIDENABLE:
        raise ConfigError(f"only {', '.join(WIDENABLE)} widens (--hidden); this is {model.registry_name}")
    old_hidden = model.config()["hidden"]
    if hidden <= old_hidden:
        raise ConfigError(f"--hidden {hidden} must exceed the checkpoint's {old_hidden}")
    new = resized(model, hidden=hidden)
    old_params, new_params = dict(model.named_parameters()), dict(new.named_parameters())
    assert old_params.keys() == new_params.keys(), (old_params.keys(), new_params.keys())
    with torch.no_grad():
        for name, param in new_params.items():
            place(param, old_params[name], old_hidden, hidden)
    return new


def place(param: torch.Tensor, trained: torch.Tensor, hidden: int, wider: int) -> None:
    """Copy ``trained`` into the widened ``param`` in place, and zero the weights from the new
    input channels (dim 1, after the trained ones) into the trained outputs (dim 0)."""
    index = [old_positions(o, n, hidden, wider) for o, n in zip(trained.shape, param.shape)]
    param[torch.meshgrid(*index, indexing="ij")] = trained
    if param.dim() >= 2 and trained.shape[1] != param.shape[1]:  # the new channels follow the trained
        param[index[0][:, None], trained.shape[1]:] = 0


def grown(model, layers: int):
    """A copy of the spatial PixelRNN ``model`` with ``layers`` residual layers, equal to it as a density."""
    old_layers = len(model.rnn)
    if layers <= old_layers:
        raise ConfigError(f"--layers {layers} must exceed the checkpoint's {old_layers} layers")
    new = resized(model, layers=layers)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(name.startswith("rnn.") and int(name.split(".")[1]) >= old_layers for name in missing), missing
    hidden = model.config()["hidden"]
    with torch.no_grad():
        for layer in new.rnn[old_layers:]:
            for name, param in layer.named_parameters():
                if name.startswith(("input_to_state", "state_to_state")):
                    zero_cell_gates(param, hidden)
    return new


def grow(model, layers: int | None = None, hidden: int | None = None):
    """``model`` widened to ``hidden`` channels, then deepened to ``layers`` layers (None: as it is).
    ConfigError for a model that does not grow, or a size not above the model's."""
    if model.registry_name not in GROWABLE:
        raise ConfigError(f"the checkpoint holds {model.registry_name!r}; only {', '.join(GROWABLE)} grow")
    new = model
    if hidden is not None:
        new = widened(new, hidden)
    if layers is not None:
        new = grown(new, layers)
    return new


def same_density(grown_model, model, images: torch.Tensor, tolerance: float = TOLERANCE_NATS) -> float:
    """The largest |log p| difference (nats) of the two models on ``images`` (int64 (N, C, H, W));
    DensregError when it passes ``tolerance``."""
    with torch.no_grad():
        gap = float((grown_model.eval().log_prob(images) - model.eval().log_prob(images)).abs().max())
    if not gap <= tolerance:
        raise DensregError(f"the grown model's log_prob differs from the checkpoint's by {gap:.3g} nats")
    return gap
