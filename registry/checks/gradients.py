"""The ``gradient_path`` check, written once for every family: with gradients on (the training path), a
model computes what the other checks see under ``torch.no_grad``.

Some layers take another code path when autograd records (a fused inference kernel, a cached
buffer, a branch on ``torch.is_grad_enabled()``), so a defect there passes every check run under
no_grad. On the causality spaces (every ordering), on 8 probe images (``probe_values`` seeded with 3),
compared on the float64 copy as the other checks:

- log_prob and the conditionals' parameters with gradients on equal those under no_grad;
- the conditionals are causal with gradients on: each position changed alone, as ``causality`` does;
- the gradient of the summed log_prob is finite wherever it reaches a parameter.
"""

from __future__ import annotations

import torch

from .density import CAUSALITY_SPACES, comparable, each_position, probe_values
from .subject import CheckFailed, Subject, dtype_note, method_name, notes_of, space, tolerance, wide_variants

GRADIENT_PROBES = 8
GRADIENT_SEED = 3  # the probes' generator, which then draws the perturbations


def agrees(what: str, got: torch.Tensor, quiet: torch.Tensor, unit: str, where_: str, consequence: str):
    """(largest difference, tolerance) of ``got`` (computed with gradients on) from ``quiet`` (the same under
    no_grad, float64); CheckFailed naming ``what`` and the ``consequence`` when it is beyond the tolerance."""
    tol = tolerance(got.dtype, float(quiet.abs().max()))
    diff = float((got.detach().double() - quiet).abs().max())
    if not diff <= tol:
        raise CheckFailed(f"{what} with gradients on differs from its value under no_grad by {diff:.3g}{unit} on "
                          f"{where_} (tolerance {tol:.2g}): {consequence}")
    return diff, tol


def gradient_path(subject: Subject) -> str:
    checked, worst, notes = 0, 0.0, []
    for shape, k, ordering, model, why in wide_variants(subject, subject.spaces_or(CAUSALITY_SPACES)):
        notes += [why] if why else []
        where_ = space(shape, k, ordering)
        gen = torch.Generator().manual_seed(GRADIENT_SEED)
        x = probe_values(model, shape, k, GRADIENT_PROBES, seed=GRADIENT_SEED, generator=gen)
        with torch.no_grad():
            quiet_log_p, quiet = model.log_prob(x).double(), comparable(model, x).double()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            log_p, params = model.log_prob(x), comparable(model, x)
            diff, tol = agrees(method_name(model), params, quiet, "", where_,
                               "the training path computes another model than the one scored and sampled")
            lp_diff, _ = agrees("log_prob", log_p, quiet_log_p, " nats", where_,
                                "training optimizes another model than the one scored")
            try:
                each_position(model, shape, k, ordering, model.to_sequence(x), params.detach(), tol, gen)
            except CheckFailed as exc:
                raise CheckFailed(f"with gradients on (the training path): {exc}") from exc
            if log_p.requires_grad:
                log_p.sum().backward()
        broken = [name for name, p in model.named_parameters() if p.grad is not None and not bool(p.grad.isfinite().all())]
        if broken:
            more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
            raise CheckFailed(f"the gradient of log_prob on {where_} is NaN or infinite in {broken[0]}{more}: "
                              "training would diverge at the first step")
        model.zero_grad(set_to_none=True)
        worst, checked = max(worst, diff, lp_diff), checked + 1
    return (f"{checked} space/ordering pairs: log_prob and conditionals with gradients on within {worst:.1e} of "
            f"no_grad, causal, finite gradients{dtype_note(notes)}" + notes_of(subject))
