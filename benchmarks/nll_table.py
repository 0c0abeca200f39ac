"""The likelihood table on binarized MNIST: writes benchmarks/results/nll.md and nll.json.

Each row trains a registered model with a stated budget (or, with --from-checkpoint,
evaluates a model trained before and reads its training log for epochs and wall time),
then scores the 10000 test images: test NLL in nats per image, bits/dim, training
throughput (images/s) and evaluation throughput (images/s), beside the reference figure.

    python benchmarks/nll_table.py --data ../shared/data/binarized_mnist.npz --only bernoulli,markov-1
    python benchmarks/nll_table.py --data ... --from-checkpoint nade=models/nade-mnist.safetensors

Rows already in nll.json and not rerun are kept, so rows can be added one at a time.
Rows whose model is not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from densreg.registry import api, load_checkpoint
from densreg.registry.atomic import atomic_write_bytes
from densreg.registry.errors import UnknownNameError
from densreg.app.evaluation import nll_summary, per_image_nll
from densreg.app.run_files import run_paths
from densreg.app.training import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASET = "binarized-mnist"
TRAIN_IMAGES = 50000  # the train split; an epoch of fewer images (a chunk) is flagged in the table

# the budget of the PixelRNN rows (about 7 to 20 CPU minutes an epoch at h=16 on 2 cores)
PIXELRNN_TRAIN = {"epochs": 20, "batch_size": 32, "lr": 2e-3, "lr_decay": 0.85, "clip_grad": 5.0, "patience": 3,
                  "max_minutes": 60}

# label -> model, config, training budget (gradient models), reference figure (nats) and its source
def spatial(model: str, hidden: int, layers: int, reference: float, source: str) -> dict:
    """A row of a spatial PixelRNN (output layers of 32 units) trained as PIXELRNN_TRAIN says."""
    return dict(model=model, config={"hidden": hidden, "layers": layers, "output_hidden": 32}, train=PIXELRNN_TRAIN,
                reference=reference, source=source)


ROWS = {
    "bernoulli": dict(model="bernoulli", config={}, train={}, reference=205.8,
                      source="add-one counting; README reference"),
    "markov-1": dict(model="markov", config={"order": 1}, train={}, reference=145.4,
                     source="add-one counting, raster; README reference"),
    "markov-3": dict(model="markov", config={"order": 3}, train={}, reference=None, source=""),
    "nade": dict(model="nade", config={"hidden": 500, "activation": "sigmoid", "ordering": "raster"},
                 train={"epochs": 40, "batch_size": 100, "lr": 4e-3, "lr_decay": 0.9, "patience": 4,
                        "max_minutes": 80},
                 reference=88.86, source="Larochelle & Murray 2011; 88.33 in Uria et al. 2016"),
    "pixelrnn": dict(model="pixelrnn", config={"hidden": 64, "layers": 1, "position_embedding": True},
                     train=PIXELRNN_TRAIN,
                     reference=None, source=""),
    "row-lstm": spatial("row-lstm", 16, 5, 80.54, "van den Oord et al. 2016, GPU, to convergence"),
    "row-lstm-7": spatial("row-lstm", 16, 7, 80.54,
                          "van den Oord et al. 2016; grown from the row-lstm row after its 6th epoch by densreg grow, "
                          "epochs here are after growing; from the 32nd epoch trained with --ema 0.9995 (0.9998 from "
                          "the 38th), these weights are the moving average"),
    "row-lstm-7w32": spatial("row-lstm", 32, 7, 80.54,
                             "van den Oord et al. 2016; the row-lstm-7 row after its 41st epoch widened to h=32 by "
                             "densreg grow --hidden 32 (the same density at first), then trained at lr 3e-4 with "
                             "--ema 0.9995; epochs here are after widening"),
    "diagonal-bilstm": spatial("diagonal-bilstm", 16, 2, 79.20, "van den Oord et al. 2016, 7 layers, h=16, GPU"),
    "diagonal-bilstm-4": spatial("diagonal-bilstm", 16, 4, 79.20,
                                 "van den Oord et al. 2016, 7 layers, h=16, GPU; grown from the diagonal-bilstm row "
                                 "after its 2nd epoch by densreg grow, epochs here are after growing"),
}


def default_data() -> str:
    return os.environ.get("DENSREG_MNIST_NPZ") or str(ROOT.parent / "shared" / "data" / "binarized_mnist.npz")


def evaluate_timed(model, images, batch_size: int) -> dict:
    """Test NLL summary plus evaluation throughput (images/s, forward passes only)."""
    start = time.perf_counter()
    nll = per_image_nll(model, images, batch_size)
    if model.order.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {**nll_summary(nll, model.num_positions), "eval_seconds": seconds, "eval_images_per_s": len(images) / seconds}


def log_figures(checkpoint: Path) -> dict:
    """Epochs, training wall time and mean training throughput from a checkpoint's training log."""
    log = run_paths(checkpoint)[1]
    if not log.is_file():
        return {}
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not entries:
        return {}
    seconds = sum(e["seconds"] for e in entries)
    rates = [e["images_per_s"] for e in entries if "images_per_s" in e]
    images = sum(e["images"] for e in entries) if all("images" in e for e in entries) else None
    return {"epochs": entries[-1]["epoch"], "train_seconds": seconds, "train_images": images,
            "train_images_per_s": sum(rates) / len(rates) if rates else None}


