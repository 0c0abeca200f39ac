"""Continue a trained Row LSTM or Diagonal BiLSTM with more layers, or a Row LSTM with wider
layers (issue 12, item 7).

    python benchmarks/grow_pixelrnn.py --from models/row-lstm-mnist.safetensors --layers 7 \\
        --data binarized_mnist.npz --out models/row-lstm7-mnist.safetensors --max-minutes 120
    python benchmarks/grow_pixelrnn.py --from models/row-lstm7-mnist.safetensors --hidden 32 ...

The new model keeps every weight of the checkpoint. Extra residual layers are appended after
the trained ones with their cell-candidate gate weights at zero, so each starts with c = 0 and
h = 0 and adds nothing. Extra hidden units (``--hidden``) start from fresh random weights and
feed only themselves: every weight from a new channel into a trained unit or into the output
layers starts at zero (and learns from there). Either way the grown model's log-likelihoods
equal the checkpoint's (checked on the valid split before training; a mismatch stops the
script). Training then runs through ``fit`` like ``densreg train``, writing OUT, its log and its resume state, so
``densreg train MODEL --dataset binarized-mnist --out OUT --resume`` continues it later.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densreg.app.training import fit  # noqa: E402
from densreg.registry import api  # noqa: E402
from densreg.registry.checkpoint import load_checkpoint  # noqa: E402

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
    """Where the ``old`` entries of a dimension sit once it has ``new``: a dimension of 4 * hidden
    gates becomes 4 * wider (each gate's trained units first in its block), one of hidden
    channels becomes wider (trained channels first); any other size is unchanged."""
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
        raise SystemExit(f"error: only {', '.join(WIDENABLE)} widens; this is {model.registry_name}")
    old_hidden = model.config()["hidden"]
    if hidden <= old_hidden:
        raise SystemExit(f"error: --hidden {hidden} must exceed the checkpoint's {old_hidden}")
    new = resized(model, hidden=hidden)
    old_params, new_params = dict(model.named_parameters()), dict(new.named_parameters())
    assert old_params.keys() == new_params.keys(), (old_params.keys(), new_params.keys())
    with torch.no_grad():
        for name, param in new_params.items():
            trained = old_params[name]
            index = [old_positions(o, n, old_hidden, hidden) for o, n in zip(trained.shape, param.shape)]
            param[torch.meshgrid(*index, indexing="ij")] = trained
            if param.dim() >= 2 and trained.shape[1] != param.shape[1]:  # the new channels follow the trained
                param[index[0][:, None], trained.shape[1]:] = 0
    return new


def grown(model, layers: int):
    """A copy of the spatial PixelRNN ``model`` with ``layers`` residual layers, equal to it as a density."""
    old_layers = len(model.rnn)
    if layers <= old_layers:
        raise SystemExit(f"error: --layers {layers} must exceed the checkpoint's {old_layers} layers")
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="trained row-lstm or diagonal-bilstm checkpoint")
    parser.add_argument("--layers", type=int, help="layers of the grown model (more than the checkpoint's)")
    parser.add_argument("--hidden", type=int,
                        help="channels per layer of the widened model (more than the checkpoint's; row-lstm)")
    parser.add_argument("--out", required=True, help="checkpoint the grown run writes (.safetensors)")
    parser.add_argument("--dataset", default="binarized-mnist")
    parser.add_argument("--data", default=None, help="path to the dataset's files")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--lr-decay", type=float, default=0.95)
    parser.add_argument("--clip-grad", type=float, default=5.0)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--ema", type=float, default=None,
                        help="moving average of the weights (as densreg train --ema)")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.layers is None and args.hidden is None:
        parser.error("give --layers, --hidden or both")

    model, info = load_checkpoint(args.source)
    if model.registry_name not in GROWABLE:
        raise SystemExit(f"error: {args.source} holds {model.registry_name!r}; only {', '.join(GROWABLE)} grow")
    torch.manual_seed(args.seed)
    new = model
    if args.hidden is not None:
        new = widened(new, args.hidden)
    if args.layers is not None:
        new = grown(new, args.layers)
    valid = api.load_split(args.dataset, "valid", args.data)
    with torch.no_grad():
        probe = valid[:200]
        gap = float((new.eval().log_prob(probe) - model.log_prob(probe)).abs().max())
    if not gap <= TOLERANCE_NATS:
        raise SystemExit(f"error: the grown model's log_prob differs from the checkpoint's by {gap:.3g} nats")
    before, after = model.config(), new.config()
    print(f"grew {args.source} from {before['layers']} layers of {before['hidden']} to {after['layers']} of "
          f"{after['hidden']} (log_prob unchanged: max difference {gap:.2g} nats on 200 valid images)",
          file=sys.stderr)
    train = api.load_split(args.dataset, "train", args.data)
    options = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "lr_decay", "clip_grad", "patience", "ema",
                                             "max_minutes", "threads", "seed") if getattr(args, k) is not None}
    result = fit(new.train(), train, valid, out=args.out, progress=True, name=info.model,
                 metrics={"dataset": args.dataset,
                          "grown_from": f"{args.source} ({before['layers']} layers, hidden {before['hidden']})"},
                 **options)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in result.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
