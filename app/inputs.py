"""Images a user brings: pictures (a file, a folder searched recursively, or a glob), an .npz or .npy
array, read whole and checked before any is used (torch-free: numpy and Pillow), so scoring and
completion from an export folder run without torch.

Picture rule (densreg.registry.transforms): the picture is converted to grey ("L", or "RGB" when the
model has 3 channels), then each 8-bit value g becomes ``floor(g * K / 256)``, the K equal-width bins
of 0..255 (K = 2: g >= 128 is 1). A picture of another size is refused unless ``resize=True``, which
scales it to the model's H x W (Lanczos on the 8-bit values, before binning). Arrays hold levels
0..K-1 already (or real values, for a model of real values).
"""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from densreg.registry.datasets import open_npz, quantize, read_npy, read_npz_member, validate_real_images
from densreg.registry.errors import DataError
from densreg.registry.limits import check_memory
from densreg.registry.transforms import Transform, data_fingerprint

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npz", ".npy")
GLOB_CHARACTERS = "*?["


def picture_files(path) -> list[Path]:
    """The pictures ``path`` names, sorted: itself, every file of a folder and its subfolders (hidden
    files and folders left out), or a glob's matches. DataError naming a file of another kind (a
    folder may hold nothing but pictures) or when there is none."""
    text = str(path)
    if any(c in text for c in GLOB_CHARACTERS) and not os.path.exists(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        where = f"the pattern {text!r}"
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(text).parts))
        where = f"the folder {text}"
    elif Path(text).is_file():
        files, where = [Path(text)], text
    else:
        raise DataError(f"no such file or folder: {text}")
    for file in files:
        if file.suffix.lower() not in PICTURE_SUFFIXES:
            raise DataError(f"{file} is not a picture ({', '.join(PICTURE_SUFFIXES)}); remove it from {where} "
                            "or name the pictures with a glob")
    if not files:
        raise DataError(f"{where} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
    return files


def read_picture(path: Path, channels: int, size: tuple[int, int] | None, resize: bool) -> np.ndarray:
    """One picture -> uint8 (C, H, W) of 8-bit values, grey (C = 1) or RGB (C = 3). ``size`` (H, W):
    another size is refused, or scaled with ``resize`` (Lanczos). DataError naming the file."""
    if channels not in (1, 3):
        raise DataError(f"pictures are read as grey (1 channel) or RGB (3); the model has {channels} channels")
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path} is empty (0 bytes), not a picture")
        with Image.open(path) as picture:
            picture = picture.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} is not a readable image: {exc}") from None
    if size is not None and picture.size != (size[1], size[0]):
        if not resize:
            raise DataError(f"{path} is {picture.width}x{picture.height} pixels but the model takes "
                            f"{size[1]}x{size[0]}; pass --resize to scale it")
        picture = picture.resize((size[1], size[0]), Image.LANCZOS)
    grey = np.asarray(picture, dtype=np.uint8)
    return grey[None] if channels == 1 else grey.transpose(2, 0, 1)


def read_pictures(files, channels: int, size: tuple[int, int] | None = None, resize: bool = False) -> np.ndarray:
    """Pictures -> uint8 (N, C, H, W), all read before any is returned. ``size`` None: the first
    picture's; then a picture of another size is refused naming it (unless ``resize``)."""
    pictures = []
    for file in files:
        picture = read_picture(file, channels, size, resize)
        if size is None:
            size = picture.shape[1:]
            check_memory(len(files) * math.prod(picture.shape) * 10, f"reading {len(files)} pictures of "
                         f"{size[1]}x{size[0]}", "read fewer or smaller pictures")
        pictures.append(picture)
    return np.stack(pictures)


def read_array(path: Path) -> np.ndarray:
    """An .npz's array ``images`` (or its only one), or an .npy's array; bounded, never unpickled."""
    path = Path(path)
    return read_npy(path) if path.suffix.lower() == ".npy" else read_npz_array(path)


def read_npz(path: Path, event_shape: tuple[int, int, int], num_categories: int) -> np.ndarray:
    """An array file (``read_array``): (N, C, H, W) or (N, H, W) when C = 1; levels 0..K-1 as int64, or
    finite real values as float32 for a model of real values (``num_categories`` 0)."""
    array = read_array(path)
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


