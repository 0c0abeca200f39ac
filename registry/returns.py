"""The rules for what a density model returns, checked in one place for every caller.

The protocol (``DensityModel``: every public method of every subclass, see ``protocol.checked``),
the torch-free runtime (``ExportedModel``) and the commands check a model's results here, and
refuse a broken one with a ``ModelOutputError``: one line naming the model, the method and the
rule it broke. The rules:

- ``log_prob`` (B,), ``conditional_log_probs`` (B, D), ``pixel_log_probs`` (B, C, H, W): floating,
  never NaN nor +inf, and for discrete values never above ``LOG_PROB_SLACK`` nats (log p > 0 is a
  probability above 1). -inf (probability zero) is a valid density value; the commands that report
  a likelihood (eval, score, train) refuse it too (``likelihoods``).
- ``conditional_params`` / ``conditional_logits``: the family's tensors, each (B, D, P) floating;
  ``step``: (parameters, state) with parameters (B, P) and the state a tuple of tensors. Parameters
  hold no NaN and no +inf; -inf only in logits (a weight of zero).
- ``sample(n)``: (n, C, H, W), integers 0..K-1 for a discrete family, finite floats for real values.
- ``features``: (B, F), floating, finite.

Torch tensors are handled through their own methods, so this module imports numpy only (the
runtime shares it); ``check_methods`` finds torch in ``sys.modules`` (a torch model imported it).
Nothing is checked while torch traces, compiles or exports a model.
"""

from __future__ import annotations

import functools
import math
import sys
import threading

import numpy as np

from .errors import ModelOutputError

LOG_PROB_SLACK = 1e-3  # nats above 0 that rounding may give a discrete log-probability
IMPOSSIBLE = "a probability above 1"  # in the message of a discrete log p > 0


def label(model) -> str:
    """How messages name a model: ``export 'nade'`` for an export folder, ``model 'nade'`` otherwise."""
    if hasattr(model, "manifest"):
        return f"export {model.name!r}"
    return f"model {getattr(model, 'registry_name', None) or type(model).__name__!r}"


def fail(model, rule: str) -> ModelOutputError:
    """The error for ``model`` breaking ``rule`` (``rule`` starts with the method's name)."""
    return ModelOutputError(label(model), rule)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (tuple, list))


def _kind(x) -> str:
    """'f' floating, 'i' integer, 'b' bool, 'c' complex (torch or numpy)."""
    if hasattr(x, "is_floating_point"):
        if x.is_floating_point():
            return "f"
        return "c" if x.is_complex() else "b" if str(x.dtype) == "torch.bool" else "i"
    kind = np.dtype(x.dtype).kind
    return "i" if kind == "u" else kind


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _sum(x) -> float:
    """The sum of all values, as a float (NaN or +-inf where one value is, or where it overflows)."""
    with np.errstate(all="ignore"):
        return float((x.detach() if hasattr(x, "detach") else x).sum())


def _all(x, test: str, slack: float | None = None) -> bool:
    """Whether every value passes: ``test`` "finite", or "no_nan_posinf" (-inf allowed); with ``slack``
    also <= slack. One device synchronisation for a torch tensor when they pass: a finite sum (or -inf
    where -inf is allowed) says so; else, or with ``slack``, the values are tested one by one."""
    if slack is None:
        total = _sum(x)
        if math.isfinite(total) or (total == -math.inf and test == "no_nan_posinf"):
            return True
    if hasattr(x, "detach"):
        x = x.detach()
        ok = x.isfinite() if test == "finite" else ~(x.isnan() | (x == float("inf")))
        return bool((ok & (x <= slack)).all() if slack is not None else ok.all())
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) if test == "finite" else ~(np.isnan(x) | (x == np.inf))
        return bool((ok & (x <= slack)).all() if slack is not None else ok.all())


def _count(values: np.ndarray, what: str) -> str:
    """``"NaN for 3 of 100"``-style summary of the non-finite entries of ``values``."""
    parts = [f"{name} in {int(n)}" for name, n in (("NaN", np.isnan(values).sum()), ("+inf", (values == np.inf).sum()),
                                                    ("-inf", (values == -np.inf).sum())) if n]
    return f"{', '.join(parts)} of {values.size} {what}"


def shape_rule(model, method: str, out, expected: tuple, letters: str, kind: str = "f") -> None:
    """``out`` must be an array of ``kind`` ('f': floating, 'i': integer) and shape ``expected``, described
    by ``letters`` (e.g. "(B, D, K)")."""
    if not _is_array(out):
        raise fail(model, f"{method} returned {type(out).__name__}, expected a tensor {letters} = {expected}")
    got = tuple(out.shape)
    if got != tuple(expected):
        raise fail(model, f"{method} returned shape {got}, expected {letters} = {tuple(expected)}")
    if _kind(out) != kind:
        noun = "a floating" if kind == "f" else "an integer"
        raise fail(model, f"{method} returned dtype {out.dtype}, expected {noun} dtype")


