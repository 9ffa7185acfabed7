"""The map gallery: every saved map drawn over its photo as a small PNG, inlined as a data URI.

Each map is min-max normalised on its own (its finite values), coloured with :data:`COLOURS` (a perceptually
ordered ramp, dark violet -> yellow) and blended over the photo in grey, more opaque where the map is higher, so
the photo shows through where the map is low. A map with no finite value is drawn as the grey photo alone and
titled "undefined". Maps larger than :data:`SIDE` pixels are area-downsampled first.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Iterable

import numpy as np

SIDE = 96
"""The longer side of a gallery image, in pixels."""
COLOURS = ((0.267, 0.005, 0.329), (0.231, 0.322, 0.545), (0.129, 0.569, 0.549), (0.369, 0.788, 0.384),
           (0.992, 0.906, 0.145))
"""Anchor colours of the map's ramp at 0, 1/4, 1/2, 3/4 and 1 (linear in between)."""


def ramp(v: np.ndarray) -> np.ndarray:
    """(..., 3) colours in [0, 1] of values ``v`` in [0, 1]."""
    anchors = np.asarray(COLOURS)
    pos = np.clip(v, 0, 1) * (len(anchors) - 1)
    i = np.minimum(pos.astype(int), len(anchors) - 2)
    t = (pos - i)[..., None]
    return anchors[i] * (1 - t) + anchors[i + 1] * t


def css_gradient() -> str:
    """The ramp as a CSS ``linear-gradient`` (the legend)."""
    stops = ", ".join(f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)}) {100 * k / (len(COLOURS) - 1):.0f}%"
                      for k, (r, g, b) in enumerate(COLOURS))
    return f"linear-gradient(to right, {stops})"


def _shrink(a: np.ndarray, side: int) -> np.ndarray:
    """(..., H, W) area-downsampled so that the longer side is at most ``side``."""
    import torch

    h, w = a.shape[-2:]
    if max(h, w) <= side:
        return a
    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    flat = t.reshape(-1, 1, h, w)
    return torch.nn.functional.adaptive_avg_pool2d(flat, size).reshape(*a.shape[:-2], *size).numpy()


def overlay(m: np.ndarray, photo: np.ndarray) -> tuple[np.ndarray, bool]:
    """(RGB uint8 (h, w, 3), defined) of map ``m`` (h, w) over ``photo`` (3, h, w) uint8."""
    m = _shrink(np.asarray(m, dtype=np.float32), SIDE)
    photo = _shrink(photo.astype(np.float32) / 255, SIDE)
    grey = photo.mean(0)[..., None].repeat(3, -1)
    finite = np.isfinite(m)
    if not finite.any():
        return (grey * 255).round().astype(np.uint8), False
    lo, hi = float(m[finite].min()), float(m[finite].max())
    v = np.where(finite, (m - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    alpha = (0.25 + 0.65 * v)[..., None]
    rgb = grey * (1 - alpha) + ramp(v) * alpha
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), True


def png_uri(rgb: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an (h, w, 3) uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_uri(photo: np.ndarray) -> str:
    return png_uri((np.clip(_shrink(photo.astype(np.float32), SIDE), 0, 255)).round().astype(np.uint8)
                   .transpose(1, 2, 0))


def gallery_html(batches: Iterable[dict], asked: dict, layers: list[str]) -> tuple[str, int]:
    """The gallery's HTML (one section per image: the photo, then a grid of methods x layers) and the number of
    map thumbnails in it. ``asked``: {canonical method: the name the user wrote}; ``layers``: the column order."""
    e = html.escape
    parts, count = [], 0
    for batch in batches:
        index, maps, photos = batch["index"], batch["maps"], batch["photos"]
        keys = [tuple(k) for k in index["keys"]]
        methods = list(dict.fromkeys(m for m, _ in keys))
        cols = [layer for layer in layers if any(k[1] == layer for k in keys)]
        cols += [layer for layer in dict.fromkeys(k[1] for k in keys) if layer not in cols]
        where = {k: i for i, k in enumerate(keys)}
        for j, image in enumerate(index["images"]):
            c, name = index["classes"][j], index["names"][j]
            label = f"{name} (class {c})" if name else f"class {c}"
            parts.append(f'<section class="image" data-image="{e(image)}"><h3>{e(image)} \u2014 explained: '
                         f'{e(label)}</h3><table class="grid"><tr><th><img class="photo" alt="photo {e(image)}" '
                         f'src="{photo_uri(photos[j])}"></th>'
                         + "".join(f'<th title="{e(layer)}">{e(_short(layer))}</th>' for layer in cols) + "</tr>")
            for m in methods:
                shown = asked.get(m, m)
                row = [f'<th class="method" title="{e(m)}">{e(shown)}</th>']
                for layer in cols:
                    k = where.get((m, layer))
                    if k is None:
                        row.append("<td></td>")
                        continue
                    rgb, defined = overlay(maps[k, j], photos[j])
                    note = "" if defined else " (undefined: no finite value)"
                    row.append(f'<td><img class="thumb" data-method="{e(m)}" data-layer="{e(layer)}" '
                               f'data-image="{e(image)}" alt="{e(shown)} at {e(layer)}" '
                               f'title="{e(shown)} at {e(layer)} on {e(image)}{note}" src="{png_uri(rgb)}"></td>')
                    count += 1
                parts.append("<tr>" + "".join(row) + "</tr>")
            parts.append("</table></section>")
    return "\n".join(parts), count


def _short(layer: str, width: int = 14) -> str:
    return layer if len(layer) <= width else "\u2026" + layer[-(width - 1):]
