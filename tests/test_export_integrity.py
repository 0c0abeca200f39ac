"""Export folders as model cards that cannot be edited silently (issue 32, items 2-5).

The outside client's findings are the cases: a reversed ``order``, an edited initial state, weights
edited together with a forged manifest are each refused on open with one line; golden.json never
holds NaN; an unknown format is named in one line and format-2 folders written by 0.3.0 still open;
the README's client verifies the hashes it mentions; the card says only what was recorded;
``--triton`` writes configs that parse against Triton's ModelConfig schema and match the graphs;
test_data_set_0/ holds the graph's own outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from safetensors.torch import load_file

from densreg.app.cli import cli
from densreg.export import ExportError, export_model
from densreg.export import format as fmt
from densreg.export import manifest as manifest_file
from densreg.export import readme, triton
from densreg.export.manifest import file_digest
from densreg.export.runtime import ExportedModel
from densreg.registry import RuntimeLoadError, create_model, load_checkpoint
from densreg.registry.conformance import randomize
from densreg.registry.testing import single_torch_thread  # noqa: F401 (autouse: one torch thread)
from export_edits import rebind

FIXTURES_0_3_0 = Path(__file__).parent / "data" / "densreg-0.3.0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A markov model trained by `densreg train` on digits (what a card records), and its export."""
    tmp = tmp_path_factory.mktemp("card")
    checkpoint = tmp / "markov.safetensors"
    result = CliRunner().invoke(cli, ["train", "markov", "--dataset", "digits", "--out", str(checkpoint)])
    assert result.exit_code == 0, result.output
    out = tmp / "export"
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--out", str(out), "--license", "CC0-1.0",
                                      "--triton", str(tmp / "triton")])
    assert result.exit_code == 0, result.output
    return checkpoint, out, tmp / "triton"


@pytest.fixture(scope="module")
def row_lstm_export(tmp_path_factory):
    """A Row LSTM export (states, features) written by the python API, without a source: an empty card."""
    model = create_model("row-lstm", (1, 3, 3), 2, hidden=16, layers=1, output_hidden=8)
    randomize(model, 0)
    out = tmp_path_factory.mktemp("row") / "export"
    export_model(model, out, name="row-lstm")
    assert (out / fmt.WEIGHTS).stat().st_size > 0  # tensors of 1 kB and more are shared there
    return model, out


def manifest_of(folder):
    return json.loads((folder / fmt.MANIFEST).read_text())


def write_manifest(folder, manifest, rehash=True):
    if rehash:
        manifest["files"] = {name: file_digest((folder / name).read_bytes()) for name in manifest["files"]}
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest))


def refused(folder) -> str:
    with pytest.raises(RuntimeLoadError) as info:
        ExportedModel(folder, provider="cpu")
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the card ---------------------------------------------------------------------------------------

def test_training_records_what_a_card_needs(trained):
    checkpoint, _, _ = trained
    from densreg.registry import load_split
    from densreg.registry.datasets import split_sha256

    _, info = load_checkpoint(checkpoint)
    metrics = info.metrics
    test = load_split("digits", "test")
    assert metrics["dataset_sha256"] == {split: split_sha256(load_split("digits", split))
                                         for split in ("train", "valid", "test")}
    assert metrics["test_split"] == "test" and metrics["test_images"] == len(test) == 300
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        assert metrics["test_nll_nats"] == pytest.approx(-model.log_prob(test).double().mean().item(), abs=1e-4)
    assert metrics["command"].startswith("densreg train markov --dataset digits --out ")
    assert metrics["train_seconds" if "train_seconds" in metrics else "seconds"] > 0


def test_export_card_is_filled_from_the_records_and_renders(trained):
    checkpoint, out, _ = trained
    _, info = load_checkpoint(checkpoint)
    card = manifest_of(out)["card"]
    assert card["dataset"]["name"] == "digits" and card["dataset"]["sha256"] == info.metrics["dataset_sha256"]
    assert card["evaluation"] == {"test_nll_nats": info.metrics["test_nll_nats"], "split": "test", "images": 300}
    assert card["training"]["command"] == info.metrics["command"]
    assert card["training"]["densreg_version"] == info.densreg_version
    assert card["license"] == "CC0-1.0"
    assert manifest_of(out)["dataset"]["test_nll_nats"] == info.metrics["test_nll_nats"]  # was always null
    assert card["intended_use"] == card["limitations"] == "unknown"  # not stated: never invented
    text = (out / fmt.README).read_text()
    assert f"test NLL: {info.metrics['test_nll_nats']:.4f} nats per image on the `test` split (300 images)" in text
    assert info.metrics["dataset_sha256"]["test"] in text and "- license: CC0-1.0" in text
    assert "- intended use: unknown" in text