def log_probs(model, method: str, out, expected: tuple, letters: str, discrete: bool, values: bool = True) -> None:
    """Log-probabilities in nats of ``expected`` shape: floating, no NaN or +inf, <= LOG_PROB_SLACK for
    discrete values (``values`` False: the shape and dtype only)."""
    shape_rule(model, method, out, expected, letters)
    if not values or _all(out, "no_nan_posinf", LOG_PROB_SLACK if discrete else None):
        return
    array = _numpy(out)
    if np.isnan(array).any() or (array == np.inf).any():
        raise fail(model, f"{method} returned {_count(array, 'values')}; expected log-probabilities in nats")
    raise fail(model, f"{method} returned {float(array.max()):.4g} nats for discrete values: {IMPOSSIBLE}, "
                      "not a normalized density (log p must be <= 0)")


def likelihoods(model, log_p, what: str = "images", discrete: bool | None = None) -> None:
    """What a command reports as a likelihood (log p (N,), nats): finite, and <= 0 for discrete values;
    ModelOutputError naming how many are not."""
    array = np.asarray(_numpy(log_p), dtype=np.float64)
    if discrete is None:
        discrete = bool(model.family.discrete)
    if not np.isfinite(array).all():
        raise fail(model, f"log-likelihood is {_count(array, what)}; expected finite values (NaN or inf weights, or "
                          "a model that broke)")
    if discrete and len(array) and array.max() > LOG_PROB_SLACK:
        raise fail(model, f"log-likelihood is {array.max():.4g} nats for some of the {what}: {IMPOSSIBLE} "
                          "(discrete values have log p <= 0)")


def params(model, method: str, raw, family, leading: tuple, values: bool = True) -> tuple:
    """The family's parameters as a tuple, each of shape ``leading`` + (P,) ((B, D) for a teacher-forced
    pass, (B,) for a step), floating; no NaN or +inf, -inf in logits only."""
    if not isinstance(raw, tuple):
        raw = (raw,)
    if not all(_is_array(t) for t in raw):
        kinds = ", ".join(type(t).__name__ for t in raw)
        raise fail(model, f"{method} returned tuple: {family.name} parameters are {len(family.param_names)} tensors "
                          f"({', '.join(family.param_names)}), got {kinds}")
    if len(raw) != len(family.param_names):
        raise fail(model, f"{method} returned tuple: {family.name} parameters are {len(family.param_names)} tensors "
                          f"({', '.join(family.param_names)}), got {len(raw)}")
    size = family.param_size or (raw[0].shape[-1] if len(raw[0].shape) else 0)
    expected = (*leading, size)
    letters = ("(B, D, K)" if family.discrete else "(B, D, P)") if len(leading) == 2 else \
        ("(B, K)" if family.discrete else "(B, P)")
    for name, tensor in zip(family.param_names, raw):
        if tuple(tensor.shape) != expected:
            noun = "logits" if family.discrete else "parameters"
            shape = f"{noun} of shape {tuple(tensor.shape)}" if len(leading) == 1 else f"{tuple(tensor.shape)}"
            raise fail(model, f"{method} returned {shape}, expected {letters} = {expected}")
        if _kind(tensor) != "f":
            raise fail(model, f"{method} returned {name} of dtype {tensor.dtype}, expected a floating dtype")
    if values:
        for name, tensor in zip(family.param_names, raw):
            logits = name == "logits"
            where = "" if len(raw) == 1 else f" in {name}"
            if not _all(tensor, "no_nan_posinf" if logits else "finite"):
                bad = "NaN or +inf" if logits else "NaN or infinite"
                raise fail(model, f"{method} returned {bad} values{where} ({_count(_numpy(tensor), 'values')})")
            if logits and size and _sum(tensor) == -math.inf and \
                    not _all(tensor.amax(-1) if hasattr(tensor, "amax") else tensor.max(-1), "finite"):
                raise fail(model, f"{method} returned logits that are all -inf for a value{where} (every "
                                  "probability zero)")
    return raw


def graph_outputs(model, outputs: dict, batch: int) -> None:
    """An export's conditionals graph outputs by name (``log_prob``, ``pixel_log_prob``, the family's
    parameters), for ``batch`` images, each checked by its rule."""
    shapes = {"log_prob": ((batch,), "(B,)"), "pixel_log_prob": ((batch, *model.event_shape), "(B, C, H, W)")}
    found = tuple(outputs[name] for name in model.family.param_names if name in outputs)
    if found:
        params(model, "conditional_params", found, model.family, (batch, model.num_positions))
    for name, out in outputs.items():
        if name in shapes:
            log_probs(model, name, out, *shapes[name], model.family.discrete)


