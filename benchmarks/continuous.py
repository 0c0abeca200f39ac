"""Real-valued densities side by side: writes benchmarks/results/continuous.md.

Test average log-likelihood (nats per patch, higher is better; mean log density of the 63 real
values) on the `image-patches` dataset (8x8 grey patches of scikit-image's photos, RNADE/MAF
preprocessing, 63 values; splits by photograph, the dataset's own train/valid/test), for:

- ``rnade`` (densreg, trained by ``densreg.fit``: Adam, early stopping on valid, a wall-clock budget);
- ``gaussian-mixture`` (densreg, EM in closed form), components chosen on the valid split;
- scikit-learn's ``GaussianMixture`` (full covariance, k-means init), components chosen on valid;
- a masked autoregressive flow from zuko (``zuko.flows.MAF``, Papamakarios et al. 2017) with about
  as many parameters as the rnade, trained with Adam and early stopping on valid under the same budget.

Every model sees the same splits; trainings run one after the other on one torch thread. The
budget (``--minutes`` per gradient-trained model, EM iterations for the mixtures) is printed in
the results file with the machine's load, since the figures of short runs depend on it.

    python benchmarks/continuous.py [--minutes 4] [--train N] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASET = "image-patches"


def splits(train_size: int | None):
    import densreg

    data = {s: densreg.load_split(DATASET, s) for s in ("train", "valid", "test")}
    if train_size:
        data["train"] = data["train"][:train_size]
    return data


def mean_and_error(log_p: torch.Tensor) -> tuple[float, float]:
    """Mean log-likelihood (nats) and its standard error over the items."""
    log_p = log_p.double()
    return float(log_p.mean()), float(log_p.std() / math.sqrt(len(log_p)))


@torch.no_grad()
def model_log_prob(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([model.log_prob(x[i:i + batch]).double() for i in range(0, len(x), batch)])


def run_rnade(data, minutes: float, config: dict, training: dict) -> dict:
    """Train ``rnade`` with ``config`` (hidden, components, activation, rescale) by ``densreg.fit`` with
    ``training`` (lr, lr_decay, batch_size, patience) for at most ``minutes``; one epoch line on stderr each."""
    import densreg

    torch.manual_seed(0)
    model = densreg.create_model("rnade", data["train"].shape[1:], 0, **config)
    start = time.perf_counter()
    result = densreg.fit(model, data["train"], data["valid"], epochs=500, max_minutes=minutes, threads=1,
                         progress=True, **training)
    seconds = time.perf_counter() - start
    test, error = mean_and_error(model_log_prob(model, data["test"]))
    settings = ", ".join(f"{k}={v}" for k, v in {**config, **training}.items())
    return {"model": "rnade (densreg)", "config": f"{settings}; Adam, "
            f"{result['epochs']} epochs (best {result['best_epoch']}), stopped by {result['stopped']}",
            "parameters": model.free_parameters(), "valid": -result["valid_nll_nats"], "test": test,
            "error": error, "seconds": seconds}


def run_gaussian_mixture(data, grid, iterations: int) -> dict:
    import densreg

    best, start = None, time.perf_counter()
    tried = []
    for components in grid:
        model = densreg.create_model("gaussian-mixture", data["train"].shape[1:], 0, components=components,
                                     iterations=iterations)
        with densreg.app.performance.torch_threads(1):
            fitted = model.fit_closed_form(data["train"])
            valid = float(model_log_prob(model, data["valid"]).mean())
        tried.append(f"{components}: {valid:.2f}")
        if best is None or valid > best[0]:
            best = (valid, components, model, fitted)
    valid, components, model, fitted = best
    test, error = mean_and_error(model_log_prob(model, data["test"]))
    return {"model": "gaussian-mixture (densreg, EM)",
            "config": f"components={components} chosen on valid (valid LL by components: {', '.join(tried)}); "
                      f"{fitted['em_iterations']} EM iterations",
            "parameters": model.free_parameters(), "valid": valid, "test": test, "error": error,
            "seconds": time.perf_counter() - start}


def run_sklearn(data, grid, iterations: int) -> dict:
    from sklearn.mixture import GaussianMixture

    flat = {s: x.reshape(len(x), -1).double().numpy() for s, x in data.items()}
    best, start, tried = None, time.perf_counter(), []
    for components in grid:
        gm = GaussianMixture(components, covariance_type="full", max_iter=iterations, random_state=0).fit(flat["train"])
        valid = float(gm.score(flat["valid"]))
        tried.append(f"{components}: {valid:.2f}")
        if best is None or valid > best[0]:
            best = (valid, components, gm)
    valid, components, gm = best
    test, error = mean_and_error(torch.from_numpy(gm.score_samples(flat["test"])))
    d = flat["train"].shape[1]
    params = components - 1 + components * d + components * d * (d + 1) // 2
    return {"model": "GaussianMixture (scikit-learn)",
            "config": f"full covariance, n_components={components} chosen on valid (valid LL: {', '.join(tried)}); "
                      f"{gm.n_iter_} EM iterations",
            "parameters": params, "valid": valid, "test": test, "error": error, "seconds": time.perf_counter() - start}


def run_maf(data, minutes: float, transforms: int, hidden: int) -> dict:
    import zuko

    torch.manual_seed(0)
    flat = {s: x.reshape(len(x), -1).float() for s, x in data.items()}
    d = flat["train"].shape[1]
    flow = zuko.flows.MAF(features=d, transforms=transforms, hidden_features=(hidden, hidden))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    best, best_state, bad, epochs, start = -math.inf, None, 0, 0, time.perf_counter()

    def log_prob(x):
        with torch.no_grad():
            return torch.cat([flow().log_prob(x[i:i + 1000]).double() for i in range(0, len(x), 1000)])

    with torch.enable_grad():
        while time.perf_counter() - start < 60 * minutes and bad < 5:
            flow.train()
            for index in torch.randperm(len(flat["train"]), generator=gen).split(100):
                loss = -flow().log_prob(flat["train"][index]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            epochs += 1
            flow.eval()
            valid = float(log_prob(flat["valid"]).mean())
            if valid > best:
                best, bad = valid, 0
                best_state = {k: v.clone() for k, v in flow.state_dict().items()}
            else:
                bad += 1
    flow.load_state_dict(best_state)
    flow.eval()
    test, error = mean_and_error(log_prob(flat["test"]))
    params = sum(p.numel() for p in flow.parameters())
    stopped = "patience" if bad >= 5 else "the budget"
    return {"model": f"MAF (zuko {zuko.__version__})",
            "config": f"{transforms} transforms, MADE hidden ({hidden}, {hidden}); {epochs} epochs, stopped by {stopped}",
            "parameters": params, "valid": best, "test": test, "error": error, "seconds": time.perf_counter() - start}


def write(rows: list[dict], args, data, seconds: float, out: Path) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Real-valued densities on image-patches",
        "",
        f"Written by `python benchmarks/continuous.py{' ' + ' '.join(args.argv) if args.argv else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end; one torch thread; {seconds / 60:.1f} minutes "
        "in all).",
        "",
        f"Data: `{DATASET}` (8x8 grey patches of scikit-image's photos, dequantized, scaled to [0, 1), patch mean "
        "subtracted, last pixel dropped: 63 real values), "
        f"{len(data['train'])} train / {len(data['valid'])} valid / {len(data['test'])} test patches, splits by "
        "photograph. Figures: average log-likelihood in nats per patch (higher is better; a log density, so it can "
        "be positive), ± its standard error over the test patches.",
        "",
        f"Budget: {args.minutes} minutes of wall clock per gradient-trained model (rnade, MAF; early stopping on "
        f"valid with patience 5), at most {args.iterations} EM iterations per mixture and component count. "
        "Short runs: the gradient-trained models had not converged when the budget ended.",
        "",
        "| model | test LL (nats/patch) | valid LL | parameters | seconds | settings |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r["test"]):
        lines.append(f"| {row['model']} | **{row['test']:.2f}** ± {row['error']:.2f} | {row['valid']:.2f} | "
                     f"{row['parameters']:,} | {row['seconds']:.0f} | {row['config']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per gradient-trained model")
    parser.add_argument("--iterations", type=int, default=100, help="most EM iterations per mixture fit")
    parser.add_argument("--train", type=int, default=None, help="use the first N training patches only")
    parser.add_argument("--components", default="1,5,10,20", help="component counts tried for the mixtures")
    parser.add_argument("--hidden", type=int, default=300, help="rnade hidden units")
    parser.add_argument("--rnade-components", type=int, default=20, help="rnade Gaussians per value")
    parser.add_argument("--activation", default="relu", help="rnade activation (relu, sigmoid, tanh)")
    parser.add_argument("--rescale", action="store_true", help="rnade with the learned per-position rho_d")
    parser.add_argument("--lr", type=float, default=3e-3, help="rnade's Adam learning rate")
    parser.add_argument("--lr-decay", type=float, default=0.9, help="rnade's learning-rate factor per epoch")
    parser.add_argument("--batch", type=int, default=100, help="rnade's images per Adam step")
    parser.add_argument("--patience", type=int, default=5, help="rnade's epochs without a better valid LL")
    parser.add_argument("--maf-transforms", type=int, default=5, help="MAF's autoregressive transforms")
    parser.add_argument("--maf-hidden", type=int, default=400,
                        help="MAF's MADE hidden units (two layers; 400 with 5 transforms: about the parameters of "
                             "the default rnade)")
    parser.add_argument("--out", default=str(RESULTS / "continuous.md"))
    parser.add_argument("--only", default="rnade,gaussian-mixture,sklearn,maf")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = splits(args.train)
    grid = [int(c) for c in args.components.split(",")]
    only = args.only.split(",")
    rows = []
    if "rnade" in only:
        config = {"hidden": args.hidden, "components": args.rnade_components, "activation": args.activation,
                  **({"rescale": True} if args.rescale else {})}
        training = {"lr": args.lr, "lr_decay": args.lr_decay, "batch_size": args.batch, "patience": args.patience}
        rows.append(run_rnade(data, args.minutes, config, training))
        print(rows[-1], flush=True)
    if "gaussian-mixture" in only:
        rows.append(run_gaussian_mixture(data, grid, args.iterations))
        print(rows[-1], flush=True)
    if "sklearn" in only:
        rows.append(run_sklearn(data, grid, args.iterations))
        print(rows[-1], flush=True)
    if "maf" in only:
        rows.append(run_maf(data, args.minutes, transforms=args.maf_transforms, hidden=args.maf_hidden))
        print(rows[-1], flush=True)
    write(rows, args, data, time.perf_counter() - start, Path(args.out))


if __name__ == "__main__":
    main()
