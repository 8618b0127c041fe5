"""Cost benchmark: what best-of-4 and four placements cost against one image (issue 16).

    .venv/bin/python benchmarks/cost_benchmark.py            # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/cost_benchmark.py --quick    # a smoke run, numbers meaningless

Three configurations over the same products, the shipped ``checkpoints/tiny-64``, the same
DDIM steps and batch size, measured side by side in one run:

  base        one 1:1 placement, one candidate                     (what backdrop makes today)
  candidates  one 1:1 placement, ``candidates 4`` (best-of-4 under the model's QA scorer)
  placements  ``placements 1:1,4:5,16:9,9:16``, one candidate each

The cost is the runtime's own device-seconds (``runtime.Generated.device_seconds``: CPU process
time of this process, every torch thread included), summed over the products' outputs; wall time
is shown beside it. The sides alternate ``--repeats`` times and each keeps its best run, so other
work on a shared machine spoils a measurement rather than the comparison. QA scoring is not
device time and is outside the sums (its wall time is printed). Writes benchmarks/results/cost.md.
"""

from __future__ import annotations

import os
import platform as host
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from backdrop import config_files, runtime  # noqa: E402
from backdrop.catalog import read_catalog  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.demo.synthetic import SyntheticConfig, make_catalog  # noqa: E402
from backdrop.inputs import fetch_product  # noqa: E402
from backdrop.limits import DEFAULT_GUIDANCE  # noqa: E402
from backdrop.placements import parse_placements  # noqa: E402
from backdrop.quality import qa  # noqa: E402

FOUR = "1:1,4:5,16:9,9:16"


def measure(gen, products, config, placements: str, candidates: int, scorer, batch: int) -> dict:
    requests = [r for i, p in enumerate(products) for pl in parse_placements(placements)
                for r in p.placed(pl).requests([runtime.row_seed(0, str(i))])]
    t0, device, outputs = time.perf_counter(), 0.0, 0
    for i in range(0, len(requests), batch):
        chunk = requests[i:i + batch]
        if candidates == 1:
            results = runtime.generate_measured(gen, chunk, config)
        else:
            results = runtime.generate_best(gen, chunk, config, candidates, scorer)
        for r in results:
            assert isinstance(r, runtime.Generated), r
            device += r.device_seconds
            outputs += 1
    return {"device_s": device, "wall_s": time.perf_counter() - t0, "outputs": outputs,
            "images": outputs * candidates}


@dataclass
class CostBenchmarkRecipe:
    """The cost benchmark's model, products and batch (flags, ``--config``, ``key=value``)."""

    model: str = knob(str(ROOT / "checkpoints" / "tiny-64"))
    products: int = knob(16)
    steps: int = knob(20)
    batch: int = knob(16, "requests per runtime call (before x candidates)")
    repeats: int = knob(2)
    quick: bool = knob(False)
    output: str = knob(str(ROOT / "benchmarks" / "results" / "cost.md"))


def main(argv=None) -> int:
    args = config_files.parse_recipe(CostBenchmarkRecipe, argv, description=__doc__)
    if args.quick:
        args.products, args.steps, args.repeats = 4, 2, 1

    gen = runtime.load(args.model, device="cpu")
    config = runtime.inference(args.steps, 2.0)
    with tempfile.TemporaryDirectory(prefix="backdrop-cost-") as tmp:
        cat = make_catalog(tmp, SyntheticConfig(train_per_category=20, heldout_per_category=4, pairs_per_category=1))
        scorer = qa.scorer_for(gen) if gen.model.qa_state else qa.fit_scorer(cat["train"])
        rows = [r for r in read_catalog(cat["heldout"]).to_pylist() if r["category"] in gen.categories]
        rows = rows[:: max(1, len(rows) // args.products)][: args.products]
        products = [fetch_product(r) for r in rows]
        sides = {"base": ("1:1", 1), "candidates 4": ("1:1", 4), "placements x4": (FOUR, 1)}
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, (placements, n) in sides.items():
                m = measure(gen, products, config, placements, n, scorer, args.batch)
                if name not in best or m["device_s"] < best[name]["device_s"]:
                    best[name] = m
                print(f"{name:14s} {m['device_s']:7.2f} device-s {m['wall_s']:6.2f} s wall "
                      f"({m['outputs']} outputs)", flush=True)

    base = best["base"]
    lines = [
        "# Cost benchmark (benchmarks/cost_benchmark.py)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {host.node()}: {os.cpu_count()} CPUs, Python "
        f"{host.python_version()}; load average {os.getloadavg()[0]:.1f} (1 min) at the end.",
        f"`{os.path.relpath(args.model, ROOT)}`, {len(products)} held-out synthetic products, {args.steps} DDIM "
        f"steps, guidance {DEFAULT_GUIDANCE:g}, {args.batch} requests per runtime call, CPU; best of {args.repeats} alternating runs.",
        "Device-seconds: the runtime's CPU process time of the generating process (all torch threads), "
        "summed over the outputs.",
        "",
        "| configuration | outputs | images generated | device-s | device-s / product | cost x base | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in best.items():
        lines.append(f"| {name} | {m['outputs']} | {m['images']} | {m['device_s']:.2f} | "
                     f"{m['device_s'] / len(products):.3f} | {m['device_s'] / base['device_s']:.2f} | "
                     f"{m['wall_s']:.2f} |")
    lines += ["", "best-of-4 generates four images per output; four placements generate one image per "
              "placement at the placement's own latent size (4:5 and the 16:9 pair are 1.25x and 1.75x the "
              "pixels of 1:1 at 64 px), one denoising loop per size."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
