"""Hostile-input totals: a catalogue of crafted files, bad arguments and special targets run
through the `densreg` CLI, each in its own subprocess, classified by outcome.

    python benchmarks/hostile.py [--timeout 60] [--memory-gib 6] [--jobs 2] [--only PATTERN]

Everything is made in a temporary folder (FIFOs, symlinks, sparse files, a device node twin
only where the OS lets us make one there). Each case runs `python -m densreg ARGS` with a
wall-clock timeout and an address-space limit (resource.setrlimit in the child), then is
classified:

- error: non-zero exit with one clear line on stderr (``Error: ...``, or click's usage error);
- ok: exit 0 where success is the right answer (e.g. a supported non-UTF-8 file name);
- traceback: a Python traceback, or an ``Error: unexpected <Type>`` line;
- hang: still running at the timeout;
- unbounded allocation: MemoryError, killed by a signal, or peak RSS over the memory limit;
- data lost: a file that must survive (the previous checkpoint, a special target) changed;
- accepted: exit 0 for input that should have been refused.

Writes ``benchmarks/results/hostile.md`` (totals, then one row per case).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("error", "ok", "traceback", "hang", "unbounded allocation", "data lost", "accepted")


@dataclass
class Case:
    name: str
    group: str
    args: list[str]
    expect: str = "error"  # or "ok"
    protect: list[Path] = field(default_factory=list)  # files that must be unchanged afterwards
    env: dict[str, str] = field(default_factory=dict)
    holder: str | None = None  # a path whose output lock another process holds during the case


def fingerprint(path: Path):
    """What 'unchanged' means for a protected path: its type and, for a regular file, its bytes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(info.st_mode):
        return ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    return (stat.S_IFMT(info.st_mode), info.st_ino)


# -- fixtures ---------------------------------------------------------------------------------------

FIXTURES = r"""
import json, os, sys, numpy as np, torch
from pathlib import Path
from densreg.registry import create_model, save_checkpoint
from densreg.registry import checkpoint as ck
from densreg.export import export_model

d = Path(sys.argv[1])
torch.manual_seed(0)
for name, config in (("bernoulli", {}), ("markov", {"order": 1}), ("nade", {"hidden": 8})):
    model = create_model(name, (1, 8, 8), **config)
    with torch.no_grad():
        for p in [*model.parameters(), *model.buffers()]:
            if p.is_floating_point():
                p.copy_(torch.log_softmax(torch.randn(p.shape), -1) if name != "nade" else torch.randn(p.shape) * 0.1)
    save_checkpoint(d / f"{name}.safetensors", model, name)
export_model(create_model("markov", (1, 8, 8), order=1), d / "export")
"""


def tamper(src: Path, dst: Path, metadata: dict | None = None, drop: tuple = (), tensors=None):
    """Copy checkpoint ``src`` to ``dst`` with metadata keys changed/dropped and tensors replaced."""
    from densreg.registry import checkpoint as ck

    loaded, meta = ck.read_tensors(src)
    meta = {k: v for k, v in meta.items() if k not in drop}
    meta.update(metadata or {})
    if tensors is not None:
        loaded = tensors(loaded)
    ck.save_tensors(dst, loaded, meta)
    return dst


def set_export_metadata(folder: Path, drop=(), **changes):
    import onnx

    for name in ("conditionals.onnx", "step.onnx", "draw.onnx"):
        proto = onnx.load(folder / name)
        props = {p.key: p.value for p in proto.metadata_props if p.key not in drop}
        props.update(changes)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, folder / name)


def npz(path: Path, **arrays) -> Path:
    import numpy as np

    np.savez(path, **arrays)
    return path