def step(model, out, family, batch: int, values: bool = True):
    """``step``'s (parameters, state): parameters (B, P) as ``params``, the state a tuple of tensors."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise fail(model, f"step returned {type(out).__name__}"
                          f"{f' of {len(out)}' if isinstance(out, tuple) else ''}, expected (parameters, state)")
    raw, state = out
    params(model, "step", raw, family, (batch,), values)
    if not isinstance(state, (tuple, list)) or not all(_is_array(t) for t in state):
        raise fail(model, f"step returned a state of {type(state).__name__}, expected a tuple of tensors")
    return out


def samples(model, out, n: int, event_shape, family) -> None:
    """``sample(n)``: (n, C, H, W), int64 values 0..K-1 (discrete) or finite floats."""
    expected = (n, *event_shape)
    if not _is_array(out):
        raise fail(model, f"sample({n}) returned {type(out).__name__}, expected a tensor of shape {expected}")
    int64 = str(out.dtype) in ("torch.int64", "int64")
    if tuple(out.shape) != expected or (not int64 if family.discrete else _kind(out) != "f"):
        noun = "int64" if family.discrete else "floats"
        raise fail(model, f"sample({n}) returned {out.dtype} of shape {tuple(out.shape)}, expected {noun} of shape "
                          f"{expected}")
    if family.discrete:
        array = _numpy(out)
        if array.size and (array.min() < 0 or array.max() >= family.num_categories):
            raise fail(model, f"sample({n}) returned values outside 0..{family.num_categories - 1} "
                              f"({array.min()}..{array.max()})")
    elif not _all(out, "finite"):
        array = _numpy(out)
        rows = int((~np.isfinite(array.reshape(n, -1))).any(axis=1).sum())
        raise fail(model, f"sample({n}) drew {_count(array, 'values')} ({rows} of the {n} samples); expected "
                          "finite values")


def features(model, out, batch: int) -> None:
    """``features``: (B, F) floating and finite."""
    if not _is_array(out) or len(out.shape) != 2:
        shape = tuple(out.shape) if _is_array(out) else type(out).__name__
        raise fail(model, f"features returned {shape}, expected (B, F) with B = {batch}")
    shape_rule(model, "features", out, (batch, out.shape[1]), "(B, F)")
    if not _all(out, "finite"):
        raise fail(model, f"features returned {_count(_numpy(out), 'values')}; expected finite features")


# -- the protocol's methods -------------------------------------------------------------------
def _author_method(model, name: str, base: type) -> str:
    """The method an author wrote: conditional_logits behind the default conditional_params, and back."""
    other = {"conditional_params": "conditional_logits", "conditional_logits": "conditional_params"}.get(name)
    return other if other and getattr(type(model), name) is getattr(base, name) else name


def _log_probs(method: str, letters: str, shape):
    return lambda m, out, batch, values, base: log_probs(m, method, out, (batch, *shape(m)), letters,
                                                         m.family.discrete, values)


def _params(method: str):
    return lambda m, out, batch, values, base: params(m, _author_method(m, method, base), out, m.family,
                                                      (batch, m.num_positions), values)


# Each public method of the protocol whose results ``check_methods`` validates, with its rule:
# rule(model, result, batch, values, base), batch the rows of the first argument (n for ``sample``).
RULES = {
    "log_prob": _log_probs("log_prob", "(B,)", lambda m: ()),
    "conditional_log_probs": _log_probs("conditional_log_probs", "(B, D)", lambda m: (m.num_positions,)),
    "pixel_log_probs": _log_probs("pixel_log_probs", "(B, C, H, W)", lambda m: tuple(m.event_shape)),
    "conditional_params": _params("conditional_params"),
    "conditional_logits": _params("conditional_logits"),
    "step": lambda m, out, batch, values, base: step(m, out, m.family, batch),
    "sample": lambda m, out, batch, values, base: samples(m, out, batch, m.event_shape, m.family),
    "features": lambda m, out, batch, values, base: features(m, out, batch),
}
_CALLS = threading.local()  # .depth: how many checked methods are running in this thread


def _rows(name: str, args, kwargs) -> int | None:
    """The batch a call's result must have: ``n`` for sample, else the rows of its first argument (images,
    or a step's values); None when it has none (the method then refused it itself, or nothing is checked)."""
    key = {"sample": "n", "step": "value"}.get(name, "x")
    x = args[0] if args else kwargs.get(key)
    if name == "sample":
        return int(x) if isinstance(x, (int, np.integer)) else None
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


def checked(name: str, method, base: type):
    """``method`` with its result validated by ``RULES[name]``; ModelOutputError (one line naming the
    model, the method and the rule) when it breaks one. Shapes and dtypes are checked at every call;
    values (NaN, inf, log p > 0 for discrete values) where the call is the outermost one (a step's at
    every call, so that sampling never draws from NaN). Nothing is checked while torch compiles, traces
    or exports the model (the exported graphs' results are checked by the runtime)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        torch = sys.modules["torch"]
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return method(self, *args, **kwargs)
        depth = getattr(_CALLS, "depth", 0)
        _CALLS.depth = depth + 1
        try:
            out = method(self, *args, **kwargs)
        finally:
            _CALLS.depth = depth
        rows = _rows(name, args, kwargs)
        if rows is not None:
            RULES[name](self, out, rows, depth == 0 or name == "step", base)
        return out

    run.checked_returns = True
    return run


def check_methods(cls: type, base: type) -> None:
    """Wrap the methods of RULES that ``cls`` (``base``, the protocol's class, or a subclass) defines
    itself with ``checked``, once."""
    for name in RULES:
        method = cls.__dict__.get(name)
        if callable(method) and not getattr(method, "checked_returns", False):
            setattr(cls, name, checked(name, method, base))
