"""Property-based tests (hypothesis) of the data boundary: random shapes, dtypes and values into
``validate_images``, the binarized-MNIST readers and checkpoint loading. The only outcomes allowed
are a correct result or a DensregError, each quickly (hypothesis' deadline) and without large
allocations (the inputs are small; bounded reading keeps it so)."""

import io
import json
import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from densreg.registry import DataError, DensregError, create_model, load_checkpoint, save_checkpoint  # noqa: E402
from densreg.registry import checkpoint  # noqa: E402
from densreg.registry.protocol import validate_images  # noqa: E402

FAST = settings(max_examples=30, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
DTYPES = st.sampled_from([np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                          np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128])


def image_arrays(max_dims=5):
    """Arrays of any small shape (rank 0..max_dims) and dtype, with any values (NaN, inf, huge)."""
    return DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=max_dims,
                                                                             min_side=0, max_side=4)))


def whole_in_range(array: np.ndarray, k: int) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if array.dtype.kind == "c":
            return False
        values = array.astype(np.float64) if array.dtype.kind == "f" else array
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values))
                    and np.all(values >= 0) and np.all(values < k)) if values.size else True


@FAST
@given(array=image_arrays(), k=st.integers(2, 300))
def test_validate_images_returns_the_same_values_or_a_data_error(array, k):
    event_shape = tuple(array.shape[1:]) if array.ndim == 4 and min(array.shape[1:], default=0) >= 1 else (1, 2, 2)
    try:
        out = validate_images(array, event_shape, k)
    except DataError:
        ok_shape = array.ndim == 4 and tuple(array.shape[1:]) == event_shape
        assert not (ok_shape and whole_in_range(array, k)), "a valid batch was refused"
        return
    assert out.dtype == torch.int64 and tuple(out.shape) == array.shape
    assert whole_in_range(array, k)
    assert np.array_equal(out.numpy(), array.astype(np.int64))  # nothing changed by a cast


@FAST
@given(data=st.binary(max_size=3000))
def test_amat_reader_gives_binary_images_or_a_data_error(tmp_path_factory, data):
    from densreg.plugins.datasets.mnist import read_amat

    path = tmp_path_factory.mktemp("amat") / "x.amat"
    path.write_bytes(data)
    try:
        images = read_amat(path, 2, 3)
    except DataError:
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (2, 3) and set(np.unique(images)) <= {0, 1}


@FAST
@given(array=DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, st.one_of(
           hnp.array_shapes(min_dims=0, max_dims=4, max_side=3),
           st.tuples(st.integers(0, 3), st.just(28), st.just(28))))),
       split=st.sampled_from(["train", "valid", "test"]), key=st.sampled_from(["train", "valid", "test", "other"]))
def test_mnist_npz_reader_gives_binary_images_or_a_data_error(tmp_path_factory, array, split, key):
    from densreg.plugins.datasets.mnist import load_binarized_mnist

    path = tmp_path_factory.mktemp("npz") / "m.npz"
    np.savez(path, **{key: array})
    try:
        images = load_binarized_mnist(split, str(path))
    except DataError:
        assert not (key == split and array.ndim == 3 and array.shape[1:] == (28, 28) and whole_in_range(array, 2))
        return
    assert key == split and images.dtype == np.uint8 and images.shape == (array.shape[0], 1, 28, 28)
    assert np.array_equal(images[:, 0], array.astype(np.uint8)) and whole_in_range(array, 2)


@FAST
@given(data=st.binary(max_size=2000))
def test_npz_reader_on_random_bytes(tmp_path_factory, data):
    from densreg.plugins.datasets.mnist import load_binarized_mnist

    path = tmp_path_factory.mktemp("npz") / "m.npz"
    path.write_bytes(data)
    with pytest.raises(DataError):
        load_binarized_mnist("train", str(path))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The bytes of a small NADE checkpoint with random weights, and the model."""
    model = create_model("nade", (1, 2, 3), hidden=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, model, "nade")
    return path.read_bytes(), model


def load_outcome(path):
    """load_checkpoint's result, or None when it raised a DensregError (anything else fails the test)."""
    try:
        return load_checkpoint(path)
    except DensregError:
        return None


@FAST
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       truncate=st.none() | st.integers(0, 10**6))
def test_checkpoint_with_random_bytes_changed_loads_the_same_model_or_fails_clearly(tmp_path_factory, saved,
                                                                                    cuts, truncate):
    raw, model = saved
    data = bytearray(raw)
    for where, value in cuts:
        data[where % len(data)] = value
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    path = tmp_path_factory.mktemp("mut") / "m.safetensors"
    path.write_bytes(bytes(data))
    result = load_outcome(path)
    if result is not None:  # only changes the hash cannot see (JSON white space, ...) may load
        loaded, _ = result
        assert loaded.config() == model.config()
        for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), name


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=4),
                           max_leaves=12)


@FAST
@given(changes=st.dictionaries(st.sampled_from(["model", "config", "event_shape", "num_categories", "ordering",
                                                "format", "metrics", "extra", "content_sha256"]),
                               JSON_VALUES.map(json.dumps) | st.text(max_size=30), min_size=1, max_size=4))
def test_checkpoint_with_random_metadata_loads_or_fails_clearly(tmp_path_factory, saved, changes):
    raw, model = saved
    path = tmp_path_factory.mktemp("meta") / "m.safetensors"
    path.write_bytes(raw)
    tensors, metadata = checkpoint.read_tensors(path)
    metadata.update(changes)
    checkpoint.save_tensors(path, tensors, metadata)
    result = load_outcome(path)
    if result is not None:
        assert result[0].config() == model.config()


@FAST
@given(entries=st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "I64", "U8", "BOOL", "F64", "X"]),
                           "shape": st.lists(st.integers(-2, 10**12), max_size=4),
                           "data_offsets": st.lists(st.integers(-5, 10**13), min_size=0, max_size=3)}),
    max_size=4), pad=st.integers(0, 64))
def test_random_safetensors_headers_fail_clearly(tmp_path_factory, entries, pad):
    header = json.dumps({"__metadata__": {"format": checkpoint.FORMAT}, **entries}).encode()
    path = tmp_path_factory.mktemp("hdr") / "m.safetensors"
    buffer = io.BytesIO()
    buffer.write(len(header).to_bytes(8, "little") + header + bytes(pad))
    path.write_bytes(buffer.getvalue())
    assert load_outcome(path) is None
    try:
        tensors, _ = checkpoint.read_tensors(path)
    except DensregError:
        return
    for name, entry in entries.items():  # whatever was read is what the header declared
        assert list(tensors[name].shape) == entry["shape"]
