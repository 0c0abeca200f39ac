"""The model card of an export folder: manifest ``card``, rendered in its README (torch-free).

What a card says comes from records, never from guesses: the checkpoint's metrics (dataset
name and the sha256 of each split it was trained and evaluated on, test NLL with its split and
image count, training command, epochs and seconds; ``densreg train`` records them), the
pretrained catalog's entry for a catalogued checkpoint (``densreg.registry.pretrained``), and what
the exporting user states (license, intended use, limitations). Anything not recorded is the
string ``"unknown"``.
"""

from __future__ import annotations

UNKNOWN = "unknown"
STATED = ("license", "intended_use", "limitations")  # what only the user (or the catalog) can state
SPLITS = ("train", "valid", "test")
SHA256_OF = "each split's values as contiguous bytes (densreg.registry.datasets.split_sha256)"


def from_metrics(metrics: dict, densreg_version: str, preprocessing: str = "") -> dict:
    """The card as a checkpoint's ``metrics`` record it (``densreg_version``: the checkpoint's)."""
    digests = metrics.get("dataset_sha256") if isinstance(metrics.get("dataset_sha256"), dict) else {}
    test_nll = metrics.get("test_nll_nats")
    seconds = metrics.get("train_seconds", metrics.get("seconds"))
    return {
        "dataset": {"name": metrics.get("dataset") or UNKNOWN, "preprocessing": preprocessing or UNKNOWN,
                    "sha256": {split: digests.get(split, UNKNOWN) for split in SPLITS}, "sha256_of": SHA256_OF,
                    **({"perturb": metrics["perturb"]} if "perturb" in metrics else {})},
        "evaluation": ({"test_nll_nats": float(test_nll), "split": metrics.get("test_split", UNKNOWN),
                        "images": metrics.get("test_images", UNKNOWN)} if test_nll is not None else UNKNOWN),
        "training": {"command": metrics.get("command") or UNKNOWN, "epochs": metrics.get("epochs", UNKNOWN),
                     "seconds": seconds if seconds is not None else UNKNOWN,
                     "densreg_version": densreg_version or UNKNOWN},
        **{key: UNKNOWN for key in STATED},
    }


def filled(card: dict, more: dict | None) -> dict:
    """``card`` with each ``"unknown"`` (at any depth) replaced by ``more``'s value for the same key."""
    out = dict(card)
    for key, value in (more or {}).items():
        mine = out.get(key, UNKNOWN)
        if mine == UNKNOWN:
            out[key] = value
        elif isinstance(mine, dict) and isinstance(value, dict):
            out[key] = filled(mine, value)
    return out


def build(metrics: dict, densreg_version: str, preprocessing: str = "", catalog: dict | None = None,
          stated: dict | None = None) -> dict:
    """The manifest's card: the checkpoint's records, gaps filled from its ``catalog`` card, then the user's
    ``stated`` license / intended_use / limitations (None or "" leaves a value as it is)."""
    card = filled(from_metrics(metrics, densreg_version, preprocessing), catalog)
    card.update({key: value for key, value in (stated or {}).items() if key in STATED and value})
    return card


def render(card: dict | None) -> list[str]:
    """The README's model card section (markdown lines); a folder without a card says so."""
    if not card:
        return ["## Model card", "", "Not recorded (exported before densreg wrote model cards).", ""]
    data, evaluation, training = card["dataset"], card["evaluation"], card["training"]
    digests = data["sha256"]
    sha = ("unknown" if digests == UNKNOWN else
           ", ".join(f"{split} `{digest}`" for split, digest in digests.items()))
    if evaluation == UNKNOWN:
        score = "unknown (the checkpoint records no test NLL)"
    else:
        score = (f"{evaluation['test_nll_nats']:.4f} nats per image on the `{evaluation['split']}` split "
                 f"({evaluation['images']} images)")
    seconds = training["seconds"]
    time = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else str(seconds)
    perturbed = f"; trained on data perturbed at rate {data['perturb']}" if "perturb" in data else ""
    return [
        "## Model card",
        "",
        f"- dataset: {data['name']} ({data['preprocessing']}){perturbed}",
        f"- data sha256 ({data['sha256_of']}): {sha}",
        f"- test NLL: {score}",
        f"- training: command `{training['command']}`; epochs: {training['epochs']}; time: {time}; "
        f"densreg {training['densreg_version']}",
        f"- license: {card['license']}",
        f"- intended use: {card['intended_use']}",
        f"- limitations: {card['limitations']}",
        "",
    ]
