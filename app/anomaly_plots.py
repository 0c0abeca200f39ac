"""Pictures for anomaly detection, drawn with Pillow: per-pixel -log p heatmaps and ROC curves."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from densreg.registry.datasets import levels_to_8bit

from .plotting import COLORS, nice_ticks

# anchors of a perceptually ordered map (black -> purple -> orange -> pale yellow, like "inferno")
HEAT_ANCHORS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)


def heat_colours(values: np.ndarray, top: float) -> np.ndarray:
    """Values >= 0 -> uint8 RGB (..., 3) on the heat map, 0 black, ``top`` and above pale yellow."""
    t = np.clip(np.asarray(values, dtype=np.float64) / max(top, 1e-12), 0, 1) * (len(HEAT_ANCHORS) - 1)
    low = np.minimum(np.floor(t).astype(int), len(HEAT_ANCHORS) - 2)
    frac = (t - low)[..., None]
    return ((1 - frac) * HEAT_ANCHORS[low] + frac * HEAT_ANCHORS[low + 1]).round().astype(np.uint8)


def _to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def heatmaps_png(images: np.ndarray, pixel_nll: np.ndarray, labels: list[str], num_categories: int,
                 cell: int = 112) -> bytes:
    """PNG bytes: one row per image, the image beside its -log p(x_i | x_<i) map (summed over channels)
    on one colour scale shared by all rows, with a colour bar in nats on the right and ``labels``
    (e.g. name and score) under each row."""
    images, pixel_nll = np.asarray(images), np.asarray(pixel_nll)
    count, channels, height, width = images.shape
    zoom = max(1, cell // max(height, width))
    w, h = width * zoom, height * zoom
    heat = pixel_nll.sum(axis=1)  # (N, H, W)
    top = float(heat.max()) if heat.size and heat.max() > 0 else 1.0
    font = ImageFont.load_default(size=12)
    pad, caption, bar_width = 10, 18, 110
    canvas = Image.new("RGB", (pad + 2 * (w + pad) + bar_width, pad + count * (h + caption + pad) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), "image", fill="black", font=font)
    draw.text((2 * pad + w, 4), "-log p(x_i | x_<i), nats", fill="black", font=font)
    for row in range(count):
        top_y = pad + 14 + row * (h + caption + pad)
        picture = levels_to_8bit(images[row], num_categories)
        picture = Image.fromarray(picture[0] if channels == 1 else picture[:3].transpose(1, 2, 0))
        canvas.paste(picture.convert("RGB").resize((w, h), Image.NEAREST), (pad, top_y))
        canvas.paste(Image.fromarray(heat_colours(heat[row], top)).resize((w, h), Image.NEAREST), (2 * pad + w, top_y))
        draw.text((pad, top_y + h + 3), labels[row] if row < len(labels) else "", fill="black", font=font)
    bar_left, bar_top, bar_h = pad + 2 * (w + pad) + 5, pad + 14, max(h, 120)
    ramp = heat_colours(np.linspace(top, 0, bar_h)[:, None].repeat(16, 1), top)
    canvas.paste(Image.fromarray(ramp), (bar_left, bar_top))
    draw.rectangle([bar_left, bar_top, bar_left + 16, bar_top + bar_h - 1], outline="black")
    for tick in nice_ticks(0.0, top, 5):
        y = bar_top + (1 - tick / top) * (bar_h - 1)
        draw.line([bar_left + 16, y, bar_left + 20, y], fill="black")
        draw.text((bar_left + 23, y), f"{tick:g}", fill="black", font=font, anchor="lm")
    draw.text((bar_left, bar_top + bar_h + 4), "nats", fill="black", font=font)
    return _to_png(canvas)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", size: int = 520) -> bytes:
    """PNG bytes: ROC curves {label: (false positive rates, true positive rates)} with a legend."""
    font = ImageFont.load_default(size=12)
    left, bottom, top, right = 50, 40, 30, 15
    inner = size - left - right
    canvas = Image.new("RGB", (size, size - right + top - 20 + 18 * math.ceil(len(curves) / 2)), "white")
    draw = ImageDraw.Draw(canvas)

    def to_px(x, y):
        return left + x * inner, top + (1 - y) * inner

    draw.rectangle([left, top, left + inner, top + inner], outline="black")
    draw.line([to_px(0, 0), to_px(1, 1)], fill=(200, 200, 200))
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x, y = to_px(tick, tick)
        draw.text((x, top + inner + 4), f"{tick:g}", fill="black", font=font, anchor="mt")
        draw.text((left - 4, y), f"{tick:g}", fill="black", font=font, anchor="rm")
    draw.text((left + inner / 2, top + inner + 20), "false positive rate", fill="black", font=font, anchor="mt")
    draw.text((4, top - 16), "true positive rate", fill="black", font=font)
    draw.text((left + inner / 2, 4), title, fill="black", font=font, anchor="mt")
    for index, (label, (fpr, tpr)) in enumerate(curves.items()):
        colour = COLORS[index % len(COLORS)]
        draw.line([to_px(x, y) for x, y in zip(fpr, tpr)], fill=colour, width=2)
        lx = left + (index % 2) * inner / 2
        ly = top + inner + 38 + 18 * (index // 2)
        draw.line([lx, ly, lx + 20, ly], fill=colour, width=3)
        draw.text((lx + 25, ly), label, fill="black", font=font, anchor="lm")
    return _to_png(canvas)
