"""ONNX export: parity with torch for every registered model, same samples from the same noise,
clear failures, atomic folders, and the export/eval/sample commands on an export folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from densreg.export import ExportError, export_model
from densreg.export import format as fmt
from densreg.export import readme
from densreg.export.manifest import binding_digest as manifest_binding
from densreg.export.runtime import ExportedModel
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)
from densreg.registry import (DataError, DensityModel, DensregError, create_model, list_models, load_checkpoint,
                              save_checkpoint)
from densreg.app.cli import cli
from densreg.registry.protocol import at_position
from densreg.plugins.baselines import Bernoulli, Markov

LOGITS_ATOL, LOG_PROB_ATOL, TIE = 1e-4, 1e-3, 1e-6
# Small configs for the neural models, applied only to the models that are installed;
# any other registered model (a third-party plugin) is tried with its defaults.
SMALL_CONFIG = {"nade": {"hidden": 16}, "pixelrnn": {"hidden": 4, "layers": 1},
                "row-lstm": {"hidden": 4, "layers": 1}, "diagonal-bilstm": {"hidden": 4, "layers": 1}}
CASES = {"small": ((1, 4, 5), 2), "colour": ((3, 3, 3), 3), "mnist": ((1, 28, 28), 2)}
# The default run exports every model at the small shape, and markov (cheap) at the others too;
# the rest is slow. diagonal-bilstm's small export alone takes ~30 s here (torch.export traces
# the torch.cond of its step with dynamo), so it is slow too. `-m slow` runs them all.
CHEAP = {"markov"}
SLOW_EVEN_SMALL = {"diagonal-bilstm"}
MODELS = list_models()

from blockers import blocker



def perturb(model: DensityModel, seed: int = 0) -> DensityModel:  # not the kit's randomize: keeps the init scale
    """Perturb parameters; refill float tables (buffers that are not 0/1 masks) with noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        for b in model.buffers():
            if b.is_floating_point() and not ((b == 0) | (b == 1)).all():
                b.copy_(torch.randn(b.shape, generator=gen))
    return model.eval()


