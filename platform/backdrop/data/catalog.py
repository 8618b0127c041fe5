"""Reading catalog tables (Parquet, local or ``s3://``) and turning rows into model inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from .. import storage
from ..errors import InvalidInputError
from ..imaging import load_product

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("product_id", "category", "image_uri", "mask_uri")
OPTIONAL_COLUMNS = ("brand", "reference_uri", "prompt")


def read_catalog(uri: str, columns: list[str] | None = None):
    """A catalog as a pyarrow Table (a Parquet file or a directory/prefix of them)."""
    fs, path = storage.pyarrow_filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: catalog lacks required columns {missing}")
    return table


def load_row(image_uri: str, mask_uri: str | None) -> tuple[Image.Image, np.ndarray]:
    """Fetch, decode and validate one product (typed ``InvalidInputError`` on bad input)."""
    image_bytes = storage.read_bytes(image_uri)
    mask_bytes = storage.read_bytes(mask_uri) if mask_uri else None
    return load_product(image_bytes, mask_bytes)


def resize_pair(image: Image.Image, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (3,R,R) image and uint8 (1,R,R) binary mask at model resolution."""
    img = np.asarray(image.convert("RGB").resize((resolution, resolution), Image.BICUBIC))
    m = Image.fromarray((mask > 0.5).astype(np.uint8) * 255).resize((resolution, resolution), Image.NEAREST)
    return img.transpose(2, 0, 1), (np.asarray(m) > 127).astype(np.uint8)[None]


@dataclass
class TrainingArrays:
    images: torch.Tensor  # uint8 (N,3,R,R)
    masks: torch.Tensor  # uint8 (N,1,R,R)
    categories: list[str]
    product_ids: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # product_id -> reason

    def as_dict(self) -> dict:
        return {"images": self.images, "masks": self.masks, "categories": self.categories}


def load_training_arrays(uri: str, resolution: int, limit: int | None = None) -> TrainingArrays:
    """Load a (small) training catalog into memory; bad rows are skipped and reported.

    This is the single-process path (tests, the tiny preset on one machine). The Ray Train
    job streams the same rows through Ray Data instead.
    """
    table = read_catalog(uri, columns=["product_id", "category", "image_uri", "mask_uri"])
    rows = table.to_pylist()[:limit]
    images, masks, cats, ids, skipped = [], [], [], [], {}
    for row in rows:
        try:
            img, m = load_row(row["image_uri"], row["mask_uri"])
        except InvalidInputError as e:
            skipped[row["product_id"]] = str(e)
            continue
        i, mm = resize_pair(img, m, resolution)
        images.append(i), masks.append(mm), cats.append(row["category"]), ids.append(row["product_id"])
    if skipped:
        log.warning("skipped %d bad training rows, e.g. %s", len(skipped), next(iter(skipped.items())))
    if not images:
        raise ValueError(f"{uri}: no usable training rows")
    return TrainingArrays(
        torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), cats, ids, skipped
    )
