"""Shadows and reflections: does a background hold its product like a surface would?

The product's pixels never change (the pipeline pastes them back), so whatever makes a product
look placed rather than cut out must be painted in the background around it. Two measures,
each on one image and its product mask, each compared with the same measure on the catalog's
real ads:

* **contact shadow**: the relative luminance drop in a band just under the product's base
  (its lowest row, across its width) against the background in the same rows beside it
  (``(L_beside - L_band) / L_beside``). Measured at the same rows, so a floor line or a
  vertical gradient does not count; 0 for no shadow, up to 1 for black.
* **reflection**: the correlation between the product mirrored about its base line and the
  background directly below it (RGB, each channel centred, over the pixels where the mirrored
  product would fall on background). A mirror image scores near 1, an unrelated floor near 0.

Both are ``None`` when an image leaves no room to measure (a product standing on the bottom
edge). The halo at the mask edge is QA's ``seam`` (``quality.qa.seam_score``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _luma(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    return arr @ np.array([0.299, 0.587, 0.114], np.float32)


def _extent(mask: np.ndarray):
    """``(mask, left, right, top, base)`` of the product, or ``None`` when there is none."""
    m = np.asarray(mask) > 0.5
    cols, rows = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
    return (m, cols[0], cols[-1], rows[0], rows[-1]) if len(cols) else None


def contact_shadow(image, mask: np.ndarray, band: float = 0.08) -> float | None:
    if (ext := _extent(mask)) is None:
        return None
    m, x0, x1, _, base = ext
    h, w = m.shape
    b = max(2, round(band * h))
    lo, hi = base + 1, min(h, base + 1 + b)
    if lo >= hi:
        return None
    luma = _luma(image)
    under = np.zeros_like(m)
    under[lo:hi, x0:x1 + 1] = True
    beside = np.zeros_like(m)
    width = x1 - x0 + 1
    beside[lo:hi, max(0, x0 - 2 * width):max(0, x0 - width // 2)] = True
    beside[lo:hi, min(w, x1 + 1 + width // 2):min(w, x1 + 1 + 2 * width)] = True
    under &= ~m
    beside &= ~m
    if under.sum() < 2 or beside.sum() < 2:
        return None
    ref = float(luma[beside].mean())
    return (ref - float(luma[under].mean())) / max(ref, 1.0)


def reflection(image, mask: np.ndarray, depth: float = 0.25) -> float | None:
    if (ext := _extent(mask)) is None:
        return None
    m, x0, x1, top, base = ext
    h = m.shape[0]
    k = min(base - top + 1, h - 1 - base, max(2, round(depth * h)))
    if k < 2:
        return None
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    below = rgb[base + 1:base + 1 + k, x0:x1 + 1]
    mirrored = rgb[base + 1 - k:base + 1, x0:x1 + 1][::-1]
    keep = m[base + 1 - k:base + 1, x0:x1 + 1][::-1] & ~m[base + 1:base + 1 + k, x0:x1 + 1]
    if keep.sum() < 8:
        return None
    # colour, centred per channel: a product's hue differs from its floor's far more than its
    # own grey levels vary, so a mirrored product shows in colour first
    a, b = mirrored[keep], below[keep]
    a, b = (a - a.mean(0)).ravel(), (b - b.mean(0)).ravel()
    if a.std() < 1e-3 or b.std() < 1e-3:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def harmony_scores(images, masks) -> dict[str, float | None]:
    """Mean contact shadow and reflection over the images that leave room to measure them."""
    out = {}
    for name, fn in (("contact_shadow", contact_shadow), ("reflection", reflection)):
        values = [v for v in (fn(im, mk) for im, mk in zip(images, masks)) if v is not None]
        out[name] = float(np.mean(values)) if values else None
        out[f"{name}_n"] = len(values)
    return out
