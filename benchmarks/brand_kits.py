"""Brand style kits against the same references sent inline (issue #24): quality and speed.

    .venv/bin/python benchmarks/brand_kits.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/brand_kits.py --quick    # a smoke run, numbers meaningless

One kit per category of a synthetic catalog (the category's reference ads from its pairs
split, ``backdrop.brands``), in a private registry. The same products, the shipped
``checkpoints/tiny-64``, the same DDIM steps, through the in-process backfill
(``run_backfill``, executor local), side by side in one run:

  kit        each row names its category's kit (``brand_style``); the run picks a reference by seed
  inline     each row sends that very reference as ``reference_uri`` (the path before kits)
  wrong kit  each row names the *next* category's kit            (negative control)
  no style   no reference at all: CG alone                        (negative control)

Reference similarity (``quality.metrics.reference_similarity``: background colour features,
centred on the mean of the real ads) is measured against the reference the kit picked for the
row, for every configuration; the controls must score below the kit. Wall time per image is
the whole run (plan with its style pins, load, generate, write) over its rows, after one untimed
warm-up run (the model's first load); the load stage alone is timed too, with the styles pinned
as a run's driver pins them (where the two paths differ: the inline row reads its reference
file, the kit row takes the pinned version's bytes from memory; both decode them alike). The
sides alternate ``--repeats`` times and each keeps its best. Writes benchmarks/results/brand_kits.{md,json}.
"""

from __future__ import annotations

import json
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

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from backdrop import config_files  # noqa: E402
from backdrop.config_files import knob  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "tiny-64"


@dataclass
class BrandKitsRecipe:
    """The brand-kit benchmark's catalog, steps and repeats (flags, ``--config``, ``key=value``)."""

    categories: int = knob(8, "kits (one per category of the synthetic catalog)")
    per_category: int = knob(4, "products (and kit references) per category")
    steps: int = knob(20)
    repeats: int = knob(2)
    quick: bool = knob(False)
    results_dir: str = knob(str(ROOT / "benchmarks" / "results"))


