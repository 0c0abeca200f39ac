"""The crafted files of the hostile-input catalogue (tests/test_hostile_catalogue.py): bad
checkpoints, damaged resume states and export folders, bad data files. Each group declares its
cases and the steps that write their files (see hostile_cases.Catalogue)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hostile_cases import Catalogue, declared_npz, densreg, set_export_metadata, sparse, tamper, train_nade


def keep_then(good: Callable[[], bytes], change: Callable[[Path], object]) -> Callable[[Path], None]:
    """A step that writes ``good()`` to its path, then applies ``change`` to it."""
    return lambda p: (p.write_bytes(good()), change(p))


# -- the groups ------------------------------------------------------------------------------------

def crafted_checkpoints(d: Path) -> dict[str, tuple[Path, Callable[[Path], object] | None]]:
    """Name -> (path, step that writes it; None: it must not exist) of every bad checkpoint."""
    bern, markov, nade = d / "bernoulli.safetensors", d / "markov.safetensors", d / "nade.safetensors"

    def raw(data: bytes):
        return lambda p: p.write_bytes(data)

    huge = json.dumps({"__metadata__": {"format": "densreg-checkpoint/1"},
                       "model.log_probs": {"dtype": "F32", "shape": [3 * 2**30], "data_offsets": [0, 12 * 2**30]}})
    steps = {
        "empty": raw(b""), "seven-bytes": raw(b"\x01" * 7), "random-1k": lambda p: p.write_bytes(os.urandom(1024)),
        "header-length-huge": raw((2**63).to_bytes(8, "little") + b"{}"),
        "header-not-json": raw((4).to_bytes(8, "little") + b"abcd"),
        "header-json-list": raw((2).to_bytes(8, "little") + b"[]"),
        "header-deep-nesting": raw((200000).to_bytes(8, "little") + b"[" * 200000),
        "header-bad-utf8": raw((4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc"),
        "truncated-half": lambda p: p.write_bytes(bern.read_bytes()[: len(bern.read_bytes()) // 2]),
        "truncated-tail": lambda p: p.write_bytes(bern.read_bytes()[:-3]),
        "sparse-12g": lambda p: sparse(p, 12 * 2**30),
        "declares-12g-tensor": lambda p: sparse(p, 8 + len(huge) + 12 * 2**30,
                                                len(huge).to_bytes(8, "little") + huge.encode()),
    }
    for key in ("model", "config", "event_shape", "num_categories", "ordering", "format"):
        steps[f"no-{key}"] = lambda p, key=key: tamper(bern, p, drop=(key,))
    shapes = {"shape-1x1e5x1e5": [1, 100000, 100000], "shape-zero": [0, 8, 8], "shape-2d": [8, 8],
              "shape-string": "abc", "shape-float": [1.5, 8, 8], "shape-negative": [-1, 8, 8], "shape-2e40": [1, 2**40, 1]}
    for name, value in shapes.items():
        steps[name] = lambda p, value=value: tamper(bern, p, {"event_shape": json.dumps(value)})
    for name, value in {"k-1": "1", "k-1e9": "1000000000", "k-text": "many", "k-negative": "-3",
                        "k-float": "2.5"}.items():
        steps[name] = lambda p, value=value: tamper(bern, p, {"num_categories": value})
    for name, value in {"config-list": "[1, 2]", "config-not-json": "{oops", "config-unknown-key": '{"hidden": 3}',
                        "config-nan": '{"alpha": NaN}', "config-deep": "[" * 100000,
                        "config-huge-hidden": '{"hidden": 1000000000}'}.items():
        steps[name] = lambda p, value=value, src=(nade if "hidden" in name else bern): tamper(src, p, {"config": value})
    steps.update({
        "model-unknown": lambda p: tamper(bern, p, {"model": "no-such-model"}),
        "model-swapped": lambda p: tamper(bern, p, {"model": "markov"}),
        "format-other": lambda p: tamper(bern, p, {"format": "something/9"}),
        "metrics-list": lambda p: tamper(bern, p, {"metrics": "[]"}),
        "extra-not-json": lambda p: tamper(bern, p, {"extra": "{"}),
        "ordering-unknown": lambda p: tamper(markov, p, {"ordering": "spiral"}),
        "tampered-config": lambda p: tamper(markov, p, {"config": json.dumps({"order": 1, "ordering": "snake",
                                                                             "alpha": 1.0})}),
        "tampered-weights": lambda p: tamper(bern, p, tensors=lambda t: {k: v + 0.01 if k.startswith("model.") else v
                                                                          for k, v in t.items()}),
        "weights-nan": lambda p: tamper(bern, p, drop=("content_sha256",), tensors=lambda t: {
            k: torch.full_like(v, float("nan")) for k, v in t.items()}),
        "tensor-renamed": lambda p: tamper(bern, p, tensors=lambda t: {k + "x": v for k, v in t.items()}),
        "tensor-reshaped": lambda p: tamper(bern, p, tensors=lambda t: {k: v.reshape(-1)[:5].clone()
                                                                        for k, v in t.items()}),
        "tensor-dtype": lambda p: tamper(bern, p, tensors=lambda t: {k: v.to(torch.float16) for k, v in t.items()}),
        "extra-tensor": lambda p: tamper(bern, p, tensors=lambda t: {**t, "model.junk": torch.zeros(3)}),
    })
    files = {name: (d / f"{name}.safetensors", step) for name, step in steps.items()}
    files.update({"fifo": (d / "fifo.safetensors", os.mkfifo),
                  "symlink-to-dev-zero": (d / "zero-link.safetensors", lambda p: p.symlink_to("/dev/zero")),
                  "folder-not-export": (d / "empty-folder", Path.mkdir),
                  "missing": (d / "does-not-exist.safetensors", None)})
    return files


def checkpoint_cases(cat: Catalogue) -> None:
    """Every crafted checkpoint given to eval and sample; a huge one to features and export."""
    png = cat.d / "out.png"
    for name, (path, step) in crafted_checkpoints(cat.d).items():
        if step is not None:
            cat.step(lambda path=path, step=step: step(path))
        cat.add(f"eval {name}", "checkpoint", ["eval", path, "--dataset", "digits"])
        cat.add(f"sample {name}", "checkpoint", ["sample", path, "-n", "2", "--out", png])
    cat.add("features declares-12g-tensor", "checkpoint",
            ["features", cat.d / "declares-12g-tensor.safetensors", "--dataset", "digits", "--out", cat.d / "f.npz"])
    cat.add("export sparse-12g", "checkpoint", ["export", cat.d / "sparse-12g.safetensors", "--out", cat.d / "ex-sparse"])


def resume_cases(cat: Catalogue) -> None:
    """Damaged resume states of a trained NADE run: `train --resume` refuses each, keeping the checkpoint."""
    d, run = cat.d, cat.d / "run.safetensors"
    cat.step(lambda: densreg(*train_nade(run), cwd=d))

    def good() -> bytes:
        return (d / "run.last.safetensors").read_bytes()

    states = {
        "random-bytes": lambda p: p.write_bytes(os.urandom(512)),
        "truncated": lambda p: p.write_bytes(good()[: len(good()) // 3]),
        "extra-not-json": keep_then(good, lambda p: tamper(p, p, {"extra": "{"})),
        "no-resume-key": keep_then(good, lambda p: tamper(p, p, {"extra": "{}"})),
        "resume-list": keep_then(good, lambda p: tamper(p, p, {"extra": '{"resume": []}'})),
        "no-rng": keep_then(good, lambda p: tamper(p, p, tensors=lambda t: {
            k: v for k, v in t.items() if not k.startswith("extra.rng")})),
        "optim-shape": keep_then(good, lambda p: tamper(p, p, tensors=lambda t: {
            k: (v[:1].clone() if k.endswith("exp_avg") else v) for k, v in t.items()})),
        "rng-garbage": keep_then(good, lambda p: tamper(p, p, tensors=lambda t: {
            k: (torch.zeros(3) if k == "extra.rng.torch" else v) for k, v in t.items()})),
        "best-missing": keep_then(good, lambda p: tamper(p, p, tensors=lambda t: {
            k: v for k, v in t.items() if not k.startswith("extra.best.")})),
        "fifo": os.mkfifo,
    }
    for name, build in states.items():
        folder = d / f"resume-{name}"
        cat.step(lambda folder=folder, build=build: (folder.mkdir(), shutil.copy(run, folder / "run.safetensors"),
                                                     build(folder / "run.last.safetensors")))
        cat.add(f"train --resume {name}", "resume", [*train_nade(folder / "run.safetensors"), "--resume"],
                protect=[folder / "run.safetensors"])


def manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A step that applies ``change`` to the parsed manifest.json of an export folder."""
    def edit(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        change(data)
        (folder / "manifest.json").write_text(json.dumps(data))
    return edit


def export_cases(cat: Catalogue) -> None:
    """Damaged copies of an export folder given to sample and eval."""
    changes = {f"manifest-no-{key}": manifest(lambda m, key=key: m.pop(key))
               for key in ("order", "state", "model", "event_shape", "num_categories", "files", "format", "versions")}
    changes.update({
        "manifest-no-opset": manifest(lambda m: m["versions"].pop("opset")),
        "order-not-permutation": manifest(lambda m: m.update(order=[0] * 64)),
        "order-garbage": manifest(lambda m: m.update(order=[[1], "x"])),
        "state-garbage": manifest(lambda m: m.update(state=[{"name": 3}])),
        "shape-huge": manifest(lambda m: m.update(event_shape=[1, 100000, 100000])),
        "k-huge": manifest(lambda m: m.update(num_categories=10**9)),
        "files-list": manifest(lambda m: m.update(files=[1, 2])),
        "files-escape": manifest(lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0", "bytes": 1}})),
        "manifest-deep": lambda f: (f / "manifest.json").write_text("[" * 100000),
        "manifest-not-json": lambda f: (f / "manifest.json").write_text("{oops"),
        "manifest-fifo": lambda f: ((f / "manifest.json").unlink(), os.mkfifo(f / "manifest.json")),
        "onnx-metadata-edited": lambda f: set_export_metadata(f, drop=("opset",)),
        "step-missing": lambda f: (f / "step.onnx").unlink(),
        "step-truncated": lambda f: (f / "step.onnx").write_bytes((f / "step.onnx").read_bytes()[:100]),
        "step-random": lambda f: (f / "step.onnx").write_bytes(os.urandom(3000)),
    })
    for name, change in changes.items():
        folder = cat.d / f"export-{name}"
        cat.step(lambda folder=folder, change=change: (shutil.copytree(cat.d / "export", folder), change(folder)))
        cat.add(f"sample export {name}", "export", ["sample", folder, "-n", "2", "--out", cat.d / "out.png"])
        cat.add(f"eval export {name}", "export", ["eval", folder, "--dataset", "digits"])


def data_cases(cat: Catalogue) -> None:
    """Bad data files given to eval as the binarized-mnist files."""
    d, z = cat.d, np.zeros((3, 28, 28))

    def npz(**arrays):
        return lambda p: np.savez(p, **{"valid": z, "test": z, **arrays})

    files = {
        "npz-half-values": ("half.npz", npz(train=z + 0.5)), "npz-256": ("v256.npz", npz(train=z + 256)),
        "npz-nan": ("nan.npz", npz(train=z * np.nan)), "npz-complex": ("complex.npz", npz(train=z + 1j)),
        "npz-wrong-shape": ("shape.npz", npz(train=np.zeros((3, 27, 28)))),
        "npz-no-train": ("notrain.npz", lambda p: np.savez(p, valid=z, test=z)),
        "npz-strings": ("strings.npz", npz(train=np.array(["a", "b"]))),
        "npz-object": ("object.npz", npz(train=np.array([{"a": 1}], dtype=object))),
        "npz-not-zip": ("notzip.npz", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip")),
        "npz-huge-declared": ("declared.npz", declared_npz),
        "amat-letters": ("letters.amat", lambda p: p.write_text("0 1 x y\n" * 3)),
        "amat-partial": ("partial.amat", lambda p: p.write_text("0 1 " * 100 + "\n")),
        "data-fifo": ("data-fifo.npz", os.mkfifo),
        "data-empty-folder": ("empty-folder", None),  # made for the checkpoint cases
    }
    for name, (file, step) in files.items():
        if step is not None:
            cat.step(lambda path=d / file, step=step: step(path))
        cat.add(f"eval --data {name}", "data",
                ["eval", d / "bernoulli.safetensors", "--dataset", "binarized-mnist", "--data", d / file])
