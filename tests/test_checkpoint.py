"""Checkpoints: safetensors round trip, clear errors, atomic writes."""

import errno
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

import densreg.registry.atomic as atomic
import densreg.registry.checkpoint as checkpoint
from densreg.registry import CheckpointError, create_model, load_checkpoint, save_checkpoint
from densreg.registry.conformance import randomize


def make_model():
    model = create_model("markov", (1, 3, 3), 3, order=2, ordering="random:4", alpha=0.5)
    randomize(model, buffers=True)  # random log-probability tables
    return model


def test_round_trip(tmp_path):
    model = make_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "markov", metrics={"valid_nll_nats": 1.5})
    loaded, info = load_checkpoint(path)
    x = torch.randint(0, 3, (8, 1, 3, 3))
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    assert info.model == "markov" and info.event_shape == (1, 3, 3) and info.num_categories == 3
    assert info.ordering == "random:4" and info.config["order"] == 2 and info.metrics == {"valid_nll_nats": 1.5}
    assert info.densreg_version


def test_file_is_plain_safetensors(tmp_path):
    """8-byte little-endian header length, a JSON header with string metadata, raw tensor bytes: no pickle."""
    import struct

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    assert header["__metadata__"]["format"] == "densreg-checkpoint/1"
    assert set(header) == {"__metadata__", "model.log_probs"}


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable safetensors file .*: it has 0 bytes, fewer than the 8 of a header length"),
    (b"abc", "it has 3 bytes, fewer than the 8 of a header length"),
    (b"1234567", "it has 7 bytes, fewer than the 8 of a header length"),
    (b"garbage" * 10, "not a readable safetensors file"),
])
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"hello": "world"})
    with pytest.raises(CheckpointError, match="not a densreg checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_config_that_does_not_fit_the_model(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "bernoulli")  # a markov config under the bernoulli name
    with pytest.raises(CheckpointError, match="config does not fit model 'bernoulli'.*unknown config key 'order'"):
        load_checkpoint(path)


def test_weights_that_do_not_match(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    tensors, metadata = checkpoint.read_tensors(path)
    checkpoint.save_tensors(path, {"model.something_else": tensors["model.log_probs"]}, metadata)
    with pytest.raises(CheckpointError, match="weights do not match model 'markov'"):
        load_checkpoint(path)


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov", metrics={"epoch": 1})
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_model(), "markov", metrics={"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        atomic.atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600


def test_files_written_before_the_restructuring_still_load():
    """tests/data/format-0.1: a checkpoint and its export written by densreg at commit fa5ab77."""
    import numpy as np

    from densreg.export.runtime import ExportedModel
    from densreg.registry.conformance import all_images

    folder = os.path.join(os.path.dirname(__file__), "data", "format-0.1")
    model, info = load_checkpoint(os.path.join(folder, "nade.safetensors"))
    exported = ExportedModel(os.path.join(folder, "nade-onnx"), provider="cpu")
    assert (info.model, info.ordering, info.event_shape) == ("nade", "random:5", (1, 3, 3))
    assert exported.info.config == info.config and exported.info.opset == 18
    x = all_images((1, 3, 3), 2)
    log_p = model.log_prob(x).detach()
    assert abs(float(log_p.exp().sum()) - 1) < 1e-5
    np.testing.assert_allclose(exported.log_prob(x.numpy()), log_p.numpy(), atol=1e-5)


def test_any_changed_weight_is_refused_whichever_way_its_hash_sorts(tmp_path):
    """Eight small edits of one weight: each is refused, whether its hash sorts above or below the
    stored one, and the error shows both hashes' first 12 hex digits."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    tensors, metadata = checkpoint.read_tensors(path)
    name = next(k for k in tensors if k.startswith("model."))
    orders = set()
    for i in range(1, 9):
        changed = {k: v.clone() for k, v in tensors.items()}
        changed[name].view(-1)[0] += 0.125 * i
        edited = tmp_path / f"edit{i}.safetensors"
        checkpoint.save_tensors(edited, changed, metadata)
        with pytest.raises(CheckpointError, match="changed after densreg wrote it") as err:
            load_checkpoint(edited)
        actual, stored = re.search(r"sha256 ([0-9a-f]{12})…, stored ([0-9a-f]{12})…\)", str(err.value)).groups()
        orders.add(actual < stored)
    assert orders == {True, False}  # both orders occur: the check is for inequality, not an order


def test_a_path_the_system_refuses_is_a_checkpoint_error(tmp_path):
    path = tmp_path / ("x" * 300 + ".safetensors")  # longer than a file name may be
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*: File name too long$"):
        load_checkpoint(path)


def header_file(path, header: dict, claimed_extra: int = 0):
    """A safetensors file that is only its header: 8-byte length (the JSON's + ``claimed_extra``), JSON."""
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) + claimed_extra).to_bytes(8, "little") + raw)
    return len(raw)


def test_a_header_may_end_exactly_at_the_end_of_the_file_but_not_a_byte_past_it(tmp_path):
    path = tmp_path / "h.safetensors"
    header_file(path, {"__metadata__": {"format": "x"}})
    assert checkpoint.read_header(path) == ({}, {"format": "x"})  # no tensors, no data bytes: valid
    length = header_file(path, {"__metadata__": {"format": "x"}}, claimed_extra=1)
    with pytest.raises(CheckpointError) as err:  # refused although the bytes that are there parse
        checkpoint.read_header(path)
    numbers = re.findall(r"\d+", str(err.value).split(": ", 1)[1])
    assert numbers[:2] == [str(length + 1), str(length)]  # the claimed and the present header bytes


def test_a_checkpoint_the_system_refuses_to_open_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")

    def refuse(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint, "open", refuse, raising=False)  # stat works, open fails (a bad disk)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*: Input/output error$"):
        load_checkpoint(path)


@pytest.mark.parametrize("metadata", [{"format": 1}, {"format": "x", "metrics": {}}, ["format"]])
def test_metadata_that_is_not_an_object_of_strings_is_refused(tmp_path, metadata):
    path = tmp_path / "h.safetensors"
    header_file(path, {"__metadata__": metadata})
    with pytest.raises(CheckpointError):
        checkpoint.read_header(path)


def entry_file(path, entry: tuple, data_bytes: int):
    """A safetensors file with one tensor entry "w" (dtype, shape, data_offsets) and ``data_bytes`` zero bytes."""
    dtype, shape, offsets = entry
    raw = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(data_bytes))


