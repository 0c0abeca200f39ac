"""densreg-runtime (the folder densreg-runtime/) installs on its own into a fresh virtual
environment without torch and scores an export folder (issue 13, item 9).

The wheel is built from a copy of the sources with this environment's setuptools, then installed
with pip into a new venv that has no packages at all; numpy and onnxruntime, already installed
here, are made visible to it through a .pth folder holding only those two (no network, ~10 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import densreg
from densreg.export import export_model

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("densreg-runtime", "densreg", "registry", "export")


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_versions_agree():
    runtime = tomllib.loads((ROOT / "densreg-runtime" / "pyproject.toml").read_text())["project"]
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert runtime["version"] == main["version"]
    assert sorted(d.split(">")[0] for d in runtime["dependencies"]) == ["numpy", "onnxruntime-gpu"]


def test_runtime_distribution_installs_without_torch_and_scores(tmp_path):
    model = densreg.create_model("markov", (1, 3, 4), 3, order=1, ordering="random:3")
    with torch.no_grad():
        model.log_probs.copy_(torch.randn(model.log_probs.shape, generator=torch.Generator().manual_seed(0)))
    export_model(model, tmp_path / "export")
    src = tmp_path / "src"
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheels"), str(src / "densreg-runtime")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("densreg_runtime-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    deps = tmp_path / "deps"  # numpy and onnxruntime only, from this environment
    deps.mkdir()
    here = Path(np.__file__).parents[1]
    for name in ("numpy", "numpy.libs", "onnxruntime"):
        if (here / name).exists():
            (deps / name).symlink_to(here / name)
    (site_packages(python) / "deps.pth").write_text(str(deps) + "\n")
    x = np.random.default_rng(1).integers(0, 3, (5, 1, 3, 4))
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import importlib.metadata as md, importlib.util, json, sys
        import numpy as np
        from densreg.export.runtime import ExportedModel
        m = ExportedModel({str(tmp_path / 'export')!r}, provider="cpu")
        print(json.dumps({{
            "log_prob": m.log_prob(np.load({str(tmp_path / 'x.npy')!r})).tolist(),
            "samples": m.sample(3, seed=2).tolist(),
            "absent": [n for n in ("torch", "densreg.app", "densreg.plugins", "onnx", "click", "safetensors")
                       if importlib.util.find_spec(n.split(".")[0]) is None
                       or (n.startswith("densreg.") and importlib.util.find_spec(n) is None)],
            "distributions": sorted(d.metadata["Name"] for d in md.distributions()),
            "requires": md.requires("densreg-runtime"),
            "version": md.version("densreg-runtime"), "densreg_version": __import__("densreg").__version__}}))
    """)
    proc = subprocess.run([str(python), "-I", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["absent"] == ["torch", "densreg.app", "densreg.plugins", "onnx", "click", "safetensors"]
    assert result["distributions"] == ["densreg-runtime"]
    assert sorted(r.split(">")[0] for r in result["requires"]) == ["numpy", "onnxruntime-gpu"]
    assert result["version"] == result["densreg_version"] == densreg.__version__
    with torch.no_grad():
        expected = model.log_prob(torch.from_numpy(x)).numpy()
        samples = model.sample(3, noise=torch.from_numpy(np.random.default_rng(2).random((3, 12)))).numpy()
    assert np.abs(np.array(result["log_prob"]) - expected).max() < 1e-4
    assert np.array_equal(np.array(result["samples"]), samples)
