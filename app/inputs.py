"""Images a user brings: an .npz archive, one PNG, or a folder of PNGs, checked against a model.

Torch-free (numpy and Pillow), so scoring and completion from an export folder run without torch.

PNG rule: the picture is converted to grey ("L", or "RGB" when the model has 3 channels), then
each 8-bit value g becomes ``floor(g * K / 256)``, the K equal-width bins of 0..255 (K = 2:
g >= 128 is 1). A picture of another size is refused unless ``resize=True``, which scales it
to the model's H x W (Lanczos on the 8-bit values, before binning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from densreg.registry.datasets import open_npz, quantize, read_npz_member, validate_real_images
from densreg.registry.errors import DataError

PNG_SUFFIXES = (".png",)


def read_png(path: Path, event_shape: tuple[int, int, int], num_categories: int, resize: bool = False) -> np.ndarray:
    """One picture -> int64 (C, H, W) with values 0..K-1 (the module's rule)."""
    channels, height, width = event_shape
    if channels not in (1, 3):
        raise DataError(f"PNG input needs a model with 1 or 3 channels; this one has {channels}")
    try:
        with Image.open(path) as picture:
            picture = picture.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} is not a readable image: {exc}") from exc
    if picture.size != (width, height):
        if not resize:
            raise DataError(f"{path} is {picture.width}x{picture.height} pixels but the model takes {width}x{height}; "
                            "pass --resize to scale it")
        picture = picture.resize((width, height), Image.LANCZOS)
    grey = np.asarray(picture, dtype=np.uint8)
    grey = grey[None] if channels == 1 else grey.transpose(2, 0, 1)
    return quantize(grey, num_categories)


def read_npz(path: Path, event_shape: tuple[int, int, int], num_categories: int) -> np.ndarray:
    """An archive's array ``images`` (or its only array): (N, C, H, W) or (N, H, W) when C = 1; levels
    0..K-1 as int64, or finite real values as float32 for a model of real values (``num_categories`` 0)."""
    array = read_npz_array(path)
    if array.ndim == 3 and event_shape[0] == 1:
        array = array[:, None]
    if num_categories == 0:  # a model of real values (K = 0): finite floats, not levels
        try:
            return validate_real_images(array, event_shape)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
    return check_images(array, event_shape, num_categories, str(path))


def read_npz_array(path: Path) -> np.ndarray:
    """An archive's array ``images``, or its only array (``densreg sample --npz`` writes 'samples'),
    as stored; no pickle, and bounded as dataset files are (registry.datasets.read_npz_member)."""
    with open_npz(path, "an array 'images'") as archive:
        names = list(archive.files)
        if "images" not in names and len(names) != 1:
            raise DataError(f"{path} holds arrays {', '.join(names) or 'none'}; name the images 'images'")
        return read_npz_member(path, archive, "images" if "images" in names else names[0])


def check_images(array, event_shape, num_categories: int, source: str) -> np.ndarray:
    """(N, C, H, W) integers 0..K-1 -> int64; DataError naming ``source`` otherwise."""
    array = np.asarray(array)
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(event_shape):
        raise DataError(f"{source}: expected images of shape (N, {', '.join(map(str, event_shape))}), "
                        f"got shape {array.shape}")
    if len(array) == 0:
        raise DataError(f"{source} holds no images")
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f" or not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise DataError(f"{source}: images must hold integers 0..{num_categories - 1}, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= num_categories:
        raise DataError(f"{source}: values must lie in 0..{num_categories - 1} (the model's K = {num_categories}), "
                        f"got values from {array.min()} to {array.max()}")
    return array.astype(np.int64)


def read_images(path, event_shape, num_categories: int, resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """``path`` (.npz, .png, or a folder of .png) -> (int64 images (N, C, H, W), a name per image).

    Names are ``file.npz[i]`` or the PNG file names (a folder is read in sorted order).
    """
    path = Path(path)
    event_shape = tuple(event_shape)
    if num_categories == 0 and path.suffix.lower() != ".npz":
        raise DataError(f"{path}: a model of real values takes an .npz of real values (array 'images'), "
                        "not pictures")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in PNG_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .png files")
        images = np.stack([read_png(p, event_shape, num_categories, resize) for p in files])
        return images, [p.name for p in files]
    if not path.is_file():
        raise DataError(f"no such file or folder: {path}")
    if path.suffix.lower() in PNG_SUFFIXES:
        return read_png(path, event_shape, num_categories, resize)[None], [path.name]
    if path.suffix.lower() == ".npz":
        images = read_npz(path, event_shape, num_categories)
        return images, [f"{path.name}[{i}]" for i in range(len(images))]
    raise DataError(f"{path}: expected an .npz archive, a .png picture or a folder of .png files")
