"""Ad placements: the canvases a product is laid on before its background is generated.

A retailer needs one image per ad surface, not one square per product. A placement is either
an aspect ratio (``4:5``, ``16:9``) or an exact slot in pixels (``300x250``); a list is written
``1:1,4:5,16:9,9:16``. :func:`place` lays the product on a canvas of the placement:

* the product's own pixels are never resampled: its bounding-box crop (image and mask) is
  copied onto the canvas at the product image's own pixel scale, so it is bit-identical in
  every placement;
* a ratio's canvas is sized so the product keeps its share of the short side (``Layout.scale``
  overrides that share); a ``WxH`` slot is exactly that many pixels, and a product that does
  not fit it unresampled is an :class:`InvalidParameterError` (use a ratio instead);
* the product is centred horizontally and rests on the lower third (``Layout.anchor``: where
  the bottom centre of its box goes, as fractions of the canvas), moved inwards when it would
  stick out, and the canvas grows when the product is larger than the requested share allows,
  so a product is never cut.

Everything off the product on the canvas is background (mask 0), to be generated. No torch
here: placements are planned and validated before any tensor is built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ImageTooLargeError, InvalidParameterError
from .limits import DEFAULT_LIMITS, Limits

_RATIO = re.compile(r"^\s*(\d{1,5})\s*:\s*(\d{1,5})\s*$")
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


@dataclass(frozen=True)
class Placement:
    """One ad surface: an aspect ratio (``size`` None) or an exact pixel slot (``size`` set)."""

    name: str  # the canonical spelling, e.g. "16:9" or "300x250"; a manifest column later
    ratio: tuple[int, int]  # width : height, reduced
    size: tuple[int, int] | None = None  # exact canvas (width, height) for a WxH slot

    @property
    def aspect(self) -> float:
        return self.ratio[0] / self.ratio[1]


SQUARE = Placement("1:1", (1, 1))


def parse_placement(text: str, limits: Limits = DEFAULT_LIMITS) -> Placement:
    """``"A:B"`` (any positive ratio) or ``"WxH"`` (an exact slot in pixels)."""
    if not isinstance(text, str):
        raise InvalidParameterError(f"a placement is a string like '16:9' or '300x250', got {text!r}")
    if m := _RATIO.match(text):
        w, h = int(m[1]), int(m[2])
        size = None
    elif m := _SIZE.match(text):
        w, h = int(m[1]), int(m[2])
        size = (w, h)
    else:
        hint = " (an unquoted A:B in YAML reads as a base-60 number: quote it, '1:1')" if text.isdigit() else ""
        raise InvalidParameterError(f"placement {text!r} is neither a ratio 'A:B' nor a size 'WxH'{hint}")
    if w <= 0 or h <= 0:
        raise InvalidParameterError(f"placement {text!r} has a zero side")
    aspect = w / h
    if not 1 / limits.max_aspect_ratio <= aspect <= limits.max_aspect_ratio:
        raise InvalidParameterError(
            f"placement {text!r} is more elongated than {limits.max_aspect_ratio:g}:1")
    if size is not None and w * h > limits.max_pixels:
        raise ImageTooLargeError(f"placement {text!r} has {w * h} pixels, over the limit of {limits.max_pixels}")
    g = math.gcd(w, h)
    ratio = (w // g, h // g)
    return Placement(f"{w}x{h}" if size else f"{ratio[0]}:{ratio[1]}", ratio, size)


def parse_placements(text: str | list[str] | None, limits: Limits = DEFAULT_LIMITS) -> list[Placement]:
    """A comma-separated list (or a list of strings); duplicates are dropped, order is kept.

    ``None`` or an empty string is the one square placement (today's behaviour).
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return [SQUARE]
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[Placement] = []
    for part in parts:
        p = parse_placement(part, limits)
        if p not in out:
            out.append(p)
    if not out:
        raise InvalidParameterError("placements is empty")
    if len(out) > limits.max_placements:
        raise InvalidParameterError(f"{len(out)} placements, over the limit of {limits.max_placements}")
    return out


@dataclass(frozen=True)
class Layout:
    """Where and how large the product sits on every canvas.

    ``scale``: the product box's longer side as a share of the canvas's short side (None: the
    share it has in its own photo). ``anchor``: where the bottom centre of the product box
    goes, as (x, y) fractions of the canvas (default: centred, resting on the lower third).
    """

    scale: float | None = None
    anchor: tuple[float, float] = (0.5, 2 / 3)

    def __post_init__(self) -> None:
        if self.scale is not None and not (math.isfinite(self.scale) and 0 < self.scale <= 1):
            raise InvalidParameterError(f"placement scale must be in (0, 1], got {self.scale!r}")
        if not all(math.isfinite(a) and 0 <= a <= 1 for a in self.anchor):
            raise InvalidParameterError(f"placement anchor must be two fractions in [0, 1], got {self.anchor!r}")


@dataclass(frozen=True)
class Placed:
    """A product on one canvas: the canvas image and mask, and where the product box landed."""

    placement: Placement
    image: Image.Image  # RGB canvas, product pixels copied in, the rest black (to be generated)
    mask: np.ndarray  # canvas-sized, 1.0 = product
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the product box on the canvas
    source_box: tuple[int, int, int, int]  # the same box in the product photo


def product_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right/bottom exclusive, of the mask's product pixels."""
    keep = np.asarray(mask) > 0.5
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    if not len(rows):
        from .errors import EmptyMaskError

        raise EmptyMaskError("the mask selects no product pixel")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def canvas_size(placement: Placement, photo: tuple[int, int], box: tuple[int, int, int, int],
                layout: Layout = Layout()) -> tuple[int, int]:
    """The canvas (width, height) of ``placement`` for a product box in a photo of size ``photo``."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    if placement.size is not None:
        w, h = placement.size
        if bw > w or bh > h:
            raise InvalidParameterError(
                f"the product ({bw}x{bh} px) does not fit placement {placement.name} without resampling; "
                f"use a ratio such as {placement.ratio[0]}:{placement.ratio[1]}")
        return w, h
    share = layout.scale if layout.scale is not None else max(bw, bh) / min(photo)
    short = max(1, round(max(bw, bh) / share))
    a = placement.aspect
    w, h = (round(short * a), short) if a >= 1 else (short, round(short / a))
    if bw > w or bh > h:  # never cut the product: grow the canvas, keeping the ratio
        grow = max(bw / w, bh / h)
        w, h = math.ceil(w * grow), math.ceil(h * grow)
    return w, h


def place(image: Image.Image, mask: np.ndarray, placement: Placement, layout: Layout = Layout(),
          limits: Limits = DEFAULT_LIMITS) -> Placed:
    """Copy the product box (pixels and mask, unresampled) onto a canvas of ``placement``."""
    src = np.asarray(image.convert("RGB"))
    m = (np.asarray(mask) > 0.5).astype(np.float32)
    box = product_box(m)
    w, h = canvas_size(placement, image.size, box, layout)
    if w * h > limits.max_pixels:
        raise ImageTooLargeError(f"placement {placement.name} needs a {w}x{h} canvas, over the limit of "
                                 f"{limits.max_pixels} pixels")
    bw, bh = box[2] - box[0], box[3] - box[1]
    left = min(max(round(layout.anchor[0] * w - bw / 2), 0), w - bw)
    top = min(max(round(layout.anchor[1] * h) - bh, 0), h - bh)
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas_mask = np.zeros((h, w), np.float32)
    crop = m[box[1]:box[3], box[0]:box[2]]
    # only product pixels are copied: the box's own background is generated like the rest
    keep = crop > 0.5
    canvas[top:top + bh, left:left + bw][keep] = src[box[1]:box[3], box[0]:box[2]][keep]
    canvas_mask[top:top + bh, left:left + bw] = crop
    return Placed(placement, Image.fromarray(canvas), canvas_mask, (left, top, left + bw, top + bh), box)