def build(name: str, case: str) -> DensityModel:
    shape, k = CASES[case]
    try:
        model = create_model(name, shape, k, **SMALL_CONFIG.get(name, {}))
    except DensregError as exc:  # e.g. a model for K=2 or one channel only
        pytest.skip(f"{name} does not build for shape {shape}, K={k}: {exc}")
    return perturb(model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(name, case) -> (torch model, export report, ExportedModel); each exported once per module."""
    cache = {}

    def get(name, case):
        if (name, case) not in cache:
            model = build(name, case)
            out = tmp_path_factory.mktemp("exports") / f"{name}-{case}"
            report = export_model(model, out, name=name)
            cache[name, case] = model, report, ExportedModel(out, provider="cpu")
        return cache[name, case]
    return get


def params(cases):
    out = []
    for name in MODELS:
        for case in cases:
            slow = (case != "small" and name not in CHEAP) or name in SLOW_EVEN_SMALL
            out.append(pytest.param(name, case, id=f"{name}-{case}", marks=[pytest.mark.slow] if slow else []))
    return out


def random_images(model, batch, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_categories, (batch, *model.event_shape), generator=gen)


@pytest.mark.parametrize("name,case", params(CASES))
def test_export_parity_and_manifest(exported, name, case):
    model, report, ort_model = exported(name, case)
    assert report["max_abs_diff"] <= LOGITS_ATOL and report["log_prob_max_abs_diff"] <= LOG_PROB_ATOL
    manifest = json.loads((ort_model.path / fmt.MANIFEST).read_text())
    has_features = type(model).features is not DensityModel.features
    files = set(fmt.FILES) - (set() if has_features else {fmt.FEATURES})
    assert sorted(os.listdir(report["dir"])) == sorted(files)
    assert manifest["model"]["name"] == name and manifest["model"]["config"] == model.config()
    assert manifest["model"]["qualified_name"].endswith(":" + name) and manifest["model"]["distribution"]
    assert manifest["event_shape"] == list(model.event_shape) and manifest["num_categories"] == model.num_categories
    assert manifest["ordering"] == model.ordering and manifest["order"] == model.order.tolist()
    assert manifest["value_range"] == [0, model.num_categories - 1] and manifest["versions"]["opset"] >= 18
    test_data = {f"{fmt.TEST_DATA}/input_0.pb"} | {f"{fmt.TEST_DATA}/output_{i}.pb"
                                                    for i in range(len(model.family.param_names) + 2)}
    assert sorted(manifest["files"]) == sorted(files - {fmt.MANIFEST, fmt.TEST_DATA} | test_data)
    # the model's state may carry the batch on any one axis; step.onnx's carries it on axis 0 (dynamic batching)
    for spec, one, two in zip(manifest["state"], model.initial_state(1), model.initial_state(2), strict=True):
        moved = [i for i, (a, b) in enumerate(zip(one.shape, two.shape)) if a != b]
        assert spec["batch_axis"] == (0 if moved else None)
        graph_shape = list(two.movedim(moved[0], 0).shape) if moved else list(two.shape)
        assert spec["shape"] == ["batch" if moved and i == 0 else n for i, n in enumerate(graph_shape)]
        assert spec["dtype"] == str(two.dtype)[6:] and spec["output"] == "new_" + spec["name"]
    step_position = [i for i in manifest["graphs"][fmt.STEP]["inputs"] if i["name"] == "position"]
    assert step_position == [] or step_position[0]["shape"] == ["B"]
    for graph in fmt.GRAPHS + ((fmt.FEATURES,) if has_features else ()):
        proto = onnx.load(ort_model.path / graph)  # loads weights.bin too
        onnx.checker.check_model(proto, full_check=True)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
        assert {p.key: p.value for p in proto.metadata_props} == {
            "format": fmt.FORMAT, "export_id": manifest["export_id"], "graph": graph.removesuffix(".onnx"),
            "manifest_sha256": manifest_binding(manifest)}
        described = manifest["graphs"][graph]
        assert [i.name for i in proto.graph.input] == [i["name"] for i in described["inputs"]
                                                       if i["name"] in {j.name for j in proto.graph.input}]
        assert [o.name for o in proto.graph.output] == [o["name"] for o in described["outputs"]]
    for batch in (1, 7, 64):  # other batch sizes than the one traced with (3)
        x = random_images(model, batch, seed=batch)
        with torch.no_grad():
            logits, log_prob = model.conditional_logits(x).numpy(), model.log_prob(x).numpy()
            pixel = model.pixel_log_probs(x).numpy()
        assert np.abs(ort_model.conditional_logits(x.numpy()) - logits).max() <= LOGITS_ATOL
        assert np.abs(ort_model.log_prob(x.numpy()) - log_prob).max() <= LOG_PROB_ATOL
        ort_pixel = ort_model.pixel_log_probs(x.numpy())
        assert ort_pixel.shape == (batch, *model.event_shape) and np.abs(ort_pixel - pixel).max() <= LOG_PROB_ATOL
        if has_features:
            with torch.no_grad():
                ours = model.features(x).float().numpy()
            theirs = ort_model.features(x.numpy(), batch_size=5)  # several batches of features.onnx
            assert theirs.shape == ours.shape == (batch, manifest["features"]["size"])
            assert np.abs(theirs - ours).max() <= LOGITS_ATOL * max(1.0, np.abs(ours).max())
    if has_features:  # what they are: the model's own documentation, shape (B, F)
        entry = manifest["features"]
        assert entry["graph"] == fmt.FEATURES and entry["shape"] == ["B", entry["size"]]
        assert entry["meaning"] == " ".join(type(model).features.__doc__.split())
        assert manifest["graphs"][fmt.FEATURES]["outputs"][0]["shape"] == ["B", entry["size"]]
        assert 0 <= report["features_max_rel_diff"] <= LOGITS_ATOL and ort_model.features_meaning == entry["meaning"]
    else:  # a clear error, from the manifest's reason
        assert manifest["features"]["graph"] is None and fmt.FEATURES not in manifest["graphs"]
        with pytest.raises(DensregError, match="has no features graph .*has no learned features"):
            ort_model.features(random_images(model, 2).numpy())


NO_TORCH_NO_DENSREG = blocker(("torch", "densreg", "onnx", "onnxscript"))


@pytest.mark.parametrize("name,case", params(["small"]))
def test_readme_snippet_reproduces_the_golden_vectors(exported, name, case, tmp_path):
    """The generated README's client, run from the folder with torch and densreg unimportable."""
    model, report, _ = exported(name, case)
    folder = report["dir"]
    snippet = readme.snippet_of(open(os.path.join(folder, fmt.README)).read())
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH_NO_DENSREG)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("ok "))
    golden = json.load(open(os.path.join(folder, fmt.GOLDEN)))
    images = torch.tensor(golden["images"])
    with torch.no_grad():  # the golden vectors are the torch model's own values
        assert np.abs(np.array(printed) - model.log_prob(images).numpy()).max() <= LOG_PROB_ATOL
        noise = torch.tensor(golden["noise"], dtype=torch.float64)
        assert golden["noise"] == np.random.default_rng(golden["seed"]).random(noise.shape).tolist()
        assert np.array_equal(model.sample(len(noise), noise=noise).numpy(), np.array(golden["samples"]))


