"""Hostile files (issue 11, part C): one writer per output, bounded loading of tampered or huge
files, content hashes, file names that are not UTF-8, and one-sentence errors for damaged files.
Every crafted file lives in pytest's temporary folder."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from densreg.app.cli import cli
from densreg.app.run_files import run_paths
from densreg.registry import CheckpointError, ConfigError, DataError, create_model, load_checkpoint, save_checkpoint
from densreg.registry import checkpoint, limits
from densreg.registry.atomic import atomic_write_bytes
from densreg.registry.locking import lock_path, output_lock


def one_line_error(result, *fragments):
    """The CLI failed with exit 1 and one line on stderr that contains every fragment."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "unexpected" not in lines[0] and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_checkpoint(path, name="markov", **config):
    model = create_model(name, (1, 3, 3), **config)
    save_checkpoint(path, model, name, metrics={"valid_nll_nats": 1.0})
    return model


def tamper_metadata(path, **changes):
    tensors, metadata = checkpoint.read_tensors(path)
    metadata.update(changes)
    checkpoint.save_tensors(path, tensors, {k: v for k, v in metadata.items() if v is not None})


# -- C.10: one writer per output ------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from densreg.registry.locking import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def held_lock(tmp_path):
    """Start a process holding the output lock of tmp_path/m.safetensors; yields (path, process)."""
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_second_train_on_the_same_out_refuses_and_leaves_the_first_runs_file(held_lock):
    out, proc = held_lock
    out.write_bytes(b"the first run's checkpoint")
    result = CliRunner().invoke(cli, ["train", "bernoulli", "--dataset", "digits", "--out", str(out)])
    line = one_line_error(result, "another densreg process", f"pid {proc.pid}", str(out))
    assert "wait for it to finish" in line
    assert out.read_bytes() == b"the first run's checkpoint"
    with pytest.raises(DataError, match="another densreg process"):
        with output_lock(out):
            pass


def test_lock_of_a_killed_run_is_released(held_lock):
    out, proc = held_lock
    proc.kill()  # SIGKILL: no clean-up ran, the lock file stays, the kernel drops the lock
    proc.wait()
    assert lock_path(out).exists()
    result = CliRunner().invoke(cli, ["train", "bernoulli", "--dataset", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not lock_path(out).exists()
    load_checkpoint(out)


def test_any_file_of_the_run_is_locked(tmp_path):
    """The resume state and the log are the run's too: a run on another --out with the same stem refuses."""
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_paths(out).state)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--out", str(out)])
        one_line_error(result, "another densreg process", "m.last.safetensors")
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_reentrant_and_refuses_a_planted_symlink(tmp_path):
    out = tmp_path / "m.safetensors"
    with output_lock(out):
        with output_lock(out):  # the CLI and fit both take it
            pass
        assert lock_path(out).exists()
    assert not lock_path(out).exists()
    (tmp_path / "elsewhere").write_text("x")
    lock_path(out).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="symbolic link"):
        with output_lock(out):
            pass
    assert (tmp_path / "elsewhere").read_text() == "x"