@pytest.mark.parametrize("entry, data_bytes", [
    (("F32", [2], [0, 8]), 8),  # ends exactly at the end of the file
    (("F32", [0], [0, 0]), 0),  # an empty tensor: zero bytes
    (("F32", [2, 0], [4, 4]), 4),
    (("U8", [3], [1, 4]), 4),
])
def test_header_entries_within_the_file_and_of_the_right_size_are_read(tmp_path, entry, data_bytes):
    path = tmp_path / "w.safetensors"
    entry_file(path, entry, data_bytes)
    table, _ = checkpoint.read_header(path)
    dtype, shape, (begin, end) = entry
    assert table["w"].dtype == dtype and table["w"].shape == tuple(shape) and table["w"].nbytes == end - begin
    assert checkpoint.read_tensors(path)[0]["w"].shape == tuple(shape)


@pytest.mark.parametrize("entry, data_bytes", [
    (("F32", [-1, -1], [0, 4]), 4),  # negative sizes whose product is 1
    (("F32", [2], [-1, 7]), 8),  # begins before the data
    (("F32", [2], [0, 9]), 8),  # ends past the file
    (("F32", [1], [0, 8]), 8),  # more bytes than the shape needs
    (("F32", [2], [0, 8, 8]), 8),
    (("F32", [2], [8]), 8),
    (("F32", [2], None), 8),
    (("F32", [2], 8), 8),
    (("F32", [2], [0.0, 8.0]), 8),
    (("F32", [2], [False, 8]), 8),
])
def test_header_entries_outside_the_file_or_of_the_wrong_size_are_refused(tmp_path, entry, data_bytes):
    path = tmp_path / "w.safetensors"
    entry_file(path, entry, data_bytes)
    with pytest.raises(CheckpointError):
        checkpoint.read_header(path)


