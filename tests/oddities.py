"""A catalog of real-world oddities (issue #22): the photos retailers actually have, and URIs
that cannot even be asked about. Shared by the in-process and the Ray executor tests.

:func:`oddity_rows` writes the images under ``root`` and returns the rows with what each must
become: ``None`` for ok, else its failure code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MALFORMED_URIS = {
    "bad-bucket": "s3://Bad_Bucket!/x.png",
    "unknown-scheme": "gopher://example/x.png",
    "nul-byte": "/tmp/a\x00b.png",
    "huge-uri": "s3://bucket/" + "k" * 10_000,
    "unicode": "s3://bücket/日本.png",
    "empty-bucket": "s3:///x.png",
}


def oddity_rows(root: Path, row: dict) -> tuple[list[dict], dict[str, str | None]]:
    """``row`` (a product with its mask) re-encoded every odd way, plus the malformed URIs."""
    root.mkdir(parents=True, exist_ok=True)
    image = Image.open(row["image_uri"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; shown upright: the mask matches what is shown
    image.transpose(Image.Transpose.ROTATE_90).save(root / "exif-rotated.jpg", exif=exif, quality=95)
    image.convert("CMYK").save(root / "cmyk.jpg", quality=95)
    Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257).save(root / "grey-16bit.png")
    image.quantize(64).save(root / "palette.png")
    opaque = image.convert("RGBA")
    opaque.putalpha(255)
    opaque.save(root / "opaque-cutout.png")  # a cut-out whose alpha keeps every pixel: no background
    near = np.dstack([np.asarray(image.resize((400, 328))), np.full((328, 400), 255, np.uint8)])
    near[0, :3, 3] = 0  # a handful of transparent pixels: background at full size, none at the model's
    Image.fromarray(near, "RGBA").save(root / "near-opaque-cutout.png")

    expected: dict[str, str | None] = {}
    rows = []
    for name, mask_too in [("exif-rotated.jpg", True), ("cmyk.jpg", True), ("grey-16bit.png", True),
                           ("palette.png", True), ("opaque-cutout.png", False), ("near-opaque-cutout.png", False)]:
        pid = name.split(".")[0]
        rows.append({**row, "product_id": pid, "image_uri": str(root / name),
                     "mask_uri": row["mask_uri"] if mask_too else None})
        expected[pid] = "full_mask" if "cutout" in name else None
    for pid, uri in MALFORMED_URIS.items():
        rows.append({**row, "product_id": pid, "image_uri": uri})
        expected[pid] = "input_out_of_scope"  # refused before anyone asks the store about it
    return rows, expected
