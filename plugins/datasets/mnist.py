"""Binarized MNIST (Larochelle & Murray, 2011): the reader (.npz or .amat, with download) and its
registration. The reader returns uint8 images (N, 1, 28, 28)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from densreg.registry import Dataset
from densreg.registry.datasets import cache_dir, open_npz, read_npz_member, split_sha256
from densreg.registry.errors import DataError

MNIST_SPLITS = {"train": 50000, "valid": 10000, "test": 10000}
MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
MNIST_FILE = "binarized_mnist_{split}.amat"
# sha256 of each split's contiguous uint8 (N, 28, 28) array: checks content, not whitespace.
MNIST_SHA256 = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}


def array_sha256(images: np.ndarray) -> str:
    """The checksum of a split's uint8 images: ``split_sha256``, what checkpoints record of their data."""
    return split_sha256(np.asarray(images, dtype=np.uint8))


def read_amat(path: Path, height: int = 28, width: int = 28) -> np.ndarray:
    """Parse a binarized-MNIST .amat file (one image a line, 784 values 0/1) -> uint8 (N, H, W)."""
    raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    is_digit = (raw == ord("0")) | (raw == ord("1"))
    other = raw[~is_digit]
    if other.size and not np.isin(other, np.frombuffer(b" \t\r\n", dtype=np.uint8)).all():
        raise DataError(f"{path}: expected only 0/1 values separated by white space")
    values = raw[is_digit] - ord("0")
    if values.size % (height * width):
        raise DataError(f"{path}: {values.size} values is not a whole number of {height}x{width} images")
    return values.reshape(-1, height, width)


def read_npz_split(path: Path, split: str) -> np.ndarray:
    """Array ``split`` of an .npz archive, read without pickle and only after its declared size is checked."""
    with open_npz(path, "arrays train, valid and test") as archive:
        return read_npz_member(path, archive, split)


def mnist_url() -> str:
    """Where --download fetches from: $DENSREG_MNIST_URL (a mirror, or file:// folder), else the published site."""
    return os.environ.get("DENSREG_MNIST_URL") or MNIST_URL


def download_mnist(dest: Path, base_url: str | None = None, checksums: dict[str, str] = MNIST_SHA256,
                   splits=tuple(MNIST_SPLITS)) -> Path:
    """Fetch the published .amat files into ``dest`` with a progress bar; verify each checksum.

    A file whose content does not match its checksum is deleted and DataError raised.
    """
    import urllib.request  # with tqdm, imported to download, not to list the datasets

    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    for split in splits:
        target = dest / MNIST_FILE.format(split=split)
        if target.exists() and array_sha256(read_amat(target)) == checksums[split]:
            continue
        url = (base_url or mnist_url()).rstrip("/") + "/" + MNIST_FILE.format(split=split)
        partial = target.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise DataError(f"download of {url} failed: {exc}") from exc
        digest = array_sha256(read_amat(partial))
        if digest != checksums[split]:
            partial.unlink(missing_ok=True)
            raise DataError(f"{url}: checksum mismatch (got {digest[:12]}…, expected {checksums[split][:12]}…)")
        os.replace(partial, target)
    return dest


def load_binarized_mnist(split: str, data: str | None = None, download: bool = False) -> np.ndarray:
    """One split of binarized MNIST as uint8 (N, 1, 28, 28).

    ``data``: an .npz with arrays train/valid/test of shape (N, 28, 28), or a folder
    holding ``binarized_mnist_{train,valid,test}.amat``. Without it, the cache folder
    (filled by ``download=True``).
    """
    path = Path(data).expanduser() if data else cache_dir() / "binarized_mnist"
    if data is None and download:
        download_mnist(path)
    if path.is_file():
        images = read_npz_split(path, split) if path.suffix == ".npz" else read_amat(path)
    elif path.is_dir():
        amat = path / MNIST_FILE.format(split=split)
        npz = sorted(path.glob("*.npz"))
        if amat.is_file():
            images = read_amat(amat)
        elif npz:
            images = read_npz_split(npz[0], split)
        else:
            raise DataError(f"{path} holds neither {amat.name} nor an .npz file")
    else:
        hint = "pass --data PATH (the .npz, or a folder with the three .amat files) or --download"
        raise DataError(f"binarized MNIST not found at {path}; {hint}")
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"binarized MNIST {split}: expected (N, 28, 28) images, got {images.shape}")
    if images.dtype.kind not in "biuf" or not np.isin(images, (0, 1)).all():  # checked before any cast
        raise DataError(f"binarized MNIST {split}: values must be 0 and 1 (got dtype {images.dtype}); "
                        "nothing is cast silently")
    return images[:, None].astype(np.uint8)


BINARIZED_MNIST = Dataset(
    name="binarized-mnist",
    description="MNIST with the fixed binarization of Larochelle & Murray (2011); 50000/10000/10000",
    event_shape=(1, 28, 28), num_categories=2, load=load_binarized_mnist, needs_files=True)