def is_array_file(path) -> bool:
    return Path(str(path)).suffix.lower() in ARRAY_SUFFIXES and Path(str(path)).is_file()


def read_images(path, event_shape, num_categories: int, resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """``path`` (an array file, a picture, a folder of pictures, a glob) -> (int64 images (N, C, H, W),
    a name per image): ``file.npz[i]``, or the pictures' paths relative to the folder (sorted)."""
    event_shape = tuple(event_shape)
    if is_array_file(path):
        images = read_npz(Path(path), event_shape, num_categories)
        return images, [f"{Path(path).name}[{i}]" for i in range(len(images))]
    if num_categories == 0:
        raise DataError(f"{path}: a model of real values takes an .npz or .npy of real values, not pictures")
    files = picture_files(path)
    pictures = read_pictures(files, event_shape[0], event_shape[1:], resize)
    return quantize(pictures, num_categories), picture_names(path, files)


def picture_names(path, files: list[Path]) -> list[str]:
    """Each file's name relative to the folder ``path`` (its path for a glob, its name for one file)."""
    root = Path(str(path))
    if root.is_dir():
        return [str(f.relative_to(root)) for f in files]
    return [f.name if root.is_file() else str(f) for f in files]


def folder_labels(path, files: list[Path]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each picture's class from its first subfolder below the folder ``path`` -> (int64 labels (N,),
    class names sorted); DataError for a picture directly in ``path`` or for a glob."""
    root = Path(str(path))
    if not root.is_dir():
        raise DataError(f"labels from folders need a folder of class subfolders, not {path}")
    names = []
    for file in files:
        parts = file.relative_to(root).parts
        if len(parts) < 2:
            raise DataError(f"{file} lies directly in {root}; with labels from folders every picture lies in a "
                            "subfolder named by its class")
        names.append(parts[0])
    classes = tuple(sorted(set(names)))
    return np.array([classes.index(n) for n in names], dtype=np.int64), classes


def training_images(path, channels: int = 1, size: tuple[int, int] | None = None, num_categories: int = 2,
                    resize: bool = False, labels: bool = False):
    """The user's training images -> (int64 levels (N, C, H, W), names, labels or None, Transform).

    Pictures: converted to ``channels``, sized to ``size`` (H, W; None: the first picture's, others
    must match), binned to ``num_categories`` levels; the fingerprint covers the 8-bit values. An
    array file: levels 0..K-1 as they are ((N, H, W) for grey); ``size`` must match if given."""
    if is_array_file(path):
        array = read_array(Path(path))
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4 or (size is not None and tuple(array.shape[2:]) != tuple(size)):
            raise DataError(f"{path}: expected levels of shape (N, C, H, W) or (N, H, W)"
                            + (f" with H, W = {size[0]}, {size[1]}" if size else "") + f", got {array.shape}; "
                            "arrays are not resized")
        if labels:
            raise DataError(f"{path}: labels from folders need a folder of pictures, not an array file")
        shape = tuple(array.shape[1:])
        images = check_images(array, shape, num_categories, str(path))
        transform = Transform("images", shape, num_categories, data_fingerprint(images), items=len(images),
                              source=str(path))
        return images, [f"{Path(path).name}[{i}]" for i in range(len(images))], None, transform
    files = picture_files(path)
    pictures = read_pictures(files, channels, size, resize)
    label_array, classes = folder_labels(path, files) if labels else (None, ())
    transform = Transform("images", pictures.shape[1:], num_categories, data_fingerprint(pictures),
                          resize="lanczos" if resize else "refuse", classes=classes, items=len(pictures),
                          source=str(path))
    return transform.levels(pictures), picture_names(path, files), label_array, transform


def images_for(transform: Transform, path, resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """New images read by a model's recorded image ``transform`` -> (int64 levels, names); pictures
    of another size are scaled when the transform says so or ``resize``."""
    return read_images(path, transform.event_shape, transform.num_categories,
                       resize or transform.resize == "lanczos")