def test_orphan_temporary_files_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "m.safetensors"
    orphans = [tmp_path / ".m.safetensors.k1ll3d.tmp", tmp_path / ".m.last.safetensors.abc123.tmp",
               tmp_path / ".m.log.jsonl.zz.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    other = tmp_path / ".other.safetensors.abc.tmp"  # not this run's: left alone
    other.write_bytes(b"x")
    result = CliRunner().invoke(cli, ["train", "bernoulli", "--dataset", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p for p in orphans if p.exists()] == [] and other.exists()


def test_readers_never_see_a_torn_file(tmp_path):
    """While a writer replaces a 4 MB file over and over, every read is one whole version."""
    path = tmp_path / "big.bin"
    versions = [bytes([i]) * (4 << 20) for i in range(4)]
    atomic_write_bytes(path, versions[0])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            atomic_write_bytes(path, versions[i % 4])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            data = path.read_bytes()
            assert data in versions
            seen.add(data[0])
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 1  # the reads really overlapped the writes


# -- C.12: bounded work for tampered and huge files --------------------------------------------------

def test_huge_event_shape_in_a_checkpoint_is_refused_fast(tmp_path):
    path = tmp_path / "m.safetensors"
    write_checkpoint(path)
    for shape in ([1, 100000, 100000], [1, 2**40, 1], [0, 3, 3], [1, 3], "x", [1.5, 3, 3]):
        tamper_metadata(path, event_shape=json.dumps(shape))
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match="event_shape"):
            load_checkpoint(path)
        assert time.perf_counter() - start < 2
    result = CliRunner().invoke(cli, ["sample", str(path), "--out", str(tmp_path / "s.png")])
    one_line_error(result, "event_shape")


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_huge_event_shape_in_an_export_is_refused_fast(tmp_path):
    from densreg.export import export_model
    from densreg.export.runtime import ExportedModel
    from densreg.registry import RuntimeLoadError

    out = tmp_path / "e"
    export_model(create_model("bernoulli", (1, 2, 2)), out)
    edit_manifest(out, lambda m: m.update(event_shape=[1, 100000, 100000]))
    start = time.perf_counter()
    with pytest.raises(RuntimeLoadError, match="event_shape .* more than"):
        ExportedModel(out, provider="cpu")
    assert time.perf_counter() - start < 5
    edit_manifest(out, lambda m: (m.update(event_shape=[1, 2, 2]), m["versions"].pop("opset")))
    result = CliRunner().invoke(cli, ["sample", str(out), "--out", str(tmp_path / "s.png")])
    one_line_error(result, "lacks the key 'opset'")
    (out / "manifest.json").write_text("[" * 100000)
    result = CliRunner().invoke(cli, ["sample", str(out), "--out", str(tmp_path / "s.png")])
    one_line_error(result, "not a valid densreg manifest")


def test_sparse_file_is_not_read_whole(tmp_path):
    import resource

    sparse = tmp_path / "sparse.safetensors"
    with open(sparse, "wb") as handle:
        handle.truncate(12 * 2**30)  # 12 GB of holes, no disk used
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(sparse)
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: under 100 MB more


def crafted_safetensors(path, tensors: dict, metadata: dict, pad_to: int = 0):
    """A safetensors file whose header declares ``tensors`` {name: (dtype, shape, [begin, end])};
    the data region is a hole of ``pad_to`` bytes (sparse)."""
    header = {"__metadata__": metadata,
              **{k: {"dtype": d, "shape": s, "data_offsets": o} for k, (d, s, o) in tensors.items()}}
    raw = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + pad_to)


