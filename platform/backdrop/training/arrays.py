"""A small training catalog in memory as tensors: the single-process trainer's input.

It lives here, not in ``backdrop.catalog``, so that reading catalogs never imports torch (the
batch job's CPU stages and the leaves stay light).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..catalog import read_catalog, resize_pair
from ..errors import InvalidInputError
from ..inputs import fetch_pair

log = logging.getLogger(__name__)


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
            img, m = fetch_pair(row["image_uri"], row["mask_uri"])
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