def run_row(label: str, spec: dict, data: str, args, checkpoint: Path | None) -> dict:
    test = api.load_split(DATASET, "test", data)
    row = {"label": label, "reference": spec["reference"], "source": spec["source"]}
    if checkpoint is not None:
        model, info = load_checkpoint(checkpoint, device=args.device or "cpu")
        if tuple(info.event_shape) != (1, 28, 28) or info.num_categories != 2:
            raise SystemExit(f"{checkpoint} was trained on shape {tuple(info.event_shape)} with "
                             f"K={info.num_categories}, not binarized MNIST (1, 28, 28), K=2")
        row.update(model=info.model, config=info.config, budget="trained before (--from-checkpoint)",
                   checkpoint=str(checkpoint), best_epoch=info.metrics.get("best_epoch"), **log_figures(checkpoint))
    else:
        torch.manual_seed(args.seed)
        model = api.create_model(spec["model"], (1, 28, 28), 2, **spec["config"])
        train = api.load_split(DATASET, "train", data)
        valid = api.load_split(DATASET, "valid", data)
        options = {}
        if not model.closed_form:
            options = {**spec["train"], "seed": args.seed, "device": args.device, "progress": sys.stderr.isatty()}
            if args.max_minutes is not None:
                options["max_minutes"] = args.max_minutes
            out = Path(args.checkpoints) / f"{label}.safetensors"
            options["out"] = out
            row["checkpoint"] = str(out)
        start = time.perf_counter()
        metrics = fit(model, train, valid, **options)
        seconds = time.perf_counter() - start
        row.update(model=spec["model"], config=model.config(), budget=options and
                   {k: v for k, v in spec["train"].items()} or "closed form (counting)",
                   best_epoch=metrics.get("best_epoch"))
        if model.closed_form:
            row.update(epochs=None, train_seconds=seconds, train_images_per_s=len(train) / seconds)
        else:
            row.update(log_figures(Path(options["out"])))
            row["train_seconds"] = seconds
    row["parameters"] = int(model.free_parameters())
    row.update(evaluate_timed(model.eval(), test, args.batch_size))
    row["device"] = str(model.order.device)
    return row


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def fmt(value, spec: str = "", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def write_results(rows: dict, machine: dict, results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    ordered = [rows[k] for k in ROWS if k in rows] + [r for k, r in rows.items() if k not in ROWS]
    atomic_write_bytes(results / "nll.json", json.dumps({"machine": machine, "rows": ordered}, indent=2).encode())
    lines = [
        "# Binarized MNIST: test NLL (nats per image)",
        "",
        "Written by `benchmarks/nll_table.py` (rerun it to reproduce; rows are updated one at a time).",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']}, "
        f"{machine['threads']} threads; last written {machine['written']}.",
        "Train throughput is images/s during training epochs; eval throughput is images/s scoring the",
        "10000 test images (batches of 500). Wall time is the training time of the run (for closed-form",
        "models: counting plus scoring the train and valid splits; from a log: the sum of its epochs).",
        "",
        "| model | config | parameters | epochs | train wall time | test NLL (nats) | bits/dim | reference (nats) "
        "| train images/s | eval images/s | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        config = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k not in ("event_shape", "num_categories"))
        epochs = "closed form" if r.get("epochs") is None and r.get("budget") == "closed form (counting)" \
            else fmt(r.get("epochs"))
        if r.get("best_epoch") is not None and r.get("epochs") is not None:
            epochs += f" (best {r['best_epoch']})"
        if r.get("train_images") and r["train_images"] != r.get("epochs", 0) * TRAIN_IMAGES:
            epochs += f", {r['train_images']:,} images ({r['train_images'] / TRAIN_IMAGES:.2f} passes)"
        reference = fmt(r.get("reference"), ".2f") + (f" ({r['source']})" if r.get("source") else "")
        lines.append(
            f"| {r['label']} | {config} | {r['parameters']:,} | {epochs} | {duration(r.get('train_seconds'))} "
            f"| {r['nll_nats']:.2f} | {r['bits_per_dim']:.4f} | {reference} | {fmt(r.get('train_images_per_s'), ',.0f')} "
            f"| {fmt(r.get('eval_images_per_s'), ',.0f')} | {r.get('device', '-')} |")
    lines.append("")
    atomic_write_bytes(results / "nll.md", "\n".join(lines).encode())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data(), help="binarized_mnist.npz or a folder of .amat files")
    parser.add_argument("--only", default=None, help=f"comma-separated rows to (re)run; rows: {', '.join(ROWS)}")
    parser.add_argument("--from-checkpoint", action="append", default=[], metavar="ROW=PATH",
                        help="evaluate this checkpoint for ROW instead of training (repeatable)")
    parser.add_argument("--max-minutes", type=float, default=None, help="override the budget of gradient models")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500, help="images per evaluation pass")
    parser.add_argument("--checkpoints", default=str(ROOT / "models"), help="where trained checkpoints go")
    parser.add_argument("--results", default=str(RESULTS), help="folder for nll.md and nll.json")
    args = parser.parse_args(argv)

    checkpoints = {}
    for item in args.from_checkpoint:
        label, sep, path = item.partition("=")
        if not sep or label not in ROWS:
            parser.error(f"--from-checkpoint wants ROW=PATH with ROW one of {', '.join(ROWS)}, got {item!r}")
        checkpoints[label] = Path(path)
    labels = args.only.split(",") if args.only else (list(checkpoints) or list(ROWS))
    for label in labels:
        if label not in ROWS:
            parser.error(f"unknown row {label!r}; rows: {', '.join(ROWS)}")

    results = Path(args.results)
    previous = results / "nll.json"
    rows = {r["label"]: r for r in json.loads(previous.read_text())["rows"]} if previous.is_file() else {}
    machine = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for label in labels:
        spec = ROWS[label]
        try:
            api.model_spec(spec["model"])
        except UnknownNameError:
            print(f"skip {label}: model {spec['model']!r} is not installed", file=sys.stderr)
            continue
        print(f"{label}: {'evaluating ' + str(checkpoints[label]) if label in checkpoints else 'training'}",
              file=sys.stderr)
        rows[label] = run_row(label, spec, args.data, args, checkpoints.get(label))
        r = rows[label]
        print(f"{label}: test {r['nll_nats']:.3f} nats, {r['bits_per_dim']:.4f} bits/dim, "
              f"eval {r['eval_images_per_s']:.0f} images/s", file=sys.stderr)
        write_results(rows, machine, results)
    print(f"wrote {results / 'nll.md'} and {results / 'nll.json'}")


if __name__ == "__main__":
    main()
