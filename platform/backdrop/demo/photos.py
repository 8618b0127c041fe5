"""A catalog from any folder of photographs: textures no procedural family draws.

``backdrop synth --photos DIR`` makes one category per sub-folder of ``DIR``; every background
is a square crop of one of that sub-folder's photographs, with a product of the demo table
composited on it exactly as in the synthetic catalog (opaque, exact mask). This is how a user
tries adaptation on their own textures, and how the quality bar measures adaptation on
catalogs outside the shipped model's prior (``benchmarks/quality_bar.py --photos``).

Held-out rows never share pixels with training rows. Two ways to split a photograph:

* ``band`` (the default, what the first photo numbers used): cut along its long side; training
  crops come from the first ``1 - heldout_share`` of it and held-out and pair crops from the rest.
  A landscape's far end often has its own palette (more sky, a darker shore), so this split also
  asks a model for colours its training never showed.
* ``checker``: a 2x2 grid of blocks; training crops come from one diagonal's blocks, held-out and
  pair crops from the other's. Both parts reach every side of the photo (top and bottom, left and
  right), so held-out crops show the photograph's palette, still without a shared pixel.

Crop sizes are drawn on the same absolute scale (a share of the photo's short side) in both
parts, so held-out textures have the training scale. Every crop depends
only on ``(seed, split, category, index, part)``; a pair's product row and reference ad are
crops of the same photograph (its ``brand``), the way a brand's ads share a look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidParameterError
from .synthetic import SPLITS, Sample, composite_product, write_catalog

PHOTO_SPLITS = ("band", "checker")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WORKING_SIDE = 640  # photos are shrunk to this short side once; crops are far smaller


@dataclass(frozen=True)
class PhotoCatalogConfig:
    train_per_category: int = 160
    heldout_per_category: int = 24
    pairs_per_category: int = 8
    resolution: int = 64
    seed: int = 0
    heldout_share: float = 0.35  # of each photo's long side (split="band")
    split: str = "band"  # "band" or "checker" (the module docstring)
    crop: tuple[float, float] = (0.25, 0.4)  # crop side, as a share of the photo's short side


def photo_folders(photos_dir: str) -> dict[str, list[Path]]:
    """Category name -> its photographs, one category per sub-folder (sorted, reproducible)."""
    root = Path(photos_dir)
    if not root.is_dir():
        raise InvalidParameterError(f"--photos {photos_dir}: not a directory")
    folders = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if photos:
            folders[_category_name(sub.name)] = photos
    if len(folders) < 2:
        raise InvalidParameterError(f"--photos {photos_dir}: needs at least 2 sub-folders of photographs "
                         f"({', '.join(PHOTO_SUFFIXES)}), one per category; found {len(folders)}")
    return folders


def _category_name(folder: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-") or "category"


@lru_cache(maxsize=64)
def _load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = WORKING_SIDE / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        return np.asarray(im)


def photo_crop(photo: np.ndarray, heldout: bool, rng: np.random.Generator, config: PhotoCatalogConfig) -> np.ndarray:
    """A square crop of ``photo`` from its training or held-out part, at ``config.resolution``."""
    h, w = photo.shape[:2]
    top, left, bottom, right = _part(h, w, heldout, rng, config)
    side = int(round(rng.uniform(*config.crop) * min(h, w)))
    side = max(8, min(side, bottom - top, right - left))
    if w >= h:  # the long side's offset is drawn first (crops of the first photo catalogs stay the same)
        x = int(rng.integers(left, right - side + 1))
        y = int(rng.integers(top, bottom - side + 1))
    else:
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(left, right - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side])
    return np.asarray(crop.resize((config.resolution, config.resolution), Image.LANCZOS))


def _part(h: int, w: int, heldout: bool, rng: np.random.Generator, config: PhotoCatalogConfig) -> tuple[int, ...]:
    """(top, left, bottom, right) of the region a crop of this split is drawn inside."""
    if config.split == "checker":
        row = int(rng.integers(2))
        col = (row + int(heldout)) % 2  # train: (0, 0) or (1, 1); held-out: (0, 1) or (1, 0)
        return row * h // 2, col * w // 2, (row + 1) * h // 2, (col + 1) * w // 2
    if config.split != "band":
        raise InvalidParameterError(f"photo split {config.split!r}: one of {', '.join(PHOTO_SPLITS)}")
    if w >= h:
        cut = int(round(w * (1 - config.heldout_share)))
        return (0, cut, h, w) if heldout else (0, 0, h, cut)
    cut = int(round(h * (1 - config.heldout_share)))
    return (cut, 0, h, w) if heldout else (0, 0, cut, w)


def make_photo_catalog(photos_dir: str, output: str, config: PhotoCatalogConfig = PhotoCatalogConfig()) -> dict[str, str]:
    """Write a catalog of products on crops of ``photos_dir``'s photographs (see the module docstring)."""
    folders = photo_folders(photos_dir)
    names = list(folders)

    def draw(split: str, ci: int, i: int, part: int) -> tuple[str, Sample]:
        photos = folders[names[ci]]
        pick = np.random.default_rng([int(config.seed), SPLITS[split], ci, int(i)])  # shared by a pair's two parts
        photo = photos[int(pick.integers(len(photos)))]
        rng = np.random.default_rng([int(config.seed), SPLITS[split], ci, int(i), int(part), 0xF0])
        background = photo_crop(_load(str(photo)), split != "train", rng, config)
        return f"{names[ci]}-{_category_name(photo.stem)}", composite_product(background, ci, rng)

    return write_catalog(output, names, draw, {"train": config.train_per_category,
                                               "heldout": config.heldout_per_category,
                                               "pairs": config.pairs_per_category})