@pytest.mark.parametrize("name,case", params(["small"]))
def test_graphs_are_lean_and_convertible(exported, name, case, tmp_path):
    """No debug metadata or build paths, weights stored once, and quantize_dynamic and onnxruntime's
    float16 converter run on every graph (the float16 graph loads)."""
    from onnxruntime.quantization import quantize_dynamic
    from densreg.export.tracing import to_float16 as _to_float16

    _, report, _ = exported(name, case)
    folder = report["dir"]
    blobs = []
    graphs = [g for g in fmt.GRAPHS + (fmt.FEATURES,) if os.path.exists(os.path.join(folder, g))]
    for graph in graphs:
        path = os.path.join(folder, graph)
        raw = open(path, "rb").read()
        assert b"/work/" not in raw and b"site-packages" not in raw and b"stack_trace" not in raw
        proto = onnx.load(path, load_external_data=False)
        assert not proto.graph.value_info and all(not n.metadata_props and not n.doc_string for n in proto.graph.node)
        blobs += [t.raw_data for t in proto.graph.initializer if len(t.raw_data) >= 1024]
        quantize_dynamic(path, tmp_path / f"q-{graph}")  # (pixelrnn's int8 LSTM crashes onnxruntime 1.31 on load)
        half = _to_float16(onnx.load(path))  # onnxruntime's converter, recurrent ops kept in float32
        ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    assert blobs == []  # every large tensor is in weights.bin, once
    weights = open(os.path.join(folder, fmt.WEIGHTS), "rb").read()
    stored = set()
    for graph in graphs:
        for t in onnx.load(os.path.join(folder, graph), load_external_data=False).graph.initializer:
            entry = {e.key: e.value for e in t.external_data}
            if entry:
                assert entry["location"] == fmt.WEIGHTS
                stored.add((int(entry["offset"]), int(entry["length"])))
    assert sum(length for _, length in stored) <= len(weights) < sum(length for _, length in stored) + 64 * len(stored) + 1
    chunks = [weights[o:o + n] for o, n in stored]
    assert len(set(chunks)) == len(chunks)  # no tensor written twice


