"""Hostile-catalogue cases of issue 28 (items 4, 5, 6 and 8): writers against a training's locked
files and against files of another kind, crafted .npy headers on --images, huge completions, the
one-line errors of item 6, and plugins that fail half-way (installed in a site folder on PYTHONPATH).
Declared like the other groups (hostile_cases.Catalogue); run by tests/test_hostile_catalogue.py."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from hostile_cases import Catalogue, plugin_site, tamper

HALF_PLUGIN = '''
import numpy as np
from densreg.registry import Dataset, hookimpl
from densreg.plugins.baselines import Bernoulli


class Half(Bernoulli):
    """Registered just before the hook raises."""


@hookimpl
def register_models(register):
    register(Half, name="half-model", description="registered, then the hook raised")
    raise RuntimeError("second model broke")


def read(split, data, download):
    return {}["train_images"]


@hookimpl
def register_datasets(register):
    register(Dataset("fragile", "a reader that raises", (1, 8, 8), 2, read))
'''


def crafted_npy(elements: int) -> bytes:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({elements},), }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)


def crafted_npz(path: Path, elements: int) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images.npy", crafted_npy(elements))
    path.write_bytes(buffer.getvalue())


def swapped_step(export: Path, folder: Path) -> None:
    """A copy of ``export`` whose step.onnx is its conditionals.onnx, the manifest updated to match."""
    shutil.copytree(export, folder)
    shutil.copy(folder / "conditionals.onnx", folder / "step.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "step.onnx").read_bytes()
    manifest["files"]["step.onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def writer_cases(cat: Catalogue) -> None:
    """Item 4: every writer against a training's locked files, and against a file of another kind."""
    d, bern, nade = cat.d, cat.d / "bernoulli.safetensors", cat.d / "nade.safetensors"
    run, log, state = d / "run.safetensors", d / "run.log.jsonl", d / "run.last.safetensors"  # resume_cases' run
    held = {"sample --out LOG while a training holds it": (["sample", bern, "-n", "2", "--out", log], log),
            "sample --npz CHECKPOINT while a training holds it": (
                ["sample", bern, "-n", "2", "--out", d / "w.png", "--npz", run], run),
            "features --out STATE while a training holds it": (
                ["features", nade, "--dataset", "digits", "--out", state], state)}
    for name, (args, path) in held.items():
        cat.add(name, "writers", [*args, "--force"], protect=[path], holder=str(path))
    picture = d / "keep.png"
    cat.step(lambda: picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32)))
    other = d / "mine"
    cat.step(lambda: (other.mkdir(), (other / "notes.txt").write_text("keep")))
    kinds = {"sample --out over a checkpoint": (["sample", bern, "-n", "2", "--out", run], run),
             "sample --npz over a training log": (["sample", bern, "-n", "2", "--out", d / "w.png", "--npz", log], log),
             "features --out over a resume state": (["features", nade, "--dataset", "digits", "--out", state], state),
             "plot --out over a checkpoint": (["plot", log, "--out", run], run),
             "score --out over a picture": (["score", bern, "--dataset", "digits", "--out", picture], picture),
             "score --heatmaps over a training log": (["score", bern, "--dataset", "digits", "--heatmaps", log], log),
             "complete --npz over a checkpoint": (["complete", bern, "--dataset", "digits", "--keep", "3", "--out",
                                                   d / "w.png", "--npz", run], run),
             "export --out over a folder of other files": (["export", bern, "--out", other, "--no-parity"],
                                                            other / "notes.txt"),
             "train --out over a picture": (["train", "bernoulli", "--dataset", "digits", "--out", picture], picture),
             "sample --out and --npz the same file": (["sample", bern, "--out", d / "w2.png", "--npz", d / "w2.png"],
                                                      d / "w2.png")}
    for name, (args, path) in kinds.items():
        cat.add(name, "writers", args, protect=[path])
    forced = d / "forced.safetensors"
    cat.step(lambda: shutil.copy(bern, forced))
    cat.add("sample --out over a checkpoint with --force", "writers",
            ["sample", bern, "-n", "2", "--out", forced, "--force"], expect="ok")


def input_cases(cat: Catalogue) -> None:
    """Item 5: crafted .npy headers (64e9 and 7e13 values) on every --images path; a billion completions."""
    d, bern, nade, png = cat.d, cat.d / "bernoulli.safetensors", cat.d / "nade.safetensors", cat.d / "out.png"
    files = {"64e9": d / "crafted-64e9.npz", "7e13 lone .npy": d / "crafted-7e13.npz"}
    cat.step(lambda: crafted_npz(files["64e9"], 64 * 10**9))
    cat.step(lambda: files["7e13 lone .npy"].write_bytes(crafted_npy(7 * 10**13)))
    for label, npz in files.items():
        cat.add(f"score --images crafted {label}", "inputs", ["score", bern, "--images", npz])
        cat.add(f"complete --images crafted {label}", "inputs",
                ["complete", bern, "--images", npz, "--keep", "2", "--out", png])
        cat.add(f"features --images crafted {label}", "inputs", ["features", nade, "--images", npz, "--out",
                                                                 d / "f.npz"])
        cat.add(f"plot crafted {label}", "inputs", ["plot", npz, "-k", "2", "--out", png])
    cat.add("complete -n 10**9", "inputs", ["complete", bern, "--dataset", "digits", "--keep", "2", "-n",
                                            str(10**9), "--out", png])