def test_a_model_without_records_has_an_unknown_card(row_lstm_export):
    _, out = row_lstm_export
    card = manifest_of(out)["card"]
    assert card["evaluation"] == "unknown" and card["dataset"]["name"] == "unknown"
    assert set(card["dataset"]["sha256"].values()) == {"unknown"}
    assert card["training"]["command"] == "unknown" and card["license"] == "unknown"
    assert "- test NLL: unknown" in (out / fmt.README).read_text() and manifest_of(out)["dataset"] is None


# -- integrity ---------------------------------------------------------------------------------------

def test_graphs_carry_the_manifest_digest(trained):
    _, out, _ = trained
    manifest = manifest_of(out)
    digest = manifest_file.binding_digest(manifest)
    for graph in manifest["graphs"]:
        props = {p.key: p.value for p in onnx.load(out / graph, load_external_data=False).metadata_props}
        assert props[manifest_file.BINDING_KEY] == digest


def test_reversed_order_is_refused(trained, tmp_path):
    folder = shutil.copytree(trained[1], tmp_path / "reversed")
    manifest = manifest_of(folder)
    manifest["order"] = manifest["order"][::-1]
    write_manifest(folder, manifest, rehash=False)
    assert "is not the manifest conditionals.onnx was exported with" in refused(folder)


def test_edited_initial_state_is_refused(row_lstm_export, tmp_path):
    folder = shutil.copytree(row_lstm_export[1], tmp_path / "state")
    manifest = manifest_of(folder)
    spec = manifest["state"][0]
    initial = fmt.decode_array(spec["initial"])
    spec["initial"] = fmt.encode_array(initial + 1)
    write_manifest(folder, manifest)
    assert "manifest.json was edited" in refused(folder)


def test_weights_edited_with_a_forged_manifest_are_refused(row_lstm_export, tmp_path):
    folder = shutil.copytree(row_lstm_export[1], tmp_path / "weights")
    weights = bytearray((folder / fmt.WEIGHTS).read_bytes())
    floats = np.frombuffer(weights, dtype=np.float32).copy()
    floats[: len(floats) // 2] *= 3  # the first half of every shared tensor's bytes
    (folder / fmt.WEIGHTS).write_bytes(floats.tobytes() + bytes(weights[floats.nbytes:]))
    write_manifest(folder, manifest_of(folder))  # file digests forged: the graphs no longer name this manifest
    assert "is not the manifest" in refused(folder)
    rebind(folder)  # forge the graphs' binding too: only the golden vectors can tell
    assert "conditionals.onnx of the export 'row-lstm' does not reproduce golden.json" in refused(folder)


def test_an_intact_folder_opens_and_an_unknown_format_is_named(trained, tmp_path):
    ExportedModel(trained[1], provider="cpu")
    folder = shutil.copytree(trained[1], tmp_path / "future")
    manifest = manifest_of(folder)
    manifest["format"] = "densreg-onnx/9"
    write_manifest(folder, manifest, rehash=False)
    message = refused(folder)
    assert "'densreg-onnx/9', which this densreg does not read; it reads densreg-onnx/3, densreg-onnx/2, " \
           "densreg-onnx/1" in message


@pytest.mark.parametrize("stem,key", [("nade-3x3", "nade"), ("row-lstm-3x3", "row_lstm")])
def test_a_format_2_folder_of_0_3_0_still_opens(stem, key):
    expected = load_file(FIXTURES_0_3_0 / "expected.safetensors")
    exported = ExportedModel(FIXTURES_0_3_0 / f"{stem}-export", provider="cpu")
    assert exported.manifest["format"] == "densreg-onnx/2" and "card" not in exported.manifest
    log_prob = exported.log_prob(expected["images"].numpy()).astype(np.float64)
    assert np.allclose(log_prob, expected[f"{key}_log_prob"].numpy(), atol=1e-4, rtol=0)
    samples = exported.sample(3, noise=expected["noise"].numpy())
    assert np.array_equal(samples, expected[f"{key}_samples"].numpy())


def test_a_format_2_folder_with_edited_weights_fails_its_golden_check(tmp_path):
    folder = shutil.copytree(FIXTURES_0_3_0 / "nade-3x3-export", tmp_path / "v2")
    proto = onnx.load(folder / fmt.CONDITIONALS, load_external_data=False)
    tensor = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1.0, tensor.name))
    (folder / fmt.CONDITIONALS).write_bytes(proto.SerializeToString())
    write_manifest(folder, manifest_of(folder))
    assert "does not reproduce golden.json" in refused(folder)


def test_non_finite_golden_vectors_are_refused(monkeypatch, tmp_path):
    """The RNADE case: a model whose samples diverge is refused in one line, and nothing is written."""
    from densreg.export import parity

    model = create_model("rnade", (1, 1, 3), 0, hidden=3, components=2)
    real_loop = parity.step_loop

    def diverging(*args, **kwargs):
        values = real_loop(*args, **kwargs)
        values[0, 1] = np.nan
        return values

    monkeypatch.setattr(parity, "step_loop", diverging)
    with pytest.raises(ExportError, match=r"^1 of 2 golden samples drawn from the export are not finite") as info:
        export_model(model, tmp_path / "out", name="rnade")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_golden_json_is_strict_json(trained):
    text = (trained[1] / fmt.GOLDEN).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"golden.json holds {name}"))


