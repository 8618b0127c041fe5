"""The training catalog as a Ray Data stream: read and decode in Ray Data tasks, split across
the Ray Train workers (``distributed``), batched as the stage loop takes them.

A module of its own, importing neither torch nor MLflow nor the models at import time: Ray Data's
tasks and coordinators load the module that defines ``DecodeBatch`` to run it, and with the
worker's module (torch, diffusers, MLflow) every such process spent seconds importing what it
never uses (a 48-row dataset took 7-12 s to stream on 2 cores).
"""

from __future__ import annotations

import logging

import numpy as np

from .. import storage
from ..catalog import resize_pair
from ..cluster import parquet_reader_v1, quiet_data_progress
from ..errors import InvalidInputError
from ..inputs import fetch_pair

log = logging.getLogger(__name__)


class DecodeBatch:
    """Ray Data UDF: URIs -> uint8 image/mask arrays at training resolution (+ random flip).

    Bad rows are dropped here with a warning: a training set tolerates a few, and the backfill
    (not training) is where every row must be accounted for.
    """

    def __init__(self, resolution: int, flip: bool = True):
        self.resolution, self.flip = resolution, flip
        self.rng = np.random.default_rng()

    def __call__(self, batch: dict) -> dict:
        images, masks, cats = [], [], []
        for uri, mask_uri, cat in zip(batch["image_uri"], batch["mask_uri"], batch["category"]):
            try:
                img, m = fetch_pair(str(uri), str(mask_uri) if mask_uri else None)
            except InvalidInputError as e:
                log.warning("skipping training row %s: %s", uri, e)
                continue
            i, mm = resize_pair(img, m, self.resolution)
            if self.flip and self.rng.random() < 0.5:
                i, mm = i[..., ::-1], mm[..., ::-1]
            images.append(np.ascontiguousarray(i)), masks.append(np.ascontiguousarray(mm)), cats.append(str(cat))
        r = self.resolution
        return {
            "image": np.stack(images) if images else np.zeros((0, 3, r, r), np.uint8),
            "mask": np.stack(masks) if masks else np.zeros((0, 1, r, r), np.uint8),
            "category": np.array(cats, dtype=object),
        }


def training_dataset(catalog: str, resolution: int, cpus_per_task: float = 0.25):
    """Read + decode as fractional-CPU tasks: on a small machine the training workers hold
    most CPUs, and whole-CPU read tasks would never be scheduled (the stream would stall)."""
    import ray.data

    quiet_data_progress()
    fs, path = storage.pyarrow_filesystem(catalog)
    with parquet_reader_v1():
        ds = ray.data.read_parquet(path, filesystem=fs, columns=["category", "image_uri", "mask_uri"],
                                   ray_remote_args={"num_cpus": cpus_per_task})
    return ds.map_batches(DecodeBatch(resolution), batch_size=64, num_cpus=cpus_per_task)


def shard_batches(shard, batch_size: int):
    """Endless epochs over this worker's shard, as the stage loop's batch dicts."""
    import torch

    while True:
        for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                    local_shuffle_buffer_size=4 * batch_size):
            yield {"images": torch.from_numpy(b["image"]).float().div(255),
                   "masks": torch.from_numpy(b["mask"]).float(),
                   "categories": [str(c) for c in b["category"]]}
