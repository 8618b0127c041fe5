"""Reading catalog tables (Parquet, local or ``s3://``) and turning rows into model inputs.

Importing this module does not import torch: the batch job's CPU stages fetch and decode rows
with :func:`backdrop.inputs.fetch_product` in light worker processes; only the training path needs tensors.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from . import storage


REQUIRED_COLUMNS = ("product_id", "category", "image_uri", "mask_uri")
# What generation reads from a row (``reference_mask_uri``: the reference's product mask, optional;
# ``brand_style``: a brand style kit, backdrop.brands, instead of a reference).
GENERATION_COLUMNS = ("product_id", "category", "image_uri", "mask_uri", "reference_uri",
                      "reference_mask_uri", "prompt", "brand_style")


# The splits ``backdrop synth`` writes into a catalog directory, one Parquet file each.
SPLITS = ("train", "heldout", "pairs")


def catalog_splits(directory: str) -> dict[str, str]:
    """Split -> Parquet URI of a catalog directory (``backdrop synth``'s layout): what the
    evaluation and the quality benchmarks read a catalog by."""
    return {split: storage.join(directory, f"{split}.parquet") for split in SPLITS}


def read_catalog(uri: str, columns: list[str] | None = None):
    """A catalog as a pyarrow Table (a Parquet file or a directory/prefix of them)."""
    fs, path = storage.pyarrow_filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=columns)
    missing = [c for c in (columns or REQUIRED_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: catalog lacks required columns {missing}")
    return table


def catalog_files(uri: str):
    """(pyarrow filesystem, Parquet paths) of a catalog: ``uri`` itself, or every ``*.parquet``
    under a directory or prefix, sorted so that every reader sees the rows in the same order."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"no catalog at {uri}")
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet")) if fs.isdir(path) else [path]
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {uri}")
    return storage.pyarrow_filesystem(uri)[0], files


def iter_catalog(uri: str, columns: list[str] | None = None, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """Stream a catalog's rows in order, ``batch_rows`` at a time (missing columns are skipped)."""
    import pyarrow.dataset as pads

    fs, files = catalog_files(uri)
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    present = [c for c in columns if c in dataset.schema.names] if columns else None
    for batch in dataset.to_batches(columns=present, batch_size=batch_rows):
        yield pa.Table.from_batches([batch])


def normalize_rows(table: pa.Table, columns: tuple[str, ...] = GENERATION_COLUMNS) -> pa.Table:
    """Exactly ``columns``, as strings; an optional column the catalog lacks becomes nulls."""
    cols = {
        name: pc.cast(table[name], pa.string()) if name in table.column_names else pa.nulls(len(table), pa.string())
        for name in columns
    }
    return pa.table(cols)


def resize_pair(image: Image.Image, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (3,R,R) image and uint8 (1,R,R) binary mask at model resolution."""
    img = np.asarray(image.convert("RGB").resize((resolution, resolution), Image.BICUBIC))
    m = Image.fromarray((mask > 0.5).astype(np.uint8) * 255).resize((resolution, resolution), Image.NEAREST)
    return img.transpose(2, 0, 1), (np.asarray(m) > 127).astype(np.uint8)[None]


