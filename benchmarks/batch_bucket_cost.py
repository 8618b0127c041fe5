"""What batch-invariant loops cost: seconds per image by batch bucket, for a lone request and a
batch of 16, side by side in one process (the shipped tiny-64 on this machine's CPU, 20 DDIM steps,
CFG 2.0, best of 2 runs each).

    .venv/bin/python benchmarks/batch_bucket_cost.py

Bucket 16 with 16 rows is what the pipeline did before buckets (one loop per call); a bucket
pads every loop to its size, so a lone row pays for the whole bucket and a big batch is cut
into loops of that size. Writes benchmarks/results/batch_bucket_cost.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from backdrop import runtime  # noqa: E402
from backdrop.pipeline import GenerationRequest, InferenceConfig  # noqa: E402


def main() -> int:
    gen = runtime.load(str(ROOT / "checkpoints" / "tiny-64"), "cpu", threads=os.cpu_count())  # as the jobs do
    cats = gen.categories.names

    def request(i: int) -> GenerationRequest:
        rng = np.random.default_rng(i)
        mask = np.zeros((64, 64), np.float32)
        mask[16:48, 20:44] = 1
        return GenerationRequest(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), mask,
                                 cats[i % len(cats)], seed=i)

    config = InferenceConfig(20, 2.0)
    gen.pipe([request(0)], config)  # warm-up
    lines = ["| bucket | 1 row: s/image | 16 rows: s/image |", "| --- | --- | --- |"]
    for bucket in (1, 4, 8, 16):
        gen.pipe.batch_bucket = bucket
        cells = []
        for n in (1, 16):
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                gen.pipe([request(i) for i in range(n)], config)
                best = min(best, time.perf_counter() - t)
            cells.append(best / n)
        lines.append(f"| {bucket} | {cells[0]:.3f} | {cells[1]:.3f} |")
        print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "batch_bucket_cost.md"
    out.write_text("# Batch-invariant loops: cost by bucket (tiny-64, CPU, 20 DDIM steps)\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
