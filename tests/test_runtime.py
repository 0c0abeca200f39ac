"""The onnxruntime runtime: no torch at run time, providers by what loads, the draw, IOBinding,
and clear errors for broken export folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import densreg

from densreg.export import RuntimeLoadError, export_model
from densreg.export import format as fmt
from densreg.export.manifest import file_digest
from densreg.registry.families import Categorical
from densreg.export.runtime import CPU, CUDA, ExportedModel, runtime_info, usable_providers
from densreg.registry import DataError, DensregError, __version__, categorical_from_uniform, create_model
from densreg.app.cli import cli

from export_edits import rebind
from blockers import SERVING_BOX, blocker


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A Markov model (order 2, snake, K=3, 2x3x4) with random tables, exported once."""
    model = create_model("markov", (2, 3, 4), 3, order=2, ordering="snake")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.log_probs.copy_(torch.randn(model.log_probs.shape, generator=gen))
    out = tmp_path_factory.mktemp("rt") / "markov"
    export_model(model, out)
    return model, out


BLOCKER = blocker(SERVING_BOX, "a deployment box has onnxruntime and numpy only")


def test_runtime_without_torch(export_dir, tmp_path):
    model, out = export_dir
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    x = np.random.default_rng(0).integers(0, 3, (5, 2, 3, 4))
    noise = np.random.default_rng(1).random((6, model.num_positions))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "noise.npy", noise)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        try:
            import torch
            sys.exit("torch imported")
        except ImportError:
            pass
        import densreg, densreg.export
        from densreg.export.runtime import ExportedModel
        from densreg.registry.errors import DensregError, RuntimeLoadError
        m = ExportedModel({str(out)!r})
        lp = m.log_prob(np.load({str(tmp_path / 'x.npy')!r}))
        s = m.sample(6, noise=np.load({str(tmp_path / 'noise.npy')!r}))
        try:
            ExportedModel({str(tmp_path)!r})
        except RuntimeLoadError as exc:
            err = [type(exc).__name__, isinstance(exc, DensregError), str(exc)]
        heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "onnx", "onnxscript", "click"))
        print(json.dumps({{"log_prob": lp.tolist(), "samples": s.tolist(), "provider": m.provider,
                          "heavy": heavy, "error": err}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["provider"] in (CPU, CUDA)
    assert result["error"][:2] == ["RuntimeLoadError", True] and "manifest.json is missing" in result["error"][2]
    with torch.no_grad():
        assert np.abs(np.array(result["log_prob"]) - model.log_prob(torch.from_numpy(x)).numpy()).max() < 1e-3
        expected = model.sample(6, noise=torch.from_numpy(noise)).numpy()
    assert np.array_equal(np.array(result["samples"]), expected)


def test_blocker_really_blocks_torch(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "blocked" in proc.stderr


# -- providers ----------------------------------------------------------------------
def test_providers_are_chosen_by_what_loads(export_dir):
    _, out = export_dir
    usable = usable_providers()
    assert CPU in usable and set(usable) <= {CPU, CUDA}
    info = runtime_info()
    assert info["usable_providers"] == usable and info["default_provider"] == usable[0]
    assert ExportedModel(out).provider == usable[0]  # auto: CUDA where it loads, else CPU
    assert ExportedModel(out, provider="cpu").provider == CPU
    if CUDA in usable:
        model = ExportedModel(out, provider="cuda")
        assert model.provider == CUDA and model.io_binding
    else:  # listed (onnxruntime-gpu) or not, it does not load here
        with pytest.raises(RuntimeLoadError, match="CUDA provider does not load"):
            ExportedModel(out, provider="cuda")
    with pytest.raises(RuntimeLoadError, match="unknown provider"):
        ExportedModel(out, provider="tpu")


def test_runtime_command():
    result = CliRunner().invoke(cli, ["runtime", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["usable_providers"] == usable_providers() and data["onnxruntime"]
    text = CliRunner().invoke(cli, ["runtime"]).output
    assert f"an export runs on:   {usable_providers()[0]}" in text and "usable providers:" in text


# -- the draw and the sampling loops --------------------------------------------------
@pytest.mark.parametrize("k", [2, 5])
def test_draws_agree_with_categorical_from_uniform(k):
    import onnxruntime as ort

    rng = np.random.default_rng(k)
    logits = rng.normal(size=(4000, k)).astype(np.float32) * 3
    logits[:10] = 0.0  # equal probabilities: CDF steps at exact fractions
    noise = rng.random(4000)
    noise[:10] = [0.0, 0.2, 0.4, 0.6, 0.8, 0.999999, 0.5, 0.3, 0.1, 0.9]
    expected = categorical_from_uniform(torch.from_numpy(logits), torch.from_numpy(noise)).numpy()
    session = ort.InferenceSession(Categorical(3).onnx_draw(18, 10).SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (Categorical(logits.shape[-1]).draw_numpy((logits,), noise), session.run(None, {"logits": logits, "noise": noise})[0]):
        assert got.dtype == np.int64
        cdf = np.cumsum(torch.softmax(torch.from_numpy(logits).double(), -1).numpy(), -1)[:, :-1]
        differ = got != expected
        assert differ.sum() <= 2 and (np.abs(cdf[differ] - noise[differ, None]).min(-1) < 1e-12).all()


def test_iobinding_loop_equals_host_loop(export_dir):
    model, out = export_dir
    host = ExportedModel(out, provider="cpu")
    bound = ExportedModel(out, provider="cpu", io_binding=True)
    assert not host.io_binding and bound.io_binding
    for n in (1, 7, 64):
        noise = np.random.default_rng(n).random((n, model.num_positions))
        assert np.array_equal(bound.sample(n, noise=noise), host.sample(n, noise=noise))
    assert np.array_equal(host.sample(3, seed=5), host.sample(3, seed=5))
    assert not np.array_equal(host.sample(8, seed=5), host.sample(8, seed=6))


def test_step_and_state_api(export_dir):
    model, out = export_dir
    m = ExportedModel(out, provider="cpu")
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 3, (4, 2, 3, 4)))
    seq, expected = model.to_sequence(x).numpy(), model.conditional_logits(x).detach().numpy()
    state, value = m.initial_state(4), np.zeros(4, dtype=np.int64)
    assert [a.shape for a in state] == [tuple(t.shape) for t in model.initial_state(4)]
    for d in range(m.num_positions):
        logits, state = m.step(value, d, state)
        assert np.abs(logits - expected[:, d]).max() < 1e-5
        value = seq[:, d]
    assert m.info.model == "markov" and m.info.config == model.config() and m.info.parity["max_abs_diff"] == 0.0


def test_input_validation(export_dir):
    _, out = export_dir
    m = ExportedModel(out, provider="cpu")
    with pytest.raises(DataError, match=r"shape \(B, 2, 3, 4\)"):
        m.log_prob(np.zeros((2, 1, 3, 4)))
    with pytest.raises(DataError, match="0..2"):
        m.log_prob(np.full((1, 2, 3, 4), 3))
    with pytest.raises(DataError, match="integers"):
        m.conditional_logits(np.full((1, 2, 3, 4), 0.5))
    assert m.log_prob(np.ones((1, 2, 3, 4), dtype=np.float32)).shape == (1,)
    with pytest.raises(DataError, match="noise must have shape"):
        m.sample(2, noise=np.zeros((3, 24)))


# -- broken folders ---------------------------------------------------------------------
def copy_export(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder, **changes):
    manifest = json.loads((folder / fmt.MANIFEST).read_text())
    for key, value in changes.items():
        target, *path = key.split("__")
        node = manifest
        for part in [target, *path][:-1]:
            node = node[part]
        node[[target, *path][-1]] = value
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest))


def rehash(folder):
    """Make the manifest's digests match the files again (a hand-edited or hostile folder)."""
    manifest = json.loads((folder / fmt.MANIFEST).read_text())
    manifest["files"] = {name: file_digest((folder / name).read_bytes()) for name in manifest["files"]}
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def other_export(tmp_path_factory):
    """The same config as export_dir with other weights."""
    model = create_model("markov", (2, 3, 4), 3, order=2, ordering="snake")
    with torch.no_grad():
        model.log_probs.copy_(torch.randn(model.log_probs.shape, generator=torch.Generator().manual_seed(1)))
    out = tmp_path_factory.mktemp("rt") / "markov-other"
    export_model(model, out)
    return out


def test_broken_folders_give_clear_errors(export_dir, other_export, tmp_path):
    _, out = export_dir
    cases = {}
    d = copy_export(out, tmp_path / "corrupt")
    (d / fmt.STEP).write_bytes(os.urandom(2000))
    cases[d] = "step.onnx does not match the manifest (size or sha256 differs)"
    d = copy_export(out, tmp_path / "corrupt-rehashed")
    (d / fmt.STEP).write_bytes(os.urandom(2000))
    rehash(d)
    cases[d] = "step.onnx is not a loadable ONNX model"
    d = copy_export(out, tmp_path / "truncated")
    data = (d / fmt.CONDITIONALS).read_bytes()
    (d / fmt.CONDITIONALS).write_bytes(data[: len(data) // 2])
    cases[d] = "conditionals.onnx does not match the manifest"
    d = copy_export(out, tmp_path / "missing")
    (d / fmt.DRAW).unlink()
    cases[d] = "not a complete densreg export: draw.onnx is missing"
    d = copy_export(out, tmp_path / "no-manifest")
    (d / fmt.MANIFEST).unlink()
    cases[d] = "not a complete densreg export: manifest.json is missing"
    d = copy_export(out, tmp_path / "major")
    future = f"{int(fmt.major(__version__)) + 1}.0.0"
    edit_manifest(d, model__densreg_version=future)
    cases[d] = f"was exported by densreg {future}, another major version"
    d = copy_export(out, tmp_path / "foreign")
    edit_manifest(d, format="something-else")
    cases[d] = "is an export of format 'something-else', which this densreg does not read; it reads densreg-onnx/3"
    d = copy_export(out, tmp_path / "mixed")  # same config, other weights: two exports' files in one folder
    shutil.copy(other_export / fmt.STEP, d / fmt.STEP)
    cases[d] = "step.onnx does not match the manifest (size or sha256 differs): the folder mixes files"
    d = copy_export(out, tmp_path / "mixed-rehashed")
    shutil.copy(other_export / fmt.STEP, d / fmt.STEP)
    rehash(d)
    cases[d] = "the folder mixes exports"
    d = copy_export(out, tmp_path / "symlink")
    (d / fmt.STEP).unlink()
    (d / fmt.STEP).symlink_to(other_export / fmt.STEP)
    cases[d] = "step.onnx is not a regular file (a symlink"
    d = copy_export(out, tmp_path / "fifo")
    (d / fmt.GOLDEN).unlink()
    os.mkfifo(d / fmt.GOLDEN)
    cases[d] = "golden.json is not a regular file"
    d = copy_export(out, tmp_path / "escape")
    edit_manifest(d, files__x={"sha256": "0", "bytes": 1})
    manifest = json.loads((d / fmt.MANIFEST).read_text())
    manifest["files"]["../x"] = manifest["files"].pop("x")
    (d / fmt.MANIFEST).write_text(json.dumps(manifest))
    cases[d] = "lists '../x', which is not a file of the folder itself"
    d = copy_export(out, tmp_path / "not-json")
    (d / fmt.MANIFEST).write_text("{")
    cases[d] = "manifest.json is not a valid densreg manifest"
    cases[tmp_path / "nowhere"] = "no such export folder"
    for folder, message in cases.items():
        with pytest.raises(RuntimeLoadError) as err:
            ExportedModel(folder, provider="cpu")
        text = str(err.value)
        assert message in text and isinstance(err.value, DensregError) and "\n" not in text, (folder.name, text)
    minor = copy_export(out, tmp_path / "minor")  # same major version: loads
    edit_manifest(minor, model__densreg_version=f"{fmt.major(__version__)}.99.0")
    with pytest.raises(RuntimeLoadError, match="manifest.json was edited"):  # the graphs name another manifest
        ExportedModel(minor, provider="cpu")
    rebind(minor)  # as that version's exporter would have written it
    ExportedModel(minor, provider="cpu")
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "truncated"), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: ") and "does not match the manifest" in result.output


def point_at_external(path, location):
    """Rewrite the largest initializer of the ONNX file ``path`` to read its bytes from ``location``."""
    proto = onnx.load(path, load_external_data=False)
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    onnx.save(proto, path)


@pytest.mark.parametrize("location", ["../../../../../../etc/passwd", "/etc/passwd", "outside.bin", "sub/x.bin"])
def test_external_data_outside_the_folder_is_refused(export_dir, tmp_path, location):
    import onnxruntime as ort

    _, out = export_dir
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 4096)
    d = copy_export(out, tmp_path / "hostile")
    if location == "outside.bin":  # a symlink in the folder to a file outside it
        (d / location).symlink_to(secret)
    if location == "sub/x.bin":
        (d / "sub").mkdir()
        (d / "sub" / "x.bin").write_bytes(b"\x01" * 4096)
    point_at_external(d / fmt.CONDITIONALS, location)
    rehash(d)
    with pytest.raises(RuntimeLoadError, match=f"refers to external data '{location}'.*refusing to load it"):
        ExportedModel(d, provider="cpu")
    if location != "sub/x.bin":  # onnxruntime itself (>= the floor in pyproject) refuses them too
        with pytest.raises(Exception, match="(?i)external data|escapes|absolute"):
            ort.InferenceSession(str(d / fmt.CONDITIONALS), providers=[CPU])


def test_external_locations_are_found_at_any_depth(export_dir, tmp_path):
    from densreg.export.protoscan import external_locations

    _, out = export_dir
    d = copy_export(out, tmp_path / "deep")
    point_at_external(d / fmt.CONDITIONALS, "a.bin")
    assert set(external_locations((d / fmt.CONDITIONALS).read_bytes())) - {fmt.WEIGHTS} == {"a.bin"}
    proto = onnx.load(d / fmt.SAMPLE, load_external_data=False)  # a Loop body holds the step's nodes
    loop = next(n for n in proto.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    body.node.append(onnx.helper.make_node("Constant", [], ["c"], value=onnx.TensorProto(
        name="c", data_type=onnx.TensorProto.FLOAT, dims=[1], data_location=onnx.TensorProto.EXTERNAL,
        external_data=[onnx.StringStringEntryProto(key="location", value="../deep.bin")])))
    assert set(external_locations(proto.SerializeToString())) - {fmt.WEIGHTS} == {"../deep.bin"}
    with pytest.raises(ValueError):
        external_locations(b"\x3a\xff\xff")  # a length past the end


def test_format_1_folders_load_unverified_with_what_they_have(tmp_path):
    """tests/data/format-0.1/nade-onnx (no manifest, no sample.onnx, no pixel_log_prob output) still
    scores; per-value log-probs come from its logits; engine='graph' says to re-export."""
    from densreg.registry import load_checkpoint
    from densreg.registry.conformance import all_images

    folder = os.path.join(os.path.dirname(__file__), "data", "format-0.1")
    model, _ = load_checkpoint(os.path.join(folder, "nade.safetensors"))
    exported = ExportedModel(os.path.join(folder, "nade-onnx"), provider="cpu")
    assert exported.legacy and exported.manifest["format"] == "densreg-onnx/1"
    x = all_images((1, 3, 3), 2)
    with torch.no_grad():
        expected = model.pixel_log_probs(x).numpy()
    np.testing.assert_allclose(exported.pixel_log_probs(x.numpy()), expected, atol=1e-5)
    noise = np.random.default_rng(0).random((4, 9))
    with torch.no_grad():
        assert np.array_equal(exported.sample(4, noise=noise), model.sample(4, noise=torch.from_numpy(noise)).numpy())
    with pytest.raises(RuntimeLoadError, match="format-1 export without sample.onnx; re-export it"):
        exported.sample(4, noise=noise, engine="graph")
    mixed = copy_export(os.path.join(folder, "nade-onnx"), tmp_path / "mixed")
    set_metadata(mixed / fmt.STEP, config=json.dumps({"other": 1}))
    with pytest.raises(RuntimeLoadError, match="come from different exports"):
        ExportedModel(mixed, provider="cpu")


def set_metadata(path, **changes):
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(changes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, path)


TORCH_BLOCKER = blocker(("torch",), "torch")


def markov_export_without_torch(tmp_path, shape, k, order, seed):
    """A Markov model with random tables, its export in tmp_path/export, and a torch blocker in tmp_path."""
    model = create_model("markov", shape, k, order=order, ordering="snake")
    with torch.no_grad():
        model.log_probs.copy_(torch.randn(model.log_probs.shape, generator=torch.Generator().manual_seed(seed)))
    out = tmp_path / "export"
    export_model(model, out)
    (tmp_path / "sitecustomize.py").write_text(TORCH_BLOCKER)
    return model, out


def test_cli_sample_and_runtime_on_an_export_never_import_torch(tmp_path):
    model, out = markov_export_without_torch(tmp_path, (1, 3, 4), 3, order=1, seed=2)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "densreg", *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, env=env, timeout=120)
    proc = run("sample", out, "-n", "5", "--seed", "3", "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert proc.returncode == 0, proc.stderr
    noise = np.random.default_rng(3).random((5, model.num_positions))
    with torch.no_grad():
        assert np.array_equal(np.load(tmp_path / "s.npz")["samples"], model.sample(5, noise=torch.from_numpy(noise)))
    proc = run("runtime", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["usable_providers"] == usable_providers()
    proc = run("sample", tmp_path / "s.npz", "-n", "2", "--out", tmp_path / "t.png")  # a checkpoint needs torch
    assert proc.returncode == 1 and "blocked" in proc.stderr


def test_cli_eval_on_an_export_never_imports_torch(tmp_path):
    """`densreg eval EXPORT_DIR --dataset NAME`: the built-in dataset is read with numpy and scored in
    onnxruntime; the NLL is the torch model's on the same split, and bad input is one line, exit 1."""
    model, out = markov_export_without_torch(tmp_path, (1, 8, 8), 2, order=2, seed=4)
    # not strict: an unknown name is looked up in every plugin, whose load errors would be listed
    # beside it instead of ending the command; with torch blocked none fails, as models register
    # by import path
    env = {key: value for key, value in os.environ.items() if key != "DENSREG_STRICT_PLUGINS"}
    env["PYTHONPATH"] = str(tmp_path)
    run = lambda *args: subprocess.run([sys.executable, "-m", "densreg", "eval", out, *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, env=env, timeout=120)
    proc = run("--dataset", "digits", "--split", "valid", "--json", "--batch-size", "7")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    images = densreg.load_split("digits", "valid")
    with torch.no_grad():
        expected = -model.log_prob(images).double().mean().item()
    assert result["images"] == len(images) == 300
    assert result["nll_nats"] == pytest.approx(expected, abs=1e-4)
    assert result["bits_per_dim"] == pytest.approx(expected / (64 * np.log(2)), abs=1e-6)
    for args, message in [(("--dataset", "digits", "--split", "nope"), "dataset 'digits' has no split 'nope'"),
                          (("--dataset", "binarized-mnist"), "but dataset 'binarized-mnist' has shape (1, 28, 28)"),
                          (("--dataset", "no-such-set"), "unknown dataset 'no-such-set'")]:
        proc = run(*args)
        assert proc.returncode == 1 and "unexpected" not in proc.stderr, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 2, proc.stderr  # provider + error
    assert "plugins that failed to load" not in proc.stderr  # every plugin loads (and lists) without torch


def test_cli_score_features_and_complete_on_an_export_never_import_torch(tmp_path):
    """`densreg score|features|complete EXPORT_DIR --dataset NAME` run in onnxruntime with torch unimportable:
    the scores are the torch model's NLL, the features the export's, and bad input is one line, exit 1."""
    model = create_model("nade", (1, 8, 8), 2, hidden=8)
    out = tmp_path / "export"
    export_model(model, out)
    (tmp_path / "sitecustomize.py").write_text(TORCH_BLOCKER)
    env = {key: value for key, value in os.environ.items() if key != "DENSREG_STRICT_PLUGINS"}
    env["PYTHONPATH"] = str(tmp_path)
    run = lambda *args: subprocess.run([sys.executable, "-m", "densreg", *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, env=env, timeout=120)
    proc = run("score", out, "--dataset", "digits", "--split", "valid", "--json", "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    images = densreg.load_split("digits", "valid")
    with torch.no_grad():
        nll = -model.log_prob(images).double().numpy()
    assert report["images"] == 300 and report["nll_nats"]["mean"] == pytest.approx(nll.mean(), abs=1e-4)
    proc = run("score", out, "--dataset", "digits", "--method", "typicality", "--reference-dataset", "digits",
               "--reference-split", "train", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["method"] == "typicality", proc.stderr
    proc = run("features", out, "--dataset", "digits", "--split", "valid", "--out", tmp_path / "f.npz")
    assert proc.returncode == 0, proc.stderr
    saved = np.load(tmp_path / "f.npz")
    assert np.allclose(saved["features"], ExportedModel(out).features(images.numpy()), atol=1e-6)
    assert len(saved["labels"]) == 300
    proc = run("complete", out, "--dataset", "digits", "--keep-rows", "4", "--limit", "2", "--out", tmp_path / "c.png")
    assert proc.returncode == 0 and (tmp_path / "c.png").stat().st_size > 0, proc.stderr
    for command in ("score", "features", "complete"):
        keep = ("--keep", "1") if command == "complete" else ()
        proc = run(command, out, "--dataset", "binarized-mnist", *keep, "--out", tmp_path / "x")
        assert proc.returncode == 1 and "blocked" not in proc.stderr, proc.stderr
        assert "but dataset 'binarized-mnist' has shape (1, 28, 28)" in proc.stderr


def test_threads_come_from_the_argument_then_omp_num_threads_then_the_default(monkeypatch):
    """Item 8 of issue 13: --threads / threads=, else $OMP_NUM_THREADS, else the measured default
    (1 for the sampling graphs, 2 for scoring, at most the cores)."""
    from densreg.export import runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count() or 1
    assert runtime.resolve_threads(None, runtime.DEFAULT_SAMPLING_THREADS) == 1
    assert runtime.resolve_threads(None, runtime.DEFAULT_SCORING_THREADS) == min(2, cores)
    assert runtime.resolve_threads(3, 1) == 3
    for env, expected in (("5", 5), ("0", 1), ("abc", 1), ("", 1)):
        monkeypatch.setenv("OMP_NUM_THREADS", env)
        assert runtime.resolve_threads(None, 1) == expected
        assert runtime.resolve_threads(4, 1) == 4  # the argument wins
    with pytest.raises(RuntimeLoadError, match="threads must be at least 1"):
        runtime.resolve_threads(0, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.session_options().intra_op_num_threads == 3
    assert runtime.session_options(2).intra_op_num_threads == 2


def test_builtin_command_table_matches_the_modules():
    from densreg.app import cli as cli_package

    cli_package.load_builtins()
    builtins = {name for name, command in cli_package.cli.commands.items()
                if command.callback.__module__.startswith("densreg.app.cli.")}
    assert builtins == set(cli_package.COMMAND_MODULES)
    for name, module in cli_package.COMMAND_MODULES.items():
        assert cli_package.cli.commands[name].callback.__module__ == f"densreg.app.cli.{module}"


def test_step_refuses_out_of_range_values_positions_and_bad_state(export_dir):
    model, out = export_dir  # K = 3, D = 24
    m = ExportedModel(out, provider="cpu")
    state, value = m.initial_state(2), np.zeros(2, dtype=np.int64)
    cases = [((np.array([0, 3]), 0, state), "step value: image values must lie in 0..2; got values from 0 to 3"),
             ((np.array([-1, 0]), 0, state), "step value: image values must lie in 0..2"),
             ((value, 24, state), "step position must be an integer 0..23, got 24"),
             ((value, -1, state), "step position must be an integer 0..23"),
             ((value, 10000, state), "got 10000"),
             ((value.astype(np.float32), 0, state), "1-D integer array"),
             ((value, 0, state[:-1] if state else [np.zeros(1)]), "state"),
             ((value, 0, [a[:1] for a in state] if state else [np.zeros(1)]), "state")]
    for args, message in cases:
        with pytest.raises(DataError, match=re.escape(message)):
            m.step(*args)
    logits, _ = m.step(value, 0, state)  # valid input still runs
    assert logits.shape == (2, 3)