NO_TORCH_NO_DENSREG = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "densreg"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
"""


def run_readme_client(folder, tmp_path):
    snippet = readme.snippet_of((folder / fmt.README).read_text())
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH_NO_DENSREG)
    return subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})


def test_readme_client_verifies_the_hashes_it_mentions(trained, tmp_path):
    folder = shutil.copytree(trained[1], tmp_path / "client")
    assert run_readme_client(folder, tmp_path).returncode == 0
    golden = json.loads((folder / fmt.GOLDEN).read_text())
    golden["seed"] += 1  # an edit no numerical check of the client would notice
    (folder / fmt.GOLDEN).write_text(json.dumps(golden))
    proc = run_readme_client(folder, tmp_path)
    assert proc.returncode != 0 and "AssertionError: golden.json" in proc.stderr
    manifest = manifest_of(folder)
    manifest["order"] = manifest["order"][::-1]
    write_manifest(folder, manifest)  # hashes right again, the manifest no longer the graphs'
    proc = run_readme_client(folder, tmp_path)
    assert proc.returncode != 0 and "AssertionError: conditionals.onnx" in proc.stderr


# -- serving conventions ----------------------------------------------------------------------------------

def test_test_data_set_holds_the_graphs_own_outputs(trained):
    out = trained[1]
    manifest = manifest_of(out)
    session = ort.InferenceSession(str(out / fmt.CONDITIONALS), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    tensor = onnx.TensorProto()
    tensor.ParseFromString((out / fmt.TEST_DATA / "input_0.pb").read_bytes())
    images = numpy_helper.to_array(tensor)
    assert tensor.name == "images" and np.array_equal(images, np.array(json.loads((out / fmt.GOLDEN).read_text())
                                                                       ["images"]))
    for i, actual in enumerate(session.run(None, {"images": images})):
        tensor.ParseFromString((out / fmt.TEST_DATA / f"output_{i}.pb").read_bytes())
        assert tensor.name == names[i] and np.array_equal(numpy_helper.to_array(tensor), actual)
    assert f"{fmt.TEST_DATA}/input_0.pb" in manifest["files"]


def test_triton_repository_matches_the_graphs(trained):
    _, out, repository = trained
    models = sorted(os.listdir(repository))
    assert models == ["markov-conditionals", "markov-draw", "markov-sample", "markov-step"]
    dtypes = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(double)": "TYPE_FP64"}
    for name in models:
        config = triton.parse((repository / name / "config.pbtxt").read_text())
        assert config.name == name and config.backend == "onnxruntime"
        model_file = repository / name / "1" / "model.onnx"
        graph = name.removeprefix("markov-") + ".onnx"
        assert model_file.read_bytes() == (out / graph).read_bytes()
        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])  # weights.bin beside it
        declared = [*session.get_inputs(), *session.get_outputs()]
        configured = [*config.input, *config.output]
        batched = all(a.shape and isinstance(a.shape[0], str) for a in declared)
        assert config.max_batch_size == (triton.MAX_BATCH_SIZE if batched else 0)
        # the step runs a request's rows at one position: its batch axis stays, the dynamic batcher does not
        assert config.HasField("dynamic_batching") == (batched and name != "markov-step")
        assert [c.name for c in configured] == [a.name for a in declared]
        for c, a in zip(configured, declared):
            shape = a.shape[1:] if batched else a.shape
            assert list(c.dims) == ([-1 if isinstance(d, str) else d for d in shape] or [1])
            assert type(c).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[c.data_type].name \
                == dtypes[a.type]
    assert triton.parse((repository / "markov-conditionals" / "config.pbtxt").read_text()).HasField(
        "dynamic_batching")


def test_triton_config_schema_rejects_what_triton_would():
    with pytest.raises(Exception, match="max_batch"):
        triton.parse('name: "x"\nmax_batch: 4\n')
    with pytest.raises(Exception):
        triton.parse('name: "x"\ninput { name: "a" data_type: TYPE_FLOAT32 }\n')


def test_triton_model_of_a_batch_first_graph_gets_dynamic_batching():
    """A graph whose every input and output has a symbolic axis 0 (as step.onnx has from format 3 on)."""
    x = onnx.helper.make_tensor_value_info("position", onnx.TensorProto.INT64, ["B"])
    s = onnx.helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, ["B", 4])
    y = onnx.helper.make_tensor_value_info("new_state", onnx.TensorProto.FLOAT, ["B", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["state"], ["new_state"])], "g", [x, s], [y])
    text, reason = triton.model_config("m-step", onnx.helper.make_model(graph))
    config = triton.parse(text)
    assert reason is None and config.max_batch_size == triton.MAX_BATCH_SIZE
    assert [list(i.dims) for i in config.input] == [[1], [4]] and list(config.output[0].dims) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == triton.QUEUE_DELAY_US
