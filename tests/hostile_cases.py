"""The hostile-input catalogue that tests/test_hostile_catalogue.py runs through the `densreg` CLI:
its cases and file helpers, and the groups of cases without crafted files (bad arguments, special
output targets, file names that are not UTF-8); the crafted checkpoints, resume states, export
folders and data files are in hostile_crafted.py.

Each group declares its cases on a ``Catalogue`` without touching the disk (so pytest collects them
by name) and adds the steps that write their files; ``Catalogue.make()`` runs those, all under the
catalogue's folder (FIFOs, symlinks, sparse files, a device node twin only where the OS lets us).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Case:
    """One `python -m densreg ARGS` run and the outcome it must have: "error" (one clear line,
    non-zero exit) or "ok" (exit 0). ``protect``: files that must be unchanged afterwards;
    ``holder``: a path whose output lock another process holds during the run; ``needs``: a
    file the case is about, which ``make`` may fail to create (the case is then skipped)."""

    name: str
    group: str
    args: list[str]
    expect: str = "error"
    protect: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    holder: str | None = None
    needs: Path | None = None


class Catalogue:
    """The cases of one folder and the steps (run in order by ``make``) that write their files."""

    def __init__(self, folder: Path) -> None:
        self.d, self.cases, self.steps = folder, [], []

    def add(self, name: str, group: str, args: list, **more) -> None:
        self.cases.append(Case(name, group, [str(a) for a in args], **more))

    def step(self, action: Callable[[], object]) -> None:
        self.steps.append(action)

    def make(self) -> None:
        """Write every file the cases use (checkpoints and an export first, by FIXTURES)."""
        subprocess.run([sys.executable, "-c", FIXTURES, str(self.d)], check=True, cwd=self.d)
        for action in self.steps:
            action()


FIXTURES = r"""
import sys, torch
from pathlib import Path
from densreg.registry import create_model, save_checkpoint
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


# -- file helpers ----------------------------------------------------------------------------------

def tamper(src: Path, dst: Path, metadata: dict | None = None, drop: tuple = (), tensors=None) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with metadata keys changed/dropped and tensors replaced."""
    from densreg.registry import checkpoint as ck

    loaded, meta = ck.read_tensors(src)
    meta = {k: v for k, v in meta.items() if k not in drop}
    meta.update(metadata or {})
    if tensors is not None:
        loaded = tensors(loaded)
    ck.save_tensors(dst, loaded, meta)
    return dst


def set_export_metadata(folder: Path, drop=(), **changes) -> None:
    """Rewrite the metadata properties of an export's graphs (``drop``ped keys, ``changes``)."""
    import onnx

    for name in ("conditionals.onnx", "step.onnx", "draw.onnx"):
        proto = onnx.load(folder / name)
        props = {p.key: p.value for p in proto.metadata_props if p.key not in drop}
        props.update(changes)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, folder / name)


def plugin_site(site: Path, name: str, source: str) -> None:
    """A site folder holding the distribution densreg-NAME (version 1.0) whose entry point NAME in the
    densreg group is module densreg_NAME, written from ``source`` (put ``site`` on PYTHONPATH to install it)."""
    info = site / f"densreg_{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: densreg-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[densreg]\n{name} = densreg_{name}\n")
    (site / f"densreg_{name}.py").write_text(source)


