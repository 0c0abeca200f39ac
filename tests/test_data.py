"""Dataset readers: .npz, .amat folders, download with checksum, the embedded digits."""

import numpy as np
import pytest

from densreg.registry import DataError, get_dataset, load_split
from densreg.plugins.datasets.digits import load_digits
from densreg.plugins.datasets.mnist import MNIST_FILE, array_sha256, download_mnist, load_binarized_mnist, read_amat


def write_amat(path, images):
    lines = [" ".join(str(v) for v in img.reshape(-1)) for img in images]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def small_mnist(tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: rng.integers(0, 2, size=(n, 28, 28), dtype=np.uint8) for s, n in
              (("train", 5), ("valid", 3), ("test", 2))}
    folder = tmp_path / "amat"
    folder.mkdir()
    for split, images in splits.items():
        write_amat(folder / MNIST_FILE.format(split=split), images)
    return folder, splits


def test_amat_folder_and_npz_agree(small_mnist, tmp_path):
    folder, splits = small_mnist
    npz = tmp_path / "mnist.npz"
    np.savez(npz, **splits)
    for split, images in splits.items():
        from_amat = load_binarized_mnist(split, str(folder))
        from_npz = load_binarized_mnist(split, str(npz))
        assert from_amat.shape == (len(images), 1, 28, 28)
        assert np.array_equal(from_amat[:, 0], images) and np.array_equal(from_npz[:, 0], images)


def test_shared_npz_has_the_standard_splits(mnist_npz):
    for split, n in (("train", 50000), ("valid", 10000), ("test", 10000)):
        images = load_split("binarized-mnist", split, str(mnist_npz))
        assert images.shape == (n, 1, 28, 28)


def test_missing_data_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSREG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="pass --data PATH .* or --download"):
        load_binarized_mnist("train")
    with pytest.raises(DataError, match="holds neither"):
        load_binarized_mnist("train", str(tmp_path))


def test_bad_amat_content(tmp_path):
    bad = tmp_path / "x.amat"
    bad.write_text("0 1 2\n")
    with pytest.raises(DataError, match="only 0/1 values"):
        read_amat(bad)
    bad.write_text("0 1 1\n")
    with pytest.raises(DataError, match="not a whole number of 28x28 images"):
        read_amat(bad)


def test_download_verifies_checksums(small_mnist, tmp_path, monkeypatch):
    folder, splits = small_mnist
    checksums = {s: array_sha256(images) for s, images in splits.items()}
    dest = download_mnist(tmp_path / "cache", base_url=folder.as_uri(), checksums=checksums)
    assert np.array_equal(read_amat(dest / MNIST_FILE.format(split="test")), splits["test"])
    wrong = dict(checksums, valid="0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        download_mnist(tmp_path / "cache2", base_url=folder.as_uri(), checksums=wrong)
    assert not (tmp_path / "cache2" / MNIST_FILE.format(split="valid")).exists()
    assert not list((tmp_path / "cache2").glob("*.part"))


def test_download_failure_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="download of .* failed"):
        download_mnist(tmp_path / "c", base_url=(tmp_path / "nowhere").as_uri())


def test_digits_splits_are_fixed_and_disjoint():
    sizes = {s: len(load_digits(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 1197, "valid": 300, "test": 300}
    grey = np.concatenate([load_digits(s, levels=17) for s in ("train", "valid", "test")])
    assert grey.max() == 16 and len({img.tobytes() for img in grey}) > 1700
    binary = load_digits("test")
    assert set(np.unique(binary)) == {0, 1}
    assert np.array_equal(binary, (load_digits("test", levels=17) >= 8).astype(np.uint8))


def test_registered_datasets():
    assert get_dataset("digits").event_shape == (1, 8, 8)
    assert get_dataset("digits-grey").num_categories == 17
    with pytest.raises(DataError, match="has no split 'extra'"):
        load_split("digits", "extra")


def write_amat_fast(path, images):
    """The published layout: one image a line, 784 values 0/1 separated by spaces."""
    flat = images.reshape(len(images), -1)
    chars = np.full((len(flat), flat.shape[1] * 2), ord(" "), dtype=np.uint8)
    chars[:, 0::2] = flat + ord("0")
    chars[:, -1] = ord("\n")
    path.write_bytes(chars.tobytes())


def test_cli_download_from_a_mirror_checks_the_real_checksums(mnist_npz, tmp_path, monkeypatch):
    """--download through $DENSREG_MNIST_URL: the built-in checksums match the standard splits."""
    from click.testing import CliRunner

    from densreg.app.cli import cli

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with np.load(mnist_npz) as archive:
        for split in ("train", "valid", "test"):
            write_amat_fast(mirror / MNIST_FILE.format(split=split), archive[split])
    monkeypatch.setenv("DENSREG_MNIST_URL", mirror.as_uri())
    monkeypatch.setenv("DENSREG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b.safetensors"
    result = CliRunner().invoke(cli, ["train", "bernoulli", "--dataset", "binarized-mnist", "--download",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    cached = tmp_path / "cache" / "binarized_mnist" / MNIST_FILE.format(split="test")
    assert np.array_equal(read_amat(cached), load_binarized_mnist("test", str(mnist_npz))[:, 0])