def main(argv=None) -> int:
    a = config_files.parse_recipe(BrandKitsRecipe, argv, description=__doc__)
    if a.quick:
        a.categories, a.per_category, a.steps, a.repeats = 3, 1, 2, 1
    work = Path(tempfile.mkdtemp(prefix="backdrop-kits-"))
    os.environ["BACKDROP_HOME"] = str(work / "home")  # a private registry for the kits
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["BACKDROP_ALLOW_INPUTS"] = str(work)

    from backdrop import brands, runtime
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.manifest import read_records
    from backdrop.batch.records import load_items
    from backdrop.batch.run import run_backfill
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog
    from backdrop.imaging import load_reference
    from backdrop.quality import metrics
    from backdrop.settings import configure_logging

    configure_logging()
    catalog = make_catalog(str(work / "catalog"), SyntheticConfig(
        num_categories=a.categories, train_per_category=0, heldout_per_category=0, pairs_per_category=a.per_category))
    pairs = pq.read_table(catalog["pairs"]).to_pylist()
    categories = sorted({r["category"] for r in pairs})
    for c in categories:  # the category's reference ads are its brand's kit
        mine = [r for r in pairs if r["category"] == c]
        brands.add_kit(c, [r["reference_uri"] for r in mine], [r["reference_mask_uri"] for r in mine])
    kits = {c: brands.load_kit(c, "1") for c in categories}
    following = dict(zip(categories, categories[1:] + categories[:1]))

    base = [{k: r[k] for k in ("product_id", "category", "image_uri", "mask_uri")} for r in pairs]
    picks = {r["product_id"]: kits[r["category"]].pick(runtime.row_seed(0, r["product_id"])) for r in base}
    for pid, (image, mask) in picks.items():  # the inline path's files: exactly the kit's bytes
        (work / f"{pid}-ref.png").write_bytes(image)
        (work / f"{pid}-ref-mask.png").write_bytes(mask)
    rows = {
        "kit": [{**r, "brand_style": r["category"]} for r in base],
        "inline": [{**r, "reference_uri": str(work / f"{r['product_id']}-ref.png"),
                    "reference_mask_uri": str(work / f"{r['product_id']}-ref-mask.png")} for r in base],
        "wrong kit": [{**r, "brand_style": following[r["category"]]} for r in base],
        "no style": base,
    }
    for name, table in rows.items():
        pq.write_table(pa.Table.from_pylist(table), work / f"{name.replace(' ', '-')}.parquet")

    def backfill(name: str, out: Path):
        config = BackfillConfig(catalog=str(work / f"{name.replace(' ', '-')}.parquet"), model=str(CHECKPOINT),
                                output=str(out), steps=a.steps, executor="local", batch_size=8)
        return run_backfill(config)

    backfill("no style", work / "out" / "warm-up")  # the model's first load and first loop, untimed
    pins = brands.StylePins()  # what a run's driver does once: pin every style its rows name
    for c in categories:
        pins.pin(c)
    best: dict[str, dict] = {}
    for repeat in range(a.repeats):
        for name in rows:
            out = work / "out" / f"{name.replace(' ', '-')}-{repeat}"
            t0 = time.perf_counter()
            result = backfill(name, out)
            wall = time.perf_counter() - t0
            assert result.ok == len(base) and result.failed == 0, result.summary()
            t0 = time.perf_counter()
            load_items([{**r, "placement": "photo"} for r in rows[name]], styles=pins, seed=0)
            load_s = time.perf_counter() - t0
            if name not in best or wall < best[name]["wall_s"]:
                best[name] = {"wall_s": wall, "load_s": load_s, "output": str(out)}
            else:
                best[name]["load_s"] = min(best[name]["load_s"], load_s)

    # reference similarity against the reference each row's kit picked
    refs = {pid: load_reference(image, mask) for pid, (image, mask) in picks.items()}
    ref_feats = np.stack([metrics.background_features(*refs[r["product_id"]]) for r in base])
    center = ref_feats.mean(0)
    report = {}
    outputs = {}
    for name, m in best.items():
        records = {r["product_id"]: r for r in read_records(m["output"]).to_pylist()}
        images = [np.asarray(Image.open(records[r["product_id"]]["output_uri"]).convert("RGB")) for r in base]
        masks = [np.asarray(Image.open(r["mask_uri"]).convert("L")) > 127 for r in base]
        feats = np.stack([metrics.background_features(im, mk) for im, mk in zip(images, masks)])
        per_row = metrics.cosine(feats - center, ref_feats - center)
        outputs[name] = images
        report[name] = {"reference_similarity": float(per_row.mean()), "std": float(per_row.std()),
                        "wall_s_per_image": m["wall_s"] / len(base), "load_ms_per_row": 1000 * m["load_s"] / len(base)}
    identical = sum(np.array_equal(x, y) for x, y in zip(outputs["kit"], outputs["inline"]))
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": host.node(),
        "cpus": os.cpu_count(), "products": len(base), "categories": len(categories), "steps": a.steps,
        "repeats": a.repeats, "quick": a.quick, "kit_equals_inline_pixels": f"{identical}/{len(base)}",
        "kit_over_inline_time": report["kit"]["wall_s_per_image"] / report["inline"]["wall_s_per_image"],
        "controls_below_kit": all(report[c]["reference_similarity"] < report["kit"]["reference_similarity"]
                                  for c in ("wrong kit", "no style")),
        "configs": report, "recipe": config_files.to_yaml(a),
    }
    write(summary, Path(a.results_dir))
    print(json.dumps(summary, indent=2))
    return 0


def write(summary: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    name = "brand_kits-quick" if summary["quick"] else "brand_kits"
    (results / f"{name}.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Brand style kits vs inline references ({summary['date']}, {summary['cpus']} CPUs, "
        f"{summary['products']} products in {summary['categories']} categories, {summary['steps']} DDIM steps, "
        f"best of {summary['repeats']})", "",
        "| configuration | reference similarity (mean, std) | wall s / image | load stage ms / row |",
        "| --- | --- | --- | --- |",
    ]
    for config, r in summary["configs"].items():
        lines.append(f"| {config} | {r['reference_similarity']:.3f} ({r['std']:.3f}) | {r['wall_s_per_image']:.3f} | "
                     f"{r['load_ms_per_row']:.2f} |")
    lines += ["", f"Kit outputs equal to inline outputs, pixel for pixel: {summary['kit_equals_inline_pixels']}; "
              f"kit / inline wall time per image: {summary['kit_over_inline_time']:.2f}; both controls below the "
              f"kit: {summary['controls_below_kit']}.", "",
              "Command: `.venv/bin/python benchmarks/brand_kits.py`"]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