def assert_same_samples(model, ort_model, n, seed=0):
    """Same noise -> same images; a mismatch only where the conditional's CDF is within TIE of the noise."""
    noise = np.random.default_rng(seed).random((n, model.num_positions))
    ours = model.sample(n, noise=torch.from_numpy(noise)).numpy()
    theirs = ort_model.sample(n, noise=noise)
    assert theirs.shape == ours.shape == (n, *model.event_shape) and theirs.dtype == np.int64
    order = model.order.numpy()
    for i in np.nonzero((ours != theirs).reshape(n, -1).any(1))[0]:
        seq_ours, seq_theirs = ours[i].reshape(-1)[order], theirs[i].reshape(-1)[order]
        first = int(np.argmax(seq_ours != seq_theirs))
        state, value = model.initial_state(1), torch.zeros(1, dtype=torch.int64)
        with torch.no_grad():
            for d in range(first + 1):
                logits, state = model.step(value, d, state)
                value = torch.tensor([seq_ours[d]])
        cdf = torch.cumsum(torch.softmax(logits[0].double(), -1), -1)[:-1].numpy()
        gap = np.abs(cdf - noise[i, first]).min()
        assert gap < TIE, f"image {i} differs at position {first}, where the CDF is {gap:.2g} from the noise"


@pytest.mark.parametrize("name,case", params(["small", "mnist"]))
def test_same_noise_same_samples(exported, name, case):
    model, _, ort_model = exported(name, case)
    for n in ((1, 7, 64) if case == "small" else (7,)):
        assert_same_samples(model, ort_model, n, seed=n)
        noise = np.random.default_rng(n).random((n, model.num_positions))  # sample.onnx: the same images
        assert np.array_equal(ort_model.sample(n, noise=noise, engine="graph"), ort_model.sample(n, noise=noise))


def test_sampling_through_iobinding_matches(exported):
    model, _, ort_model = exported("markov", "colour")
    noise = np.random.default_rng(5).random((7, model.num_positions))
    host = ort_model.sample(7, noise=noise)
    bound = ExportedModel(ort_model.path, provider="cpu", io_binding=True)
    assert bound.io_binding and np.array_equal(bound.sample(7, noise=noise), host)


# -- the protocol's export-friendly pieces ------------------------------------------
class RecomputingMarkov(Markov):
    """A model with no cached step: the default DensityModel.step (recompute_step) is exported."""

    registry_name = "recomputing-markov"
    step = DensityModel.step
    initial_state = DensityModel.initial_state


def test_default_recompute_step_exports_and_matches(tmp_path):
    model = perturb(RecomputingMarkov((1, 3, 4), 3, ordering="snake"))
    report = export_model(model, tmp_path / "e")
    assert report["max_abs_diff"] <= LOGITS_ATOL
    x = random_images(model, 4)
    seq, state, value = model.to_sequence(x), model.initial_state(4), torch.zeros(4, dtype=torch.int64)
    for d in range(model.num_positions):  # int and tensor positions give the same as before (teacher forcing)
        by_int, _ = model.step(value, d, state)
        by_tensor, state = model.step(value, torch.tensor(d), state)
        assert torch.equal(by_int, by_tensor)
        assert torch.allclose(by_int, model.conditional_logits(x)[:, d], atol=1e-6)
        value = seq[:, d]
    assert_same_samples(model, ExportedModel(tmp_path / "e", provider="cpu"), 7)


def test_at_position_takes_ints_and_tensors():
    table = torch.arange(12).reshape(4, 3)
    assert torch.equal(at_position(table, 2), table[2]) and torch.equal(at_position(table, torch.tensor(2)), table[2])


def test_validation_still_runs_outside_tracing():
    model = create_model("markov", (1, 2, 2), 2)
    with pytest.raises(DataError, match="0..1"):
        model.log_prob(torch.full((1, 1, 2, 2), 2))


