"""The conformance kit's ``export`` check, registered through ``register_checks`` (entry point ``export``).

The check exports the model under test on its first tiny space with ``export_model`` (parity
included), opens the folder in the runtime and compares log_prob and samples for the same noise
with torch (``densreg.registry.checks.files`` gives the tolerances). This module imports only the
hook marker: the exporter, torch and the kit's helpers are imported when the check runs, so loading
the plugin (``densreg plugins``, ``models``) stays torch-free.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from densreg.registry.hookspecs import hookimpl


STEP_HINT = (" (export needs a step that works with a 0-dim tensor position: no int(position), .item(), Python if "
             "on tensor values or data-dependent shapes; see docs/plugins/protocol.md)")


@hookimpl
def register_checks(register):
    register("export", export_check)


def export_check(subject) -> str:
    """``export_model`` with parity on the subject's first tiny space, then the runtime against torch."""
    import numpy as np
    import torch

    from densreg.registry.checks.files import (EXPORT_LOG_PROB_TOL, EXPORT_SAMPLE_TOL, ROUND_TRIP_SPACES, noise_for,
                                               probes)
    from densreg.registry.checks.subject import CheckFailed, describe, space

    from .exporter import export_model
    from .runtime import ExportedModel
    from .tracing import TracingError

    shape, k, ordering, model = subject.first_accepted(subject.spaces_or(ROUND_TRIP_SPACES))
    discrete = model.family.discrete
    x = probes(model, shape, k, seed=6)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        try:
            info = export_model(model, folder, name=subject.label.replace(":", "-"), parity=True)
        except Exception as exc:
            hint = STEP_HINT if isinstance(exc, TracingError) and exc.graph == "step" else ""
            raise CheckFailed(f"export_model failed on {space(shape, k, ordering)}: {describe(exc)}{hint}") from exc
        reported = (info or {}).get("max_abs_diff")
        runtime = ExportedModel(folder)
        with torch.no_grad():
            expected = model.log_prob(x).double().numpy()
        diff = float(np.abs(np.asarray(runtime.log_prob(x.numpy()), dtype=np.float64) - expected).max())
        tol = EXPORT_LOG_PROB_TOL[discrete]
        if not diff <= tol:
            raise CheckFailed(f"log_prob in onnxruntime differs from torch by {diff:.3g} nats on "
                              f"{space(shape, k, ordering)} (tolerance {tol:g})")
        noise = noise_for(model, 200, seed=6)
        ours = model.sample(200, noise=noise).double().numpy().reshape(200, -1)
        theirs = np.asarray(runtime.sample(200, noise=noise.numpy()), dtype=np.float64).reshape(200, -1)
        with np.errstate(invalid="ignore"):  # a random model's value may overflow: then both must
            same = (theirs == ours) | (np.isnan(theirs) & np.isnan(ours))
            differs = ~same if discrete else ~(np.abs(theirs - ours) <= EXPORT_SAMPLE_TOL) & ~same
        mismatched = int(differs.any(-1).sum())
        if mismatched > 2:  # a value drawn right at a CDF boundary may legitimately differ
            within = "" if discrete else f" by more than {EXPORT_SAMPLE_TOL:g}"
            raise CheckFailed(f"{mismatched} of 200 samples drawn in onnxruntime differ from torch's{within} for the "
                              "same noise: the exported step does not reproduce the torch step")
    return (f"onnxruntime ({runtime.provider}) log_prob within {diff:.1e} nats (exporter's parity {reported}); "
            f"samples for the same noise agree ({mismatched} of 200 differ)")
