"""A training catalog prepared once: pixels decoded and resized, and latents per VAE, on local disk.

Why: the single-process trainer used to hold every decoded row in memory (1 MiB a row at
512 px: ~98 GiB per 100k rows) and to run the frozen VAE encoder on the same images every epoch
(53 % of a CG step and 60 % of a PG step at SD size, issue #20). Here a catalog is streamed once,
a few hundred rows at a time, into memory-mapped arrays under
``$BACKDROP_HOME/training-cache/<catalog, resolution>/``; batches are read from those files, so
memory stays flat whatever the catalog's size. For the CG and PG stages the target latents and
the masked-product latents are encoded once per VAE (keyed by a hash of its weights: a stage
that trains the VAE makes new ones) and read back instead of encoded.

What is cached is what does not change between epochs on this path (no random flips or crops).
The base stage's masks are drawn anew every step and the PG references are perturbed anew, so
those are still encoded live. The cache key is the catalog's rows (ids, categories, URIs), its
Parquet files' identities and the resolution: a file replaced *under the same URI* is not seen;
write a new catalog file (or delete the cache folder) when inputs change in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..catalog import catalog_files, iter_catalog, resize_pair
from ..errors import InvalidInputError
from ..inputs import fetch_pair
from ..settings import backdrop_home

log = logging.getLogger(__name__)

COLUMNS = ["product_id", "category", "image_uri", "mask_uri"]
META = "prepared.json"


def catalog_key(catalog_uri: str, resolution: int) -> tuple[str, int]:
    """(what identifies a prepared catalog: its rows, its files' identities and the resolution;
    how many rows it has)."""
    h = hashlib.sha256(f"{resolution}".encode())
    fs, files = catalog_files(catalog_uri)
    for path in files:
        info = fs.get_file_info(path)
        h.update(f"{path}:{info.size}:{info.mtime_ns}".encode())
    rows = 0
    for table in iter_catalog(catalog_uri, COLUMNS):
        rows += table.num_rows
        for col in COLUMNS:
            h.update("\x1f".join(map(str, table.column(col).to_pylist())).encode())
    return h.hexdigest()[:20], rows


def vae_key(vae: torch.nn.Module) -> str:
    """A hash of the VAE's weights and latent scale: latents from another VAE never match."""
    h = hashlib.sha256(str(vae.config.scaling_factor).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass
class PreparedCatalog:
    root: str
    resolution: int
    categories: list[str]
    product_ids: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # product_id -> why the row was left out

    @property
    def rows(self) -> int:
        return len(self.product_ids)

    @property
    def images(self) -> np.memmap:  # uint8 (N,3,R,R), memory-mapped
        return np.load(os.path.join(self.root, "images.npy"), mmap_mode="r")

    @property
    def masks(self) -> np.memmap:  # uint8 (N,1,R,R), memory-mapped
        return np.load(os.path.join(self.root, "masks.npy"), mmap_mode="r")

    # --- building -------------------------------------------------------------------------
    @classmethod
    def prepare(cls, catalog_uri: str, resolution: int, cache_dir: str | None = None,
                chunk_rows: int = 256) -> "PreparedCatalog":
        """The prepared catalog for ``catalog_uri`` at ``resolution``, built if absent (rows
        streamed ``chunk_rows`` at a time; bad rows left out and reported)."""
        key, total = catalog_key(catalog_uri, resolution)
        root = os.path.join(cache_dir or os.path.join(backdrop_home(), "training-cache"), key)
        if os.path.exists(os.path.join(root, META)):
            return cls.open(root)
        partial = f"{root}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        r = resolution
        images = np.lib.format.open_memmap(os.path.join(partial, "images.npy"), "w+", np.uint8, (total, 3, r, r))
        masks = np.lib.format.open_memmap(os.path.join(partial, "masks.npy"), "w+", np.uint8, (total, 1, r, r))
        ids, cats, skipped, n = [], [], {}, 0
        for table in iter_catalog(catalog_uri, COLUMNS, batch_rows=chunk_rows):
            for row in table.to_pylist():
                try:
                    image, mask = fetch_pair(row["image_uri"], row["mask_uri"])
                except InvalidInputError as e:
                    skipped[str(row["product_id"])] = str(e)
                    continue
                images[n], masks[n] = resize_pair(image, mask, r)
                ids.append(str(row["product_id"]))
                cats.append(str(row["category"]))
                n += 1
            log.info("prepared %d/%d training rows of %s", n + len(skipped), total, catalog_uri)
        if not n:
            shutil.rmtree(partial, ignore_errors=True)
            raise ValueError(f"{catalog_uri}: no usable training rows")
        images.flush(), masks.flush()
        del images, masks
        if n < total:  # left-out rows: keep the arrays dense
            for name in ("images", "masks"):
                full = np.load(os.path.join(partial, f"{name}.npy"), mmap_mode="r")
                dense = np.lib.format.open_memmap(os.path.join(partial, f"{name}.dense.npy"), "w+", np.uint8,
                                                  (n, *full.shape[1:]))
                dense[:] = full[:n]
                dense.flush()
                del full, dense
                os.replace(os.path.join(partial, f"{name}.dense.npy"), os.path.join(partial, f"{name}.npy"))
        if skipped:
            log.warning("left out %d bad training rows, e.g. %s", len(skipped), next(iter(skipped.items())))
        meta = {"catalog": catalog_uri, "resolution": r, "product_ids": ids, "categories": cats, "skipped": skipped}
        with open(os.path.join(partial, META), "w") as f:
            json.dump(meta, f)
        try:
            os.replace(partial, root)  # whole or not at all; a concurrent builder's copy may have won
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        return cls.open(root)

    @classmethod
    def open(cls, root: str) -> "PreparedCatalog":
        with open(os.path.join(root, META)) as f:
            meta = json.load(f)
        return cls(root, meta["resolution"], meta["categories"], meta["product_ids"], meta["skipped"])

    # --- latents ------------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, pipe, chunk_rows: int = 64) -> tuple[np.memmap, np.memmap]:
        """(target latents, masked-product latents) of every row under ``pipe``'s VAE, float16,
        encoded once per VAE and kept beside the pixels."""
        key = vae_key(pipe.model.vae)
        paths = [os.path.join(self.root, f"{name}-{key}.npy") for name in ("latents", "masked-latents")]
        if all(os.path.exists(p) for p in paths):
            return tuple(np.load(p, mmap_mode="r") for p in paths)  # type: ignore[return-value]
        images, masks, device = self.images, self.masks, pipe.model.device
        made = None
        for start in range(0, self.rows, chunk_rows):
            x = torch.from_numpy(np.array(images[start:start + chunk_rows])).float().div(255).to(device)
            m = torch.from_numpy(np.array(masks[start:start + chunk_rows])).float().to(device)
            target, masked = pipe.encode_images(x), pipe.encode_images(x * m)
            if made is None:
                made = [np.lib.format.open_memmap(f"{p}.partial", "w+", np.float16, (self.rows, *target.shape[1:]))
                        for p in paths]
            made[0][start:start + len(x)] = target.float().cpu().numpy()
            made[1][start:start + len(x)] = masked.float().cpu().numpy()
        for array, path in zip(made, paths):
            array.flush()
            os.replace(f"{path}.partial", path)
        log.info("encoded %d training rows' latents once (VAE %s)", self.rows, key)
        return tuple(np.load(p, mmap_mode="r") for p in paths)  # type: ignore[return-value]

    # --- batches ------------------------------------------------------------------------------
    def batches(self, batch_size: int, seed: int = 0,
                latents: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[dict]:
        """Endless shuffled batches read from disk (sorted indices per batch: sequential reads),
        with the cached ``latents`` and ``masked_latents`` when given."""
        images, masks = self.images, self.masks
        rng = np.random.default_rng(seed)
        n = self.rows
        while True:
            order = rng.permutation(n)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                idx = np.sort(order[i:i + batch_size])
                batch = {
                    "images": torch.from_numpy(images[idx]).float().div(255),
                    "masks": torch.from_numpy(masks[idx]).float(),
                    "categories": [self.categories[j] for j in idx],
                }
                if latents is not None:
                    batch["latents"] = torch.from_numpy(np.asarray(latents[0][idx]))
                    batch["masked_latents"] = torch.from_numpy(np.asarray(latents[1][idx]))
                yield batch