def sparse(path: Path, size: int, head: bytes = b"") -> None:
    """``path``: ``head`` then zeros up to ``size`` bytes, without using the disk for them."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


def declared_npz(path: Path) -> None:
    """A tiny .npz whose .npy headers declare 10^12 float64 values per split."""
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split in ("train", "valid", "test"):
            archive.writestr(f"{split}.npy", npy)
    path.write_bytes(buffer.getvalue())


def train_nade(out: Path) -> list[str]:
    """The arguments of a one-epoch NADE run on the bundled digits that writes ``out``."""
    return ["train", "nade", "--dataset", "digits", "--set", "hidden=8", "--epochs", "1", "--out", str(out)]


def densreg(*args: str, cwd: Path) -> None:
    """Run `python -m densreg ARGS` to prepare a case; it must succeed."""
    subprocess.run([sys.executable, "-m", "densreg", *args], check=True, capture_output=True, cwd=cwd)


# -- the groups without crafted files (those are in hostile_crafted.py) ------------------------------

def argument_cases(cat: Catalogue) -> None:
    """Bad (and a few odd but valid) command-line arguments; the checkpoint given must survive."""
    d, png, bern, x = cat.d, cat.d / "out.png", cat.d / "bernoulli.safetensors", cat.d / "x.safetensors"
    digits = ["--dataset", "digits"]
    cases = {
        "sample -n 10**7": ["sample", bern, "-n", str(10**7), "--out", png],
        "sample -n 10**12": ["sample", bern, "-n", str(10**12), "--out", png],
        "sample -n 0": ["sample", bern, "-n", "0", "--out", png],
        "sample --seed -5": ["sample", bern, "--seed", "-5", "--out", png],
        "sample --seed 2**70": ["sample", bern, "--seed", str(2**70), "--out", png],
        "sample --nrow -2": ["sample", bern, "--nrow", "-2", "--out", png],
        "sample --nrow 10**9": ["sample", bern, "--nrow", str(10**9), "--out", png],
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
        "train unknown dataset": ["train", "bernoulli", "--dataset", "nope", "--out", x],
        "train --epochs 0": ["train", "nade", *digits, "--epochs", "0", "--out", x],
        "train --lr -1": ["train", "nade", *digits, "--lr", "-1", "--out", x],
        "train --lr nan": ["train", "nade", *digits, "--lr", "nan", "--out", x],
        "train --batch-size 0": ["train", "nade", *digits, "--batch-size", "0", "--out", x],
        "train --device nonsense": ["train", "nade", *digits, "--device", "nonsense", "--out", x],
        "train --device cuda:99": ["train", "nade", *digits, "--device", "cuda:99", "--epochs", "1", "--out", x],
        "train closed form with --epochs": ["train", "markov", *digits, "--epochs", "3", "--out", x],
        "train --resume nothing": ["train", "nade", *digits, "--resume", "--out", d / "never.safetensors"],
        "eval --split nope": ["eval", bern, *digits, "--split", "nope"],
        "eval --batch-size 0": ["eval", bern, *digits, "--batch-size", "0"],
        "eval wrong dataset shape": ["eval", bern, "--dataset", "binarized-mnist", "--data", d / "half.npz"],
        "features of bernoulli": ["features", bern, *digits, "--out", d / "f.npz"],
        "plot random file": ["plot", d / "random-1k.safetensors", "--out", png],
        "plot missing": ["plot", d / "nope.log.jsonl", "--out", png],
        "check unknown": ["check", "no-such-model"],
        "export to a file": ["export", bern, "--out", bern],
    }
    valid = ("sample --seed 2**70", "sample --nrow 10**9", "info --set ordering=random:1e400")
    for name, args in cases.items():
        cat.add(name, "arguments", args, protect=[bern], expect="ok" if name in valid else "error")
    log = d / "bad.log.jsonl"
    cat.step(lambda: log.write_text('{"epoch": 1}\nnot json\n'))
    cat.add("plot corrupt log", "arguments", ["plot", log, "--out", png])


def special_targets(cat: Catalogue) -> dict[str, Path]:
    """{kind: path} of output targets a command must refuse, made by steps of ``cat``; the
    device node (a /dev/null twin) only where the OS lets us make one."""
    d, regular = cat.d, cat.d / "keep.bin"
    targets = {"symlink": d / "t-link", "fifo": d / "t-fifo", "read-only": d / "t-ro", "device": d / "t-null"}

    def make() -> None:
        regular.write_bytes(b"keep")
        targets["symlink"].symlink_to(regular)
        os.mkfifo(targets["fifo"])
        targets["read-only"].write_bytes(b"keep")
        targets["read-only"].chmod(0o444)
        try:
            os.mknod(targets["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except OSError:
            pass  # its cases are skipped

    cat.step(make)
    return targets


def target_cases(cat: Catalogue) -> None:
    """Special files, a read-only folder and a locked checkpoint as output targets: refused, unchanged."""
    d, png, bern = cat.d, cat.d / "out.png", cat.d / "bernoulli.safetensors"
    for kind, path in special_targets(cat).items():
        more = {"protect": [path, d / "keep.bin"], "needs": path if kind == "device" else None}
        cat.add(f"sample --npz {kind}", "targets", ["sample", bern, "-n", "2", "--out", png, "--npz", path], **more)
        cat.add(f"sample --out {kind}", "targets", ["sample", bern, "-n", "2", "--out", path], **more)
        cat.add(f"train --out {kind}", "targets", ["train", "bernoulli", "--dataset", "digits", "--out", path], **more)
        cat.add(f"features --out {kind}", "targets",
                ["features", d / "nade.safetensors", "--dataset", "digits", "--out", path], **more)
        cat.add(f"plot --out {kind}", "targets", ["plot", d / "run.log.jsonl", "--out", path], **more)
        cat.add(f"export --out {kind}", "targets", ["export", bern, "--out", path], **more)
    ro_dir = d / "ro-dir"
    cat.step(ro_dir.mkdir)
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        cat.step(lambda: ro_dir.chmod(0o555))
        cat.add("train --out in a read-only folder", "targets",
                ["train", "bernoulli", "--dataset", "digits", "--out", ro_dir / "m.safetensors"])
    locked = d / "locked.safetensors"
    cat.step(lambda: shutil.copy(bern, locked))
    cat.add("train --out held by another run", "targets",
            ["train", "bernoulli", "--dataset", "digits", "--out", locked], protect=[locked], holder=str(locked))
    for i in range(3):
        cat.step(lambda i=i: (d / f".locked.safetensors.orphan{i}.tmp").write_bytes(b"half"))


def name_cases(cat: Catalogue) -> None:
    """File names that are not UTF-8: supported (ok) except as an export folder."""
    d, nade = cat.d, cat.d / "nade.safetensors"

    def odd(raw: bytes) -> Path:
        return d / os.fsdecode(raw)

    cat.add("train --out non-UTF-8 name", "names",
            ["train", "bernoulli", "--dataset", "digits", "--out", odd(b"m\xff\xfe.safetensors")], expect="ok")
    cat.step(lambda: shutil.copy(nade, odd(b"n\xff.safetensors")))
    cat.add("eval non-UTF-8 checkpoint", "names", ["eval", odd(b"n\xff.safetensors"), "--dataset", "digits"],
            expect="ok")
    cat.add("sample --out non-UTF-8 png", "names", ["sample", nade, "-n", "2", "--out", odd(b"s\xff.png")],
            expect="ok")
    cat.add("export --out non-UTF-8 folder", "names", ["export", d / "bernoulli.safetensors", "--out", odd(b"e\xff")])
    odd_run = odd(b"r\xff.safetensors")  # trained here, resumed by the case
    cat.step(lambda: densreg(*train_nade(odd_run), cwd=d))
    cat.add("train nade --resume non-UTF-8 name", "names", [*train_nade(odd_run), "--resume", "--epochs", "2"],
            expect="ok")