# -- failures are clear and leave nothing behind ---------------------------------------
class IntPositionMarkov(Markov):
    registry_name = "int-position"

    def step(self, value, position, state):
        (ctx,) = state
        ctx = value + self.num_categories * (ctx % (self.num_contexts // self.num_categories))
        return self.log_probs[int(position)][ctx], (ctx,)


class TraceDependentMarkov(Markov):
    registry_name = "trace-dependent"

    def conditional_logits(self, x):
        logits = super().conditional_logits(x)
        return logits + 1.0 if torch.compiler.is_compiling() else logits


class OffsetMarkov(Markov):
    """Exports logits shifted by ``offset`` (all K alike: log_prob is unchanged)."""

    registry_name = "offset"
    offset = 0.0

    def conditional_logits(self, x):
        logits = super().conditional_logits(x)
        return logits + self.offset if torch.compiler.is_compiling() else logits


class FlippedValuesBernoulli(Bernoulli):
    """Exports the same logits, but scores flipped values: only log_prob differs."""

    registry_name = "flipped-values"

    def to_sequence(self, x):
        seq = super().to_sequence(x)
        return 1 - seq if torch.compiler.is_compiling() else seq


@pytest.mark.parametrize("offset, fails", [(2e-4, True), (5e-5, False)])
def test_parity_tolerance_on_logits_is_tight(tmp_path, offset, fails):
    from densreg.export.exporter import LOGITS_ATOL

    assert offset > LOGITS_ATOL if fails else offset < LOGITS_ATOL
    model = perturb(type("M", (OffsetMarkov,), {"offset": offset})((1, 2, 2)))
    if fails:
        with pytest.raises(ExportError, match="parity"):
            export_model(model, tmp_path / "e")
        assert not (tmp_path / "e").exists()
    else:
        assert export_model(model, tmp_path / "e")["max_abs_diff"] == pytest.approx(offset, rel=0.1)


def test_parity_fails_when_only_log_prob_differs(tmp_path):
    model = perturb(FlippedValuesBernoulli((1, 2, 2)))
    with pytest.raises(ExportError, match=r"parity.* 0 \(conditional logits\), 0 \(step logits\), [0-9.]+ nats"):
        export_model(model, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("gap, fails", [(1.5e-3, True), (5e-4, False)])
def test_parity_tolerance_on_log_prob_is_tight(tmp_path, gap, fails):
    """One binary value with log p(1) - log p(0) = gap, exported scoring the flipped value: the
    logits agree exactly and every image's log_prob is off by exactly gap nats."""
    from densreg.export.exporter import LOG_PROB_ATOL

    assert gap > LOG_PROB_ATOL if fails else gap < LOG_PROB_ATOL
    model = FlippedValuesBernoulli((1, 1, 1))
    with torch.no_grad():
        model.log_probs.copy_(torch.log_softmax(torch.tensor([[0.0, gap]]), -1))
    if fails:
        with pytest.raises(ExportError):
            export_model(model, tmp_path / "e")
        assert not (tmp_path / "e").exists()
    else:
        report = export_model(model, tmp_path / "e")
        assert report["max_abs_diff"] <= 1e-7 and report["log_prob_max_abs_diff"] == pytest.approx(gap, rel=1e-2)


def assert_nothing_written(parent, out):
    assert not out.exists() and [p.name for p in parent.iterdir()] == []


def test_unexportable_step_fails_clearly(tmp_path):
    out = tmp_path / "parent" / "e"
    out.parent.mkdir()
    with pytest.raises(ExportError) as err:
        export_model(IntPositionMarkov((1, 2, 2)), out)
    message = str(err.value)
    assert "'int-position'" in message and "step" in message and "int(position)" in message
    assert isinstance(err.value, DensregError)
    assert_nothing_written(out.parent, out)


def test_parity_failure_is_an_error(tmp_path):
    out = tmp_path / "parent" / "e"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"'trace-dependent'.*parity.*conditional logits"):
        export_model(perturb(TraceDependentMarkov((1, 2, 2))), out)
    assert_nothing_written(out.parent, out)


def test_export_replaces_an_export_but_not_other_folders(tmp_path):
    out = tmp_path / "e"
    model = perturb(create_model("bernoulli", (1, 2, 3), 2))
    assert export_model(model, out, parity=False)["max_abs_diff"] is None and out.is_dir()
    perturb(model, seed=7)
    export_model(model, out)
    assert np.allclose(ExportedModel(out, provider="cpu").log_prob(np.zeros((1, 1, 2, 3))),
                       model.log_prob(torch.zeros(1, 1, 2, 3)).numpy(), atol=LOG_PROB_ATOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="other than an export"):
        export_model(model, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# -- the CLI ------------------------------------------------------------------------
def run_ok(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result


def test_cli_export_eval_sample_on_an_export_folder(tmp_path):
    ckpt, out = tmp_path / "m.safetensors", tmp_path / "m-onnx"
    run_ok("train", "markov", "--dataset", "digits", "--set", "ordering=snake", "--out", ckpt)
    text = run_ok("export", ckpt, "--out", out).output
    found = re.search(r"max abs diff (\S+) in logits, (\S+) nats in log_prob", text)
    assert found and float(found[1]) <= LOGITS_ATOL and float(found[2]) <= LOG_PROB_ATOL
    torch_eval = json.loads(run_ok("eval", ckpt, "--dataset", "digits", "--json").output)
    result = run_ok("eval", out, "--dataset", "digits", "--json")
    ort_eval = json.loads(result.stdout)
    assert "CPUExecutionProvider" in result.stderr
    assert ort_eval.keys() == torch_eval.keys() and ort_eval["images"] == torch_eval["images"] == 300
    assert ort_eval["model"] == "markov" and abs(ort_eval["nll_nats"] - torch_eval["nll_nats"]) < LOG_PROB_ATOL
    text = run_ok("eval", out, "--dataset", "digits").stdout
    assert text.startswith("markov on digits/test:") and "bits/dim" in text
    run_ok("sample", ckpt, "-n", "9", "--out", tmp_path / "a.png", "--npz", tmp_path / "a.npz", "--seed", "4")
    result = run_ok("sample", out, "-n", "9", "--out", tmp_path / "b.png", "--npz", tmp_path / "b.npz", "--seed", "4")
    assert "provider" not in result.stdout and "CPUExecutionProvider" in result.stderr
    assert np.array_equal(np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"])
    assert (tmp_path / "b.png").stat().st_size > 0
    model, _ = load_checkpoint(ckpt)
    assert_same_samples(model, ExportedModel(out, provider="cpu"), 64)


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: no such checkpoint file: {tmp_path / 'missing.safetensors'}"]
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "empty"), "--dataset", "digits"])
    assert result.exit_code == 1 and "manifest.json is missing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_float16_export_halves_the_weights_and_keeps_the_nll(tmp_path):
    """`densreg export --dtype float16`: the parity line reports the NLL change, every image's log p(x)
    stays within FLOAT16_LOG_PROB_ATOL of the float32 export, and weights.bin halves."""
    from densreg.export.exporter import FLOAT16_LOG_PROB_ATOL

    model = perturb(create_model("nade", (1, 8, 8), 2, hidden=32))
    ckpt = tmp_path / "nade.safetensors"
    save_checkpoint(ckpt, model, "nade")
    run_ok("export", ckpt, "--out", tmp_path / "f32")
    text = run_ok("export", ckpt, "--out", tmp_path / "f16", "--dtype", "float16").output
    found = re.search(r"\(opset \d+, float16, .*\nparity \(onnxruntime vs torch\): max abs diff (\S+) in logits, "
                      r"(\S+) nats in log_prob", text)
    assert found, text
    reported = float(found[2])
    assert 0 < reported <= FLOAT16_LOG_PROB_ATOL  # half precision is really used, and within its tolerance
    manifest = json.loads((tmp_path / "f16" / fmt.MANIFEST).read_text())
    assert manifest["dtype"] == "float16" and manifest["weights_dtype"][fmt.CONDITIONALS] == "float16"
    assert manifest["parity"]["log_prob"] == pytest.approx(reported, rel=1e-2)
    size = {d: (tmp_path / d / fmt.WEIGHTS).stat().st_size for d in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    half, full = ExportedModel(tmp_path / "f16", provider="cpu"), ExportedModel(tmp_path / "f32", provider="cpu")
    images = random_images(model, 64, seed=3).numpy()
    change = np.abs(half.log_prob(images).astype(np.float64) - full.log_prob(images))
    assert 0 < change.max() <= FLOAT16_LOG_PROB_ATOL
    with torch.no_grad():
        assert np.abs(full.log_prob(images) - model.log_prob(torch.from_numpy(images)).numpy()).max() <= LOG_PROB_ATOL
