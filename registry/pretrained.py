"""The pretrained catalog: the committed best models, installed with densreg (no network).

``models/`` (the package ``densreg.models``) holds the catalogued checkpoints and ``catalog.json``
(written by ``tools/pretrained_catalog.py``): per model its name (``MODEL/DATASET``), file, dataset,
test NLL (nats per image, split and image count), parameters, size in bytes, sha256, license and
the card an export of it carries (``densreg.export.card``). Training resume states
(``*.last.safetensors``) and logs stay in the repository, out of the installed package.

Listing reads only the JSON (no torch); ``load_pretrained`` checks the file's sha256 against the
catalog before ``load_checkpoint`` reads it.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from .errors import CheckpointError, UnknownNameError

PACKAGE = "densreg.models"
CATALOG = "catalog.json"
CHUNK = 1 << 20


def folder() -> Path:
    """Where the catalogued checkpoints are installed."""
    return Path(str(resources.files(PACKAGE)))


def list_pretrained() -> list[dict]:
    """The catalog's entries (dicts; keys in the module docstring), sorted by name."""
    data = json.loads((folder() / CATALOG).read_text(encoding="utf-8"))
    return sorted(data["models"], key=lambda entry: entry["name"])


def pretrained_entry(name: str) -> dict:
    """The catalog entry ``name`` (``MODEL/DATASET``); UnknownNameError listing the names otherwise."""
    entries = {entry["name"]: entry for entry in list_pretrained()}
    if name not in entries:
        raise UnknownNameError(f"no pretrained model {name!r}; the catalog has {', '.join(entries)} "
                               "(densreg pretrained lists them)")
    return entries[name]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def entry_of_file(path) -> dict | None:
    """The catalog entry whose checkpoint has the sha256 of the file ``path``, or None (not catalogued)."""
    digest = file_sha256(path)
    return next((entry for entry in list_pretrained() if entry["sha256"] == digest), None)


def pretrained_path(name: str) -> Path:
    """The installed checkpoint of ``name``, after checking its sha256 (CheckpointError if it differs)."""
    entry = pretrained_entry(name)
    path = folder() / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise CheckpointError(f"the installed checkpoint of {name!r} ({path}) is missing or does not match the "
                              "catalog's sha256; reinstall densreg")
    return path


def load_pretrained(name: str, device: str = "cpu"):
    """(model, SavedModelInfo) of the catalogued model ``name``, e.g. ``"row-lstm/binarized-mnist"``, read from
    the installed package (no network). ``info.extra["card"]`` is the catalog's card, which an export of the
    model carries."""
    from .checkpoint import load_checkpoint

    path = pretrained_path(name)
    model, info = load_checkpoint(path, device=device)
    info.extra = {**info.extra, "card": pretrained_entry(name)["card"]}
    return model, info
