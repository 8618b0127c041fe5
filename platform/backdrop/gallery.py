"""Contact sheets: pictures people would rather look at than read."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def masked_product(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The product on a neutral grey, as CG sees it."""
    arr = np.asarray(image.convert("RGB")).copy()
    arr[mask <= 0.5] = 128
    return Image.fromarray(arr)


def contact_sheet(
    rows: list[list[Image.Image | None]],
    cell: int = 128,
    row_labels: list[str] | None = None,
    column_labels: list[str] | None = None,
    pad: int = 4,
) -> Image.Image:
    """A grid of images (None leaves a blank cell), with optional labels on the left/top."""
    ncols = max((len(r) for r in rows), default=1)
    left = 110 if row_labels else 0
    top = 18 if column_labels else 0
    sheet = Image.new("RGB", (left + ncols * (cell + pad) + pad, top + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels or []):
        draw.text((left + pad + c * (cell + pad), 3), label, fill="black")
    for r, row in enumerate(rows):
        y = top + pad + r * (cell + pad)
        if row_labels:
            draw.text((4, y + cell // 2 - 6), row_labels[r][:18], fill="black")
        for c, im in enumerate(row):
            if im is not None:
                sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (left + pad + c * (cell + pad), y))
    return sheet
