"""Best-of-4 against best-of-1 on the held-out split, and a gallery of the four placements.

    .venv/bin/python benchmarks/best_of_n.py            # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/best_of_n.py --quick    # a smoke run, numbers meaningless

The shipped ``checkpoints/tiny-64`` generates every held-out product of the synthetic catalog
(``demo.synthetic.make_catalog``, seed 0, the catalog the checkpoint was trained on) with four
candidates under the QA scorer (``quality/qa.py``) fitted on the **train** split. Best-of-1 is
candidate 0 (the output's own seed: plain generation), best-of-4 the candidate the scorer keeps.

The judge is ``quality/evaluation.py``'s: category consistency is nearest-centroid accuracy
against centroids of the held-out split's **real** images; the scorer's category fit is a
logistic regression fitted on the **train** split, so selection and judge are different
functions on different data. Product leak is reported twice: with the train palette
(``evaluation.py``'s, and the same palette as the scorer's own leak component, so a gain there
is partly by construction) and with a palette fitted on the held-out real images (independent).

Writes benchmarks/results/best_of_n.md (+ .json) and placements-gallery.png (four placements
for one product per category; the product's pixels are checked bit-identical in each).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from backdrop import config_files, runtime  # noqa: E402
from backdrop.catalog import read_catalog  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.demo.synthetic import SyntheticConfig, make_catalog  # noqa: E402
from backdrop.gallery import contact_sheet, masked_product  # noqa: E402
from backdrop.limits import DEFAULT_GUIDANCE  # noqa: E402
from backdrop.inputs import fetch_product  # noqa: E402
from backdrop.placements import parse_placements  # noqa: E402
from backdrop.quality import evaluation, metrics, qa  # noqa: E402

FOUR = "1:1,4:5,16:9,9:16"


@dataclass
class BestOfNRecipe:
    """What the best-of-N comparison generates and judges (flags, ``--config``, ``key=value``)."""

    model: str = knob(str(ROOT / "checkpoints" / "tiny-64"))
    per_category: int = knob(12)
    candidates: int = knob(4)
    steps: int = knob(20)
    batch: int = knob(12, "outputs per runtime call (x candidates images)")
    scorer_rows: int = knob(640, "train rows the QA scorer is fitted on")
    quick: bool = knob(False)
    output_dir: str = knob(str(ROOT / "benchmarks" / "results"))


def main(argv=None) -> int:
    args = config_files.parse_recipe(BestOfNRecipe, argv, description=__doc__)
    if args.quick:
        args.per_category, args.steps, args.scorer_rows = 2, 2, 80

    t0 = time.perf_counter()
    gen = runtime.load(args.model, device="cpu")
    config = runtime.inference(args.steps, 2.0)
    with tempfile.TemporaryDirectory(prefix="backdrop-bon-") as tmp:
        cat = make_catalog(tmp, SyntheticConfig(num_categories=len(gen.categories.names)))
        scorer = qa.fit_scorer(cat["train"], max_rows=args.scorer_rows)
        heldout = [r for r in read_catalog(cat["heldout"]).to_pylist() if r["category"] in gen.categories]
        real = [fetch_product(r) for r in heldout]
        cats = [q.category for q in real]
        centroids = metrics.CategoryCentroids.fit(
            np.stack([metrics.background_features(q.image, q.mask) for q in real]), cats)
        all_train = read_catalog(cat["train"]).to_pylist()
        # the scorer's pattern component is fitted on even rows; the judge here on odd ones
        pattern_judge = evaluation.fit_pattern_judge(all_train[1::2], args.scorer_rows, cat["train"])
        train_rows = all_train[:: max(1, len(all_train) // 400)]
        train = [fetch_product(r) for r in train_rows]
        train_palette = metrics.PaletteModel.fit([q.image for q in train], [q.mask for q in train],
                                                 [q.category for q in train])
        heldout_palette = metrics.PaletteModel.fit([q.image for q in real], [q.mask for q in real], cats)

        picks = [q for c in gen.categories.names for q in [x for x in real if x.category == c][: args.per_category]]
        requests = [q.requests([runtime.row_seed(0, str(i))])[0] for i, q in enumerate(picks)]
        best4, best1 = [], []
        for i in range(0, len(requests), args.batch):
            chunk = requests[i:i + args.batch]
            best4 += runtime.generate_best(gen, chunk, config, args.candidates, scorer)
            best1 += runtime.generate_best(gen, chunk, config, 1, scorer)
        assert all(isinstance(r, runtime.Generated) for r in best4 + best1)

        def judge(results) -> dict:
            outs = [r.image for r in results]
            feats = np.stack([metrics.background_features(o, q.mask) for o, q in zip(outs, requests)])
            return {
                "category_consistency": metrics.category_consistency(
                    feats, [q.category for q in requests], centroids)["category_consistency"],
                "pattern_consistency": pattern_judge.consistency(
                    outs, [q.mask for q in requests], [q.category for q in requests])["pattern_consistency"],
                "product_leak_train_palette": float(np.mean(
                    [train_palette.leak(o, q.mask, q.category) for o, q in zip(outs, requests)])),
                "product_leak_heldout_palette": float(np.mean(
                    [heldout_palette.leak(o, q.mask, q.category) for o, q in zip(outs, requests)])),
                "qa_score": float(np.mean([r.scores["qa_score"] for r in results])),
                "flagged_share": float(np.mean([not r.qa_passed for r in results])),
                "device_seconds_per_output": float(np.mean([r.device_seconds for r in results])),
            }

        result = {"best_of_1": judge(best1), f"best_of_{args.candidates}": judge(best4),
                  "outputs": len(requests), "steps": args.steps, "threshold": scorer.threshold,
                  "scorer": scorer.fitted_on | {"catalog": "synthetic seed 0, train split"}}

        # the gallery: four placements for one product per category, product pixels checked
        rows, labels, identical = [], [], True
        placements = parse_placements(FOUR)
        for c in gen.categories.names:
            q = next(x for x in real if x.category == c)
            placed = [q.placed(pl) for pl in placements]
            reqs = [pp.requests([runtime.row_seed(0, c)])[0] for pp in placed]
            outs = runtime.generate(gen, reqs, config)
            for o, r in zip(outs, reqs):
                keep = r.mask > 0.5
                identical &= np.array_equal(np.asarray(o)[keep], np.asarray(r.image)[keep])
            rows.append([masked_product(q.image, q.mask)] + [ImageOps.pad(o, (128, 128), color="white") for o in outs])
            labels.append(c)
        result["placements_product_bit_identical"] = bool(identical)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["recipe"] = config_files.to_yaml(args)

    out_dir = Path(args.output_dir)
    if args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="backdrop-bon-out-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, cell=128, row_labels=labels,
                  column_labels=["product"] + [pl.name for pl in placements]).save(out_dir / "placements-gallery.png")
    (out_dir / "best_of_n.json").write_text(json.dumps(result, indent=1) + "\n")
    k = f"best_of_{args.candidates}"
    lines = [
        "# Best-of-N with automatic QA (benchmarks/best_of_n.py)",
        "",
        f"`{os.path.relpath(args.model, ROOT)}`, {len(requests)} held-out synthetic products "
        f"({args.per_category} per category), {args.steps} DDIM steps, guidance {DEFAULT_GUIDANCE:g}; QA scorer fitted on "
        f"{scorer.fitted_on['rows']} train rows; threshold {scorer.threshold}.",
        "",
        f"| metric | best-of-1 | best-of-{args.candidates} |",
        "| --- | ---: | ---: |",
    ]
    for m in result["best_of_1"]:
        lines.append(f"| {m} | {result['best_of_1'][m]:.4f} | {result[k][m]:.4f} |")
    lines += ["", f"Product bit-identical in every placement of the gallery: {identical}.", ""]
    text = "\n".join(lines)
    (out_dir / "best_of_n.md").write_text(text)
    print(text)
    print(f"written to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