def test_a_wrong_byte_count_reports_what_the_shape_needs_and_what_the_offsets_give(tmp_path):
    path = tmp_path / "w.safetensors"
    entry_file(path, ("F32", [4], [8, 16]), 16)
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_header(path)
    assert re.findall(r"\d+", str(err.value).split("'w'")[1])[-2:] == ["16", "8"]


@pytest.mark.parametrize("dtype", ["U8", "BOOL", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32", "I64", "F64"])
def test_a_big_endian_machine_reverses_the_bytes_of_each_multibyte_element(monkeypatch, dtype):
    size = checkpoint.DTYPE_BYTES[dtype]
    data = bytes([1, 0, 0, 0, 0, 0, 0, 63, 0, 0, 1, 0, 0, 0, 0, 0][:2 * size])  # two elements, all values valid
    swapped = b"".join(data[i:i + size][::-1] for i in range(0, len(data), size))
    entry = checkpoint.TensorEntry(dtype, (2,), 0, len(data))
    little = checkpoint._tensor(bytearray(swapped), entry)  # what a big-endian machine must read
    monkeypatch.setattr(checkpoint.sys, "byteorder", "big")
    big = checkpoint._tensor(bytearray(data), entry)
    assert big.dtype == little.dtype and torch.equal(big.view(torch.uint8), little.view(torch.uint8))


def test_a_file_truncated_after_its_header_was_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    header = checkpoint.read_header(path)
    path.write_bytes(path.read_bytes()[:-4])  # another process cuts it short between header and data
    monkeypatch.setattr(checkpoint, "read_header", lambda p: header)
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.read_tensors(path)


def test_a_file_removed_after_its_header_was_read_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    header = checkpoint.read_header(path)
    path.unlink()
    monkeypatch.setattr(checkpoint, "read_header", lambda p: header)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.read_tensors(path)


def test_a_weight_of_another_shape_is_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    tensors = {"model.log_probs": torch.zeros(8, 1000)}  # sorts below the expected (9, 9, 3), holds more
    save_checkpoint(path, make_model(), "markov")
    _, metadata = checkpoint.read_header(path)
    checkpoint.save_tensors(path, tensors, metadata)

    def no_reading(*args, **kwargs):
        raise AssertionError("tensors read before their shapes were checked")

    monkeypatch.setattr(checkpoint, "read_tensors", no_reading)
    with pytest.raises(CheckpointError, match=r"log_probs has shape \[8, 1000\]"):
        load_checkpoint(path)


@pytest.mark.parametrize("unexpected, shown, counted", [(1, 2, []), (4, 5, []), (5, 5, ["1"]), (11, 5, ["7"])])
def test_mismatched_weights_show_five_and_count_the_rest(tmp_path, unexpected, shown, counted):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, make_model(), "markov")
    _, metadata = checkpoint.read_header(path)
    checkpoint.save_tensors(path, {f"model.extra{i}": torch.zeros(1) for i in range(unexpected)}, metadata)
    with pytest.raises(CheckpointError) as err:  # the missing model.log_probs, then the unexpected ones
        load_checkpoint(path)
    problems = str(err.value).split(": weights do not match model 'markov': ")[1].split("; ")
    assert sum(p.startswith(("missing", "unexpected")) for p in problems) == shown
    assert [n for p in problems if not p.startswith(("missing", "unexpected")) for n in re.findall(r"\d+", p)] == counted


def test_nan_weights_are_named_three_at_most(tmp_path):
    model = create_model("nade", (1, 2, 2), 2, hidden=3)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.fill_(float("nan"))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "nade")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    named = re.search(r"\(([^)]*)\)", str(err.value).split(" holds NaN weights ")[1])[1].split(", ")
    assert len(named) == 3 and set(named) < {f"model.{k}" for k in model.state_dict()}


def test_a_model_that_refuses_its_own_weights_is_a_checkpoint_error(tmp_path, monkeypatch):
    model = make_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, "markov")

    def refuse(self, state, strict=True):
        raise RuntimeError("a plugin's own load check")

    monkeypatch.setattr(type(model), "load_state_dict", refuse)
    with pytest.raises(CheckpointError, match="a plugin's own load check"):
        load_checkpoint(path)