def line_cases(cat: Catalogue) -> None:
    """Item 6: each case one line (and features of a real-valued model on a float .npz works)."""
    d, run = cat.d, cat.d / "run.safetensors"
    train = ["train", "nade", "--dataset", "digits", "--set", "hidden=8"]
    if not torch.cuda.is_available():  # on a GPU machine these would train
        cat.add("train --nproc 2 --device cuda without CUDA", "lines",
                [*train, "--nproc", "2", "--device", "cuda", "--out", d / "np.safetensors"])
        cat.add("train --nproc 2 --backend nccl without CUDA", "lines",
                [*train, "--nproc", "2", "--backend", "nccl", "--out", d / "np.safetensors"])
    cat.step(lambda: swapped_step(d / "export", d / "export-step-swapped"))
    cat.add("sample export step swapped", "lines", ["sample", d / "export-step-swapped", "-n", "2", "--out",
                                                    d / "out.png"])
    z = np.zeros((3, 28, 28), dtype=np.uint8)
    cat.step(lambda: np.savez(d / "empty-train.npz", train=z[:0], valid=z, test=z))
    cat.add("train on an empty train split", "lines", ["train", "nade", "--dataset", "binarized-mnist", "--data",
                                                       d / "empty-train.npz", "--out", d / "e.safetensors"])
    for where in ("options", "param_groups"):
        folder = d / f"resume-string-lr-{where}"

        def make(folder=folder, where=where):
            folder.mkdir()
            shutil.copy(run, folder / "run.safetensors")

            def edit(meta):
                extra = json.loads(meta["extra"])
                resume = extra["resume"]
                (resume["options"] if where == "options" else resume["param_groups"][0])["lr"] = "0.1"
                return {"extra": json.dumps(extra)}
            src = d / "run.last.safetensors"
            from densreg.registry.checkpoint import read_tensors
            tamper(src, folder / "run.last.safetensors", edit(read_tensors(src)[1]))
        cat.step(make)
        cat.add(f"train --resume string lr in {where}", "lines",
                ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--epochs", "2", "--resume", "--out",
                 folder / "run.safetensors"], protect=[folder / "run.safetensors"])
    inf_log = d / "inf.log.jsonl"
    cat.step(lambda: inf_log.write_text('{"epoch": 1, "train_nll": Infinity, "valid_nll": 3.0}\n'))
    cat.add("plot a log with an infinite value", "lines", ["plot", inf_log, "--out", d / "out.png"])
    cat.add("train --resume with --perturb added", "lines",
            ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--epochs", "2", "--resume", "--perturb",
             "0.2", "--out", run], protect=[run])
    rnade, floats = d / "rnade.safetensors", d / "floats.npz"

    def real_valued():
        from densreg.registry import create_model, save_checkpoint
        save_checkpoint(rnade, create_model("rnade", (1, 8, 8), num_categories=0, hidden=4), "rnade")
        np.savez(floats, images=np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32))
    cat.step(real_valued)
    cat.add("features of rnade on a float npz", "lines", ["features", rnade, "--images", floats, "--out",
                                                          d / "rf.npz"], expect="ok")


def plugin_cases(cat: Catalogue) -> None:
    """Item 8: a plugin whose hook registers a model then raises; a dataset reader that raises; a
    checkpoint whose plugin DENSREG_LOAD_PLUGINS leaves out."""
    d, site = cat.d, cat.d / "site-half"
    cat.step(lambda: plugin_site(site, "half", HALF_PLUGIN))
    env = {"PYTHONPATH": str(site), "DENSREG_STRICT_PLUGINS": "0"}
    cat.add("info of a model whose plugin's hook raised after registering it", "plugins",
            ["info", "half-model"], env=env)
    cat.add("train on a dataset whose reader raises", "plugins",
            ["train", "bernoulli", "--dataset", "fragile", "--out", d / "fr.safetensors"], env=env)
    cat.add("eval a checkpoint whose plugin is filtered out", "plugins",
            ["eval", d / "nade.safetensors", "--dataset", "digits"], env={"DENSREG_LOAD_PLUGINS": "datasets"})


def trust_cases(cat: Catalogue) -> None:
    """Every group of this module (after resume_cases, whose trained run the writers use)."""
    for group in (writer_cases, input_cases, line_cases, plugin_cases):
        group(cat)