def build_catalogue(d: Path) -> list[Case]:
    """Make every crafted file under ``d`` and return the cases."""
    import numpy as np
    import torch

    cases: list[Case] = []
    bern, markov, nade = d / "bernoulli.safetensors", d / "markov.safetensors", d / "nade.safetensors"
    export = d / "export"
    png = str(d / "out.png")

    # -- crafted checkpoints, each given to eval and sample -----------------------------------
    bad: dict[str, Path] = {}

    def raw(name, data: bytes):
        bad[name] = d / f"{name}.safetensors"
        bad[name].write_bytes(data)

    raw("empty", b"")
    raw("seven-bytes", b"\x01" * 7)
    raw("random-1k", os.urandom(1024))
    raw("header-length-huge", (2**63).to_bytes(8, "little") + b"{}")
    raw("header-not-json", (4).to_bytes(8, "little") + b"abcd")
    raw("header-json-list", (2).to_bytes(8, "little") + b"[]")
    raw("header-deep-nesting", (200000).to_bytes(8, "little") + b"[" * 200000)
    raw("header-bad-utf8", (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc")
    half = bern.read_bytes()
    raw("truncated-half", half[: len(half) // 2])
    raw("truncated-tail", half[:-3])
    sparse = d / "sparse-12g.safetensors"
    with open(sparse, "wb") as handle:
        handle.truncate(12 * 2**30)
    bad["sparse-12g"] = sparse
    header = json.dumps({"__metadata__": {"format": "densreg-checkpoint/1"},
                         "model.log_probs": {"dtype": "F32", "shape": [3 * 2**30], "data_offsets": [0, 12 * 2**30]}})
    huge = d / "declares-12g-tensor.safetensors"
    with open(huge, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header.encode())
        handle.truncate(8 + len(header) + 12 * 2**30)
    bad["declares-12g-tensor"] = huge
    for key in ("model", "config", "event_shape", "num_categories", "ordering", "format"):
        bad[f"no-{key}"] = tamper(bern, d / f"no-{key}.safetensors", drop=(key,))
    shapes = {"shape-1x1e5x1e5": [1, 100000, 100000], "shape-zero": [0, 8, 8], "shape-2d": [8, 8],
              "shape-string": "abc", "shape-float": [1.5, 8, 8], "shape-negative": [-1, 8, 8], "shape-2e40": [1, 2**40, 1]}
    for name, value in shapes.items():
        bad[name] = tamper(bern, d / f"{name}.safetensors", {"event_shape": json.dumps(value)})
    for name, value in {"k-1": "1", "k-1e9": "1000000000", "k-text": "many", "k-negative": "-3",
                        "k-float": "2.5"}.items():
        bad[name] = tamper(bern, d / f"{name}.safetensors", {"num_categories": value})
    for name, value in {"config-list": "[1, 2]", "config-not-json": "{oops", "config-unknown-key": '{"hidden": 3}',
                        "config-nan": '{"alpha": NaN}', "config-deep": "[" * 100000,
                        "config-huge-hidden": '{"hidden": 1000000000}'}.items():
        src = nade if "hidden" in name else bern
        bad[name] = tamper(src, d / f"{name}.safetensors", {"config": value})
    bad["model-unknown"] = tamper(bern, d / "model-unknown.safetensors", {"model": "no-such-model"})
    bad["model-swapped"] = tamper(bern, d / "model-swapped.safetensors", {"model": "markov"})
    bad["format-other"] = tamper(bern, d / "format-other.safetensors", {"format": "something/9"})
    bad["metrics-list"] = tamper(bern, d / "metrics-list.safetensors", {"metrics": "[]"})
    bad["extra-not-json"] = tamper(bern, d / "extra-not-json.safetensors", {"extra": "{"})
    bad["ordering-unknown"] = tamper(markov, d / "ordering-unknown.safetensors", {"ordering": "spiral"})
    bad["tampered-config"] = tamper(markov, d / "tampered-config.safetensors",
                                    {"config": json.dumps({"order": 1, "ordering": "snake", "alpha": 1.0})})
    bad["tampered-weights"] = tamper(bern, d / "tampered-weights.safetensors",
                                     tensors=lambda t: {k: v + 0.01 if k.startswith("model.") else v
                                                        for k, v in t.items()})
    bad["weights-nan"] = tamper(bern, d / "weights-nan.safetensors", drop=("content_sha256",),
                                tensors=lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()})
    bad["tensor-renamed"] = tamper(bern, d / "tensor-renamed.safetensors",
                                   tensors=lambda t: {k + "x": v for k, v in t.items()})
    bad["tensor-reshaped"] = tamper(bern, d / "tensor-reshaped.safetensors",
                                    tensors=lambda t: {k: v.reshape(-1)[:5].clone() for k, v in t.items()})
    bad["tensor-dtype"] = tamper(bern, d / "tensor-dtype.safetensors",
                                 tensors=lambda t: {k: v.to(torch.float16) for k, v in t.items()})
    bad["extra-tensor"] = tamper(bern, d / "extra-tensor.safetensors",
                                 tensors=lambda t: {**t, "model.junk": torch.zeros(3)})
    os.mkfifo(d / "fifo.safetensors")
    bad["fifo"] = d / "fifo.safetensors"
    (d / "zero-link.safetensors").symlink_to("/dev/zero")
    bad["symlink-to-dev-zero"] = d / "zero-link.safetensors"
    (d / "empty-folder").mkdir()
    bad["folder-not-export"] = d / "empty-folder"
    bad["missing"] = d / "does-not-exist.safetensors"
    for name, path in bad.items():
        cases.append(Case(f"eval {name}", "checkpoint", ["eval", str(path), "--dataset", "digits"]))
        cases.append(Case(f"sample {name}", "checkpoint", ["sample", str(path), "-n", "2", "--out", png]))
    cases.append(Case("features declares-12g-tensor", "checkpoint",
                      ["features", str(huge), "--dataset", "digits", "--out", str(d / "f.npz")]))
    cases.append(Case("export sparse-12g", "checkpoint", ["export", str(sparse), "--out", str(d / "ex-sparse")]))

    # -- resume states ---------------------------------------------------------------------------
    run = d / "run.safetensors"
    last = d / "run.last.safetensors"
    train_nade = ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--epochs", "1", "--out", str(run)]
    resume_cases = {}
    subprocess.run([sys.executable, "-m", "densreg", *train_nade], check=True, capture_output=True, cwd=ROOT)
    good_last = last.read_bytes()

    def resume_case(name, build):
        target = d / f"resume-{name}"
        target.mkdir()
        shutil.copy(run, target / "run.safetensors")
        build(target / "run.last.safetensors")
        resume_cases[name] = target

    resume_case("random-bytes", lambda p: p.write_bytes(os.urandom(512)))
    resume_case("truncated", lambda p: p.write_bytes(good_last[: len(good_last) // 3]))
    resume_case("extra-not-json", lambda p: (p.write_bytes(good_last), tamper(p, p, {"extra": "{"})))
    resume_case("no-resume-key", lambda p: (p.write_bytes(good_last), tamper(p, p, {"extra": "{}"})))
    resume_case("resume-list", lambda p: (p.write_bytes(good_last), tamper(p, p, {"extra": '{"resume": []}'})))
    resume_case("no-rng", lambda p: (p.write_bytes(good_last), tamper(
        p, p, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("extra.rng")})))
    resume_case("optim-shape", lambda p: (p.write_bytes(good_last), tamper(
        p, p, tensors=lambda t: {k: (v[:1].clone() if k.endswith("exp_avg") else v) for k, v in t.items()})))
    resume_case("rng-garbage", lambda p: (p.write_bytes(good_last), tamper(
        p, p, tensors=lambda t: {k: (torch.zeros(3) if k == "extra.rng.torch" else v) for k, v in t.items()})))
    resume_case("best-missing", lambda p: (p.write_bytes(good_last), tamper(
        p, p, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("extra.best.")})))
    resume_case("fifo", lambda p: os.mkfifo(p))
    for name, folder in resume_cases.items():
        args = [*train_nade[:-1], str(folder / "run.safetensors"), "--resume"]
        cases.append(Case(f"train --resume {name}", "resume", args, protect=[folder / "run.safetensors"]))

    # -- export folders ----------------------------------------------------------------------------
    def export_case(name, change):
        folder = d / f"export-{name}"
        shutil.copytree(export, folder)
        change(folder)
        cases.append(Case(f"sample export {name}", "export", ["sample", str(folder), "-n", "2", "--out", png]))
        cases.append(Case(f"eval export {name}", "export", ["eval", str(folder), "--dataset", "digits"]))

    def manifest(change):
        def edit(folder):
            data = json.loads((folder / "manifest.json").read_text())
            change(data)
            (folder / "manifest.json").write_text(json.dumps(data))
        return edit

    for key in ("order", "state", "model", "event_shape", "num_categories", "files", "format", "versions"):
        export_case(f"manifest-no-{key}", manifest(lambda m, key=key: m.pop(key)))
    export_case("manifest-no-opset", manifest(lambda m: m["versions"].pop("opset")))
    export_case("order-not-permutation", manifest(lambda m: m.update(order=[0] * 64)))
    export_case("order-garbage", manifest(lambda m: m.update(order=[[1], "x"])))
    export_case("state-garbage", manifest(lambda m: m.update(state=[{"name": 3}])))
    export_case("shape-huge", manifest(lambda m: m.update(event_shape=[1, 100000, 100000])))
    export_case("k-huge", manifest(lambda m: m.update(num_categories=10**9)))
    export_case("files-list", manifest(lambda m: m.update(files=[1, 2])))
    export_case("files-escape", manifest(lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0", "bytes": 1}})))
    export_case("manifest-deep", lambda f: (f / "manifest.json").write_text("[" * 100000))
    export_case("manifest-not-json", lambda f: (f / "manifest.json").write_text("{oops"))
    export_case("manifest-fifo", lambda f: ((f / "manifest.json").unlink(), os.mkfifo(f / "manifest.json")))
    export_case("onnx-metadata-edited", lambda f: set_export_metadata(f, drop=("opset",)))
    export_case("step-missing", lambda f: (f / "step.onnx").unlink())
    export_case("step-truncated", lambda f: (f / "step.onnx").write_bytes((f / "step.onnx").read_bytes()[:100]))
    export_case("step-random", lambda f: (f / "step.onnx").write_bytes(os.urandom(3000)))

    # -- data files --------------------------------------------------------------------------------
    z = np.zeros((3, 28, 28))
    datas = {
        "npz-half-values": npz(d / "half.npz", train=z + 0.5, valid=z, test=z),
        "npz-256": npz(d / "v256.npz", train=z + 256, valid=z, test=z),
        "npz-nan": npz(d / "nan.npz", train=z * np.nan, valid=z, test=z),
        "npz-complex": npz(d / "complex.npz", train=z + 1j, valid=z, test=z),
        "npz-wrong-shape": npz(d / "shape.npz", train=np.zeros((3, 27, 28)), valid=z, test=z),
        "npz-no-train": npz(d / "notrain.npz", valid=z, test=z),
        "npz-strings": npz(d / "strings.npz", train=np.array(["a", "b"]), valid=z, test=z),
        "npz-object": d / "object.npz",
        "npz-not-zip": d / "notzip.npz",
        "npz-huge-declared": d / "declared.npz",
        "amat-letters": d / "letters.amat",
        "amat-partial": d / "partial.amat",
        "data-fifo": d / "data-fifo.npz",
        "data-empty-folder": d / "empty-folder",
    }
    np.savez(d / "object.npz", train=np.array([{"a": 1}], dtype=object), valid=z, test=z)
    (d / "notzip.npz").write_bytes(b"PK\x03\x04 not really a zip")
    # an .npy whose header declares 10^12 float64 values, in a tiny .npz
    import io
    import zipfile

    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split in ("train", "valid", "test"):
            archive.writestr(f"{split}.npy", npy)
    (d / "declared.npz").write_bytes(buffer.getvalue())
    (d / "letters.amat").write_text("0 1 x y\n" * 3)
    (d / "partial.amat").write_text("0 1 " * 100 + "\n")
    os.mkfifo(d / "data-fifo.npz")
    for name, path in datas.items():
        cases.append(Case(f"eval --data {name}", "data", ["eval", str(bern).replace("bernoulli", "bernoulli"),
                                                          "--dataset", "binarized-mnist", "--data", str(path)]))

    # -- arguments -----------------------------------------------------------------------------------
    for name, args in {
        "sample -n 10**7": ["sample", str(bern), "-n", str(10**7), "--out", png],
        "sample -n 10**12": ["sample", str(bern), "-n", str(10**12), "--out", png],
        "sample -n 0": ["sample", str(bern), "-n", "0", "--out", png],
        "sample --seed -5": ["sample", str(bern), "--seed", "-5", "--out", png],
        "sample --seed 2**70": ["sample", str(bern), "--seed", str(2**70), "--out", png],
        "sample --nrow -2": ["sample", str(bern), "--nrow", "-2", "--out", png],
        "sample --nrow 10**9": ["sample", str(bern), "--nrow", str(10**9), "--out", png],
        "info -k 10**9": ["info", "bernoulli", "-k", str(10**9)],
        "info -k 1": ["info", "bernoulli", "-k", "1"],
        "info -k 65536 markov": ["info", "markov", "-k", "65536"],
        "info --shape 1,100000,100000": ["info", "bernoulli", "--shape", "1,100000,100000"],
        "info --shape -1,2,2": ["info", "bernoulli", "--shape", "-1,2,2"],
        "info --shape a,b,c": ["info", "bernoulli", "--shape", "a,b,c"],
        "info --set hidden=10**9": ["info", "nade", "--set", "hidden=1000000000"],
        "info --set hidden=-3": ["info", "nade", "--set", "hidden=-3"],
        "info --set layers=10**6": ["info", "row-lstm", "--set", "layers=1000000"],
        "info --set order=100": ["info", "markov", "--set", "order=100"],
        "info --set alpha=NaN": ["info", "bernoulli", "--set", "alpha=NaN"],
        "info --set alpha=1e999": ["info", "bernoulli", "--set", "alpha=1e999"],
        "info --set ordering=random:-1": ["info", "markov", "--set", "ordering=random:-1"],
        "info --set ordering=random:1e400": ["info", "markov", "--set", "ordering=random:" + "9" * 400],
        "info --set no-equals": ["info", "bernoulli", "--set", "alpha"],
        "info --set unknown": ["info", "bernoulli", "--set", "nope=1"],
        "info --set event_shape": ["info", "bernoulli", "--set", "event_shape=[1,2,2]"],
        "info unknown model": ["info", "no-such-model"],
        "train unknown dataset": ["train", "bernoulli", "--dataset", "nope", "--out", str(d / "x.safetensors")],
        "train --epochs 0": ["train", "nade", "--dataset", "digits", "--epochs", "0", "--out", str(d / "x.safetensors")],
        "train --lr -1": ["train", "nade", "--dataset", "digits", "--lr", "-1", "--out", str(d / "x.safetensors")],
        "train --lr nan": ["train", "nade", "--dataset", "digits", "--lr", "nan", "--out", str(d / "x.safetensors")],
        "train --batch-size 0": ["train", "nade", "--dataset", "digits", "--batch-size", "0",
                                 "--out", str(d / "x.safetensors")],
        "train --device nonsense": ["train", "nade", "--dataset", "digits", "--device", "nonsense",
                                    "--out", str(d / "x.safetensors")],
        "train --device cuda:99": ["train", "nade", "--dataset", "digits", "--device", "cuda:99", "--epochs", "1",
                                   "--out", str(d / "x.safetensors")],
        "train closed form with --epochs": ["train", "markov", "--dataset", "digits", "--epochs", "3",
                                            "--out", str(d / "x.safetensors")],
        "train --resume nothing": ["train", "nade", "--dataset", "digits", "--resume",
                                   "--out", str(d / "never.safetensors")],
        "eval --split nope": ["eval", str(bern), "--dataset", "digits", "--split", "nope"],
        "eval --batch-size 0": ["eval", str(bern), "--dataset", "digits", "--batch-size", "0"],
        "eval wrong dataset shape": ["eval", str(bern), "--dataset", "binarized-mnist", "--data", str(d / "half.npz")],
        "features of bernoulli": ["features", str(bern), "--dataset", "digits", "--out", str(d / "f.npz")],
        "plot random file": ["plot", str(d / "random-1k.safetensors"), "--out", png],
        "plot missing": ["plot", str(d / "nope.log.jsonl"), "--out", png],
        "check unknown": ["check", "no-such-model"],
        "export to a file": ["export", str(bern), "--out", str(bern)],
    }.items():
        valid = name in ("sample --seed 2**70", "sample --nrow 10**9", "info --set ordering=random:1e400")
        cases.append(Case(name, "arguments", args, protect=[bern], expect="ok" if valid else "error"))
    log = d / "bad.log.jsonl"
    log.write_text('{"epoch": 1}\nnot json\n')
    cases.append(Case("plot corrupt log", "arguments", ["plot", str(log), "--out", png]))

    # -- special output targets --------------------------------------------------------------------
    targets = {}
    regular = d / "keep.bin"
    regular.write_bytes(b"keep")
    targets["symlink"] = d / "t-link"
    targets["symlink"].symlink_to(regular)
    targets["fifo"] = d / "t-fifo"
    os.mkfifo(targets["fifo"])
    targets["read-only"] = d / "t-ro"
    targets["read-only"].write_bytes(b"keep")
    targets["read-only"].chmod(0o444)
    try:
        os.mknod(d / "t-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets["device"] = d / "t-null"
    except OSError:
        pass
    ro_dir = d / "ro-dir"
    ro_dir.mkdir()
    for kind, path in targets.items():
        protect = [path, regular]
        cases.append(Case(f"sample --npz {kind}", "targets",
                          ["sample", str(bern), "-n", "2", "--out", png, "--npz", str(path)], protect=protect))
        cases.append(Case(f"sample --out {kind}", "targets", ["sample", str(bern), "-n", "2", "--out", str(path)],
                          protect=protect))
        cases.append(Case(f"train --out {kind}", "targets",
                          ["train", "bernoulli", "--dataset", "digits", "--out", str(path)], protect=protect))
        cases.append(Case(f"features --out {kind}", "targets",
                          ["features", str(nade), "--dataset", "digits", "--out", str(path)], protect=protect))
        cases.append(Case(f"plot --out {kind}", "targets", ["plot", str(d / "run.log.jsonl"), "--out", str(path)],
                          protect=protect))
        cases.append(Case(f"export --out {kind}", "targets", ["export", str(bern), "--out", str(path)],
                          protect=protect))
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        ro_dir.chmod(0o555)
        cases.append(Case("train --out in a read-only folder", "targets",
                          ["train", "bernoulli", "--dataset", "digits", "--out", str(ro_dir / "m.safetensors")]))
    locked = d / "locked.safetensors"
    shutil.copy(bern, locked)
    cases.append(Case("train --out held by another run", "targets",
                      ["train", "bernoulli", "--dataset", "digits", "--out", str(locked)], protect=[locked],
                      holder=str(locked)))
    for i in range(3):
        (d / f".locked.safetensors.orphan{i}.tmp").write_bytes(b"half")

    # -- file names that are not UTF-8 -----------------------------------------------------------
    odd = os.fsdecode(b"m\xff\xfe.safetensors")
    odd_path = d / odd
    cases.append(Case("train --out non-UTF-8 name", "names",
                      ["train", "bernoulli", "--dataset", "digits", "--out", str(odd_path)], expect="ok"))
    shutil.copy(nade, d / os.fsdecode(b"n\xff.safetensors"))
    cases.append(Case("eval non-UTF-8 checkpoint", "names",
                      ["eval", str(d / os.fsdecode(b"n\xff.safetensors")), "--dataset", "digits"], expect="ok"))
    cases.append(Case("sample --out non-UTF-8 png", "names",
                      ["sample", str(nade), "-n", "2", "--out", str(d / os.fsdecode(b"s\xff.png"))], expect="ok"))
    cases.append(Case("export --out non-UTF-8 folder", "names",
                      ["export", str(bern), "--out", str(d / os.fsdecode(b"e\xff"))]))
    odd_run = d / os.fsdecode(b"r\xff.safetensors")  # trained here, resumed by the case
    subprocess.run([sys.executable, "-m", "densreg", *train_nade[:-1], str(odd_run)], check=True, capture_output=True,
                   cwd=ROOT)
    cases.append(Case("train nade --resume non-UTF-8 name", "names",
                      [*train_nade[:-1], str(odd_run), "--resume", "--epochs", "2"], expect="ok"))
    return cases


# -- running -----------------------------------------------------------------------------------------

HOLD = "import sys, time\nfrom densreg.registry.locking import output_lock\nwith output_lock(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(3600)\n"


def limit_memory(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        os.setsid()
    return apply


def run_case(case: Case, timeout: float, limit_bytes: int) -> dict:
    before = {p: fingerprint(p) for p in case.protect}
    holder = None
    if case.holder:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, case.holder], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **case.env}
    env.pop("DENSREG_DEBUG", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "densreg", *case.args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                            preexec_fn=limit_memory(limit_bytes))
    hung = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if holder is not None:
        holder.kill()
        holder.wait()
    after = {p: fingerprint(p) for p in case.protect}
    stderr = err.decode("utf-8", "replace").strip()
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("onnxruntime:", "training "))]
    last = lines[-1] if lines else ""
    rc = proc.returncode
    if hung:
        outcome = "hang"
    elif any(before[p] != after[p] for p in case.protect):
        outcome = "data lost"
    elif rc < 0 or "MemoryError" in stderr or "can't allocate memory" in stderr or "out of memory" in stderr.lower():
        outcome = "unbounded allocation"
    elif "Traceback" in stderr or "Error: unexpected" in stderr:
        outcome = "traceback"
    elif rc == 0:
        outcome = "ok" if case.expect == "ok" else "accepted"
    elif last.startswith("Error: ") and (len(lines) == 1 or rc == 2):
        outcome = "error"
    else:
        outcome = "traceback"
    return {"name": case.name, "group": case.group, "outcome": outcome, "rc": rc, "seconds": round(seconds, 1),
            "message": last[:160] if rc else out.decode("utf-8", "replace").strip()[-160:]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=90, help="Seconds per case (default 90).")
    parser.add_argument("--memory-gib", type=float, default=8, help="Address-space limit per case (default 8 GiB).")
    parser.add_argument("--jobs", type=int, default=2, help="Cases run at once (default 2).")
    parser.add_argument("--only", action="append", default=None,
                        help="Run only cases whose name matches this glob (repeatable).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hostile.md"))
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="densreg-hostile-"))
    try:
        subprocess.run([sys.executable, "-c", FIXTURES, str(folder)], check=True, cwd=ROOT)
        cases = build_catalogue(folder)
        if args.only:
            cases = [c for c in cases if any(fnmatch.fnmatch(c.name, pattern) for pattern in args.only)]
        print(f"{len(cases)} cases, {args.jobs} at a time, {args.timeout:.0f} s and {args.memory_gib:g} GiB each",
              file=sys.stderr)
        limit = int(args.memory_gib * 2**30)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = []
            for result in pool.map(lambda c: run_case(c, args.timeout, limit), cases):
                results.append(result)
                print(f"[{len(results)}/{len(cases)}] {result['outcome']:<20} {result['name']}: {result['message']}",
                      file=sys.stderr)
        total = time.perf_counter() - start
    finally:
        for path in folder.rglob("*"):  # make read-only folders removable
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
    write_report(results, Path(args.out), args, total)


def write_report(results: list[dict], out: Path, args, total: float) -> None:
    counts = {c: sum(r["outcome"] == c for r in results) for c in COLUMNS}
    lines = ["# Hostile inputs through the CLI", "",
             f"`python benchmarks/hostile.py --timeout {args.timeout:g} --memory-gib {args.memory_gib:g} "
             f"--jobs {args.jobs}" + "".join(f" --only '{p}'" for p in args.only or ()) + "`" +
             f": {len(results)} cases in {total:.0f} s, each `python -m densreg ...` in its own subprocess with an "
             "address-space limit (RLIMIT_AS) and a timeout, all files in a temporary folder.", "",
             "| cases | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|",
             f"| {len(results)} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |", "",
             "error: non-zero exit with one clear line (or click's usage error); ok: success where success is "
             "right (non-UTF-8 names are supported); traceback: a traceback or an `Error: unexpected <Type>` line; "
             "accepted: bad input taken silently. The goal is zero in the last five columns.", "",
             "| group | case | outcome | exit | s | last line |", "|---|---|---|---|---|---|"]
    for r in results:
        message = r["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['group']} | {r['name']} | {r['outcome']} | {r['rc']} | {r['seconds']} | {message} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
