"""Learning curves drawn with Pillow (no matplotlib): NLL per epoch from training logs."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from densreg.registry import DataError

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def read_log(path) -> list[dict]:
    """A training log (JSON lines with epoch, train_nll, valid_nll) -> its entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such training log: {path}")
    entries = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a training log: it is not UTF-8 text (byte {exc.start}); expected the "
                        "OUT.log.jsonl densreg train writes") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append({"epoch": int(entry["epoch"]), "train_nll": float(entry["train_nll"]),
                            "valid_nll": float(entry["valid_nll"])})
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise DataError(f"{path}, line {number}: not a training-log entry "
                            f"(JSON with epoch, train_nll, valid_nll): {exc}") from exc
        bad = [key for key in ("train_nll", "valid_nll") if not math.isfinite(entries[-1][key])]
        if bad:
            raise DataError(f"{path}, line {number}: {bad[0]} is {entries[-1][bad[0]]}, not a finite number "
                            "(a diverged epoch?); plot draws finite NLLs only")
    if not entries:
        raise DataError(f"{path} has no epochs logged")
    return entries


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo if hi > lo else 1.0
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def learning_curves_png(runs: dict[str, list[dict]], width: int = 800, height: int = 500) -> bytes:
    """PNG bytes: train (dashed) and valid (solid) NLL in nats against epoch, one colour per run."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    left, right, top, bottom = 70, 20, 30, 50
    points = [(e["epoch"], e[key]) for entries in runs.values() for e in entries for key in ("train_nll", "valid_nll")
              if math.isfinite(e[key])]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x, y):
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for y in nice_ticks(y_lo, y_hi):
        _, py = to_px(x_lo, y)
        draw.line([left, py, width - right, py], fill=(230, 230, 230))
        draw.text((left - 6, py), f"{y:g}", fill="black", font=font, anchor="rm")
    for x in nice_ticks(x_lo, x_hi, 8):
        if x == int(x):
            px, _ = to_px(x, y_lo)
            draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
            draw.text((px, height - bottom + 6), f"{int(x)}", fill="black", font=font, anchor="mt")
    draw.text(((left + width - right) / 2, height - 8), "epoch", fill="black", font=font, anchor="mb")
    draw.text((8, top - 8), "NLL (nats per image)", fill="black", font=font, anchor="lm")
    for index, (label, entries) in enumerate(runs.items()):
        color = COLORS[index % len(COLORS)]
        for key, dashed in (("train_nll", True), ("valid_nll", False)):
            line = [to_px(e["epoch"], e[key]) for e in entries if math.isfinite(e[key])]
            for i, (a, b) in enumerate(zip(line, line[1:])):
                if not dashed or i % 2 == 0 or len(line) < 8:
                    draw.line([a, b], fill=color, width=2)
            for px, py in line if len(line) < 60 else ():
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color if not dashed else "white", outline=color)
        legend_y = top + 10 + 18 * index
        draw.line([width - right - 230, legend_y, width - right - 200, legend_y], fill=color, width=2)
        draw.text((width - right - 195, legend_y), f"{label}: valid (train dashed)", fill="black", font=font,
                  anchor="lm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