def test_a_valid_header_declaring_a_huge_tensor_is_refused_before_reading(tmp_path, monkeypatch):
    real = tmp_path / "real.safetensors"
    write_checkpoint(real, "bernoulli")
    _, metadata = checkpoint.read_header(real)
    huge = 3 * 2**30  # 12 GB of F32
    path = tmp_path / "huge.safetensors"
    crafted_safetensors(path, {"model.log_probs": ("F32", [huge], [0, 4 * huge])}, metadata, pad_to=4 * huge)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"model.log_probs has shape \[3221225472\], expected \[9, 2\]"):
        load_checkpoint(path)
    monkeypatch.setattr(limits, "available_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match="needs about 24.0 GiB of memory, more than the 1.0 GiB available"):
        checkpoint.read_tensors(path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("entry, message", [
    (("F32", [4], [0, 8]), "needs 16 bytes, its data_offsets give 8"),
    (("F32", [2], [0, 8000]), "within the 8 data bytes"),
    (("Q7", [2], [0, 8]), "has dtype 'Q7'"),
    (("F32", [-2], [0, 8]), "expected a list of non-negative integers"),
    (("F32", "2", [0, 8]), "expected a list of non-negative integers"),
    (("F32", [2], [8, 0]), "within the 8 data bytes"),
])
def test_malformed_header_entries_are_named(tmp_path, entry, message):
    path = tmp_path / "bad.safetensors"
    crafted_safetensors(path, {"model.log_probs": entry}, {"format": checkpoint.FORMAT}, pad_to=8)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("raw", [b"", b"\x01\x02", (2**63).to_bytes(8, "little") + b"{}",
                                 (5).to_bytes(8, "little") + b"\xff\xfe{}}", (2).to_bytes(8, "little") + b"[]",
                                 (200000).to_bytes(8, "little") + b"[" * 200000])
def test_garbage_headers_are_one_sentence(tmp_path, raw):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_special_files_as_checkpoints(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for target, message in ((tmp_path / "fifo", "not a regular file"), (tmp_path, "is a folder")):
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(target)  # a FIFO is never opened (it would block)
        assert time.perf_counter() - start < 2


def test_sample_refuses_more_memory_than_available_unless_overridden(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("bernoulli", (1, 28, 28)), "bernoulli")
    result = CliRunner().invoke(cli, ["sample", str(path), "-n", str(10**7), "--out", str(tmp_path / "s.png")])
    one_line_error(result, "sampling 10000000 images of 1x28x28 needs about", "lower -n", "--ignore-memory-limit")
    result = CliRunner().invoke(cli, ["sample", str(path), "-n", "2", "--nrow", str(10**9),
                                      "--out", str(tmp_path / "s.png")])  # nrow above n: n per row
    assert result.exit_code == 0, result.output
    write_checkpoint(path, "bernoulli")
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    result = CliRunner().invoke(cli, ["sample", str(path), "-n", "20", "--out", str(tmp_path / "s.png")])
    one_line_error(result, "more than the 1000 B available")
    monkeypatch.setenv(limits.IGNORE_ENV, "0")  # the flag sets it to 1; monkeypatch removes it afterwards
    result = CliRunner().invoke(cli, ["--ignore-memory-limit", "sample", str(path), "-n", "20",
                                      "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["info", "bernoulli", "-k", str(10**9)], "--categories (-k) must be from 2 to 65536, got 1000000000"),
    (["info", "bernoulli", "-k", "1"], "--categories (-k) must be from 2 to 65536, got 1"),
    (["info", "bernoulli", "--shape", "1,100000,100000"], "more than the 4194304 densreg supports"),
    (["info", "nade", "--set", "hidden=1000000000"], "needs about"),
    (["info", "nade", "-k", "65536", "--set", "hidden=100000"], "needs about"),
    (["info", "pixelrnn", "--set", "hidden=60000"], "needs about"),  # under the plugin's own cap, over memory
    (["info", "bernoulli", "-k", "65536", "--shape", "1,2048,2048"], "needs about"),
])
def test_oversized_models_are_refused_before_allocating(args, message):
    start = time.perf_counter()
    result = CliRunner().invoke(cli, args)
    one_line_error(result, message)
    assert time.perf_counter() - start < 10


def test_memory_estimate_counts_real_bytes():
    from densreg.registry import api

    spec = api.model_spec("nade")
    model = create_model("nade", (1, 4, 4), hidden=7)
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert api.model_bytes(spec, (1, 4, 4), 2, {"hidden": 7}) == real


# -- C.15: file names that are not UTF-8 ----------------------------------------------------------------

def densreg(*args):
    """``python -m densreg ARGS`` with a strict UTF-8 stdout (PYTHONIOENCODING), as many terminals have."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "densreg", *map(os.fsencode, args)], capture_output=True, env=env)


def test_non_utf8_file_names_are_written_read_and_resumed(tmp_path):
    out = tmp_path / os.fsdecode(b"run\xff\xfe.safetensors")
    args = ["train", "nade", "--dataset", "digits", "--set", "hidden=4", "--epochs", "1", "--out", str(out)]
    result = densreg(*args)
    assert result.returncode == 0 and os.fsencode(out) in result.stdout, result.stderr  # printed as its bytes
    result = densreg(*args[:-4], "--epochs", "2", "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    model, info = load_checkpoint(out)
    assert info.metrics["epochs"] == 2 and os.fsencode(out).endswith(b"\xff\xfe.safetensors")
    png, npz = tmp_path / os.fsdecode(b"s\xff.png"), tmp_path / os.fsdecode(b"s\xfe.npz")
    result = densreg("sample", str(out), "-n", "3", "--out", str(png), "--npz", str(npz))
    assert result.returncode == 0 and png.is_file() and npz.is_file(), result.stderr
    result = densreg("eval", str(out), "--dataset", "digits")
    assert result.returncode == 0 and b"nats per image" in result.stdout, result.stderr


def test_non_utf8_export_folders_are_refused_up_front(tmp_path):
    from densreg.export import ExportError, export_model
    from densreg.export.runtime import ExportedModel
    from densreg.registry import RuntimeLoadError

    odd = tmp_path / os.fsdecode(b"e\xff")
    start = time.perf_counter()
    with pytest.raises(ExportError, match="not valid UTF-8"):
        export_model(create_model("bernoulli", (1, 2, 2)), odd)
    assert time.perf_counter() - start < 1 and not odd.exists()  # before any tracing
    export_model(create_model("bernoulli", (1, 2, 2)), tmp_path / "e")
    os.rename(tmp_path / "e", odd)
    with pytest.raises(RuntimeLoadError, match="not valid UTF-8"):
        ExportedModel(odd, provider="cpu")


# -- C.17: more hostile cases found by the catalogue (test_hostile_catalogue.py) ---------------------------

def test_nan_weights_are_refused_on_load(tmp_path):
    model = create_model("bernoulli", (1, 2, 2))
    with torch.no_grad():
        model.log_probs.fill_(float("nan"))
    save_checkpoint(tmp_path / "m.safetensors", model, "bernoulli")
    with pytest.raises(CheckpointError, match=r"holds NaN weights \(model.log_probs\)"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_unparsable_device_and_binary_log_are_sentences(tmp_path):
    result = CliRunner().invoke(cli, ["train", "nade", "--dataset", "digits", "--device", "nonsense",
                                      "--out", str(tmp_path / "m.safetensors")])
    one_line_error(result, "device must be a torch device such as cpu, cuda or cuda:1, got 'nonsense'")
    (tmp_path / "bin.log.jsonl").write_bytes(b"\xdb\xff\x00garbage")
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "bin.log.jsonl"), "--out", str(tmp_path / "p.png")])
    one_line_error(result, "is not a training log: it is not UTF-8 text")


# -- C.14: a content hash of config and weights ---------------------------------------------------

def test_tampered_config_or_weights_are_refused_on_load(tmp_path):
    path = tmp_path / "m.safetensors"
    model = write_checkpoint(path, "markov", ordering="raster")
    loaded, _ = load_checkpoint(path)
    torch.testing.assert_close(loaded.log_probs, model.log_probs)

    tensors, metadata = checkpoint.read_tensors(path)
    config = json.loads(metadata["config"])
    assert config["ordering"] == "raster"
    snake = tmp_path / "snake.safetensors"
    checkpoint.save_tensors(snake, tensors, {**metadata, "ordering": "snake",
                                             "config": json.dumps({**config, "ordering": "snake"})})
    with pytest.raises(CheckpointError, match="changed after densreg wrote it"):
        load_checkpoint(snake)

    weights = tmp_path / "weights.safetensors"
    changed = {k: v.clone() for k, v in tensors.items()}
    name = next(k for k in changed if k.startswith("model."))
    changed[name].view(-1)[0] += 0.5
    checkpoint.save_tensors(weights, changed, metadata)
    with pytest.raises(CheckpointError, match="changed after densreg wrote it"):
        load_checkpoint(weights)

    unhashed = tmp_path / "unhashed.safetensors"  # files from before hashes existed still load
    checkpoint.save_tensors(unhashed, changed, {k: v for k, v in metadata.items() if k != checkpoint.HASH_KEY})
    reloaded, _ = load_checkpoint(unhashed)
    assert float(reloaded.state_dict()[name[len("model."):]].view(-1)[0]) == float(changed[name].view(-1)[0])
