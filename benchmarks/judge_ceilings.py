"""What each category judge gives the *true* held-out ads: the ceiling a generator is measured under.

    .venv/bin/python benchmarks/judge_ceilings.py                  # demo, style seed 11, 3 photo catalogs
    .venv/bin/python benchmarks/judge_ceilings.py photo_splits=band

The adaptation bar asks for colour consistency >= 0.85. The evaluation's ``real_consistency``
judges the true held-out ads with centroids fitted on those same ads: an in-sample number. This
script puts beside it the same colour judge with its centroids from the train ads (out of sample:
what a generator that learned the train split could match), and the pattern judge (fitted on the
train ads, as ``evaluate`` fits it), on the demo catalog, a style seed and the photographic
catalogs (``benchmarks/photo_catalogs.py``) under both held-out splits of ``backdrop.demo.photos``.

Negative control per catalog: the same held-out ads with their categories shuffled (a fixed
permutation) must score at most 0.35 by every judge (the forgery bound of the judges' CI tests);
a judge that passes shuffled labels measures nothing.

Writes benchmarks/results/judge-ceilings.md (+ .json).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from backdrop import config_files  # noqa: E402
from backdrop.catalog import read_catalog  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.quality import metrics  # noqa: E402
from backdrop.quality.evaluation import EvalConfig, Judges  # noqa: E402

CONTROL_BOUND = 0.35


@dataclass
class JudgeCeilingsRecipe:
    """The catalogs whose true held-out ads are judged (flags, ``--config``, ``key=value``)."""

    style_seeds: str = knob("11", "procedural style seeds (comma-separated; empty: none)")
    photo_catalogs: str = knob("textures,nature,outdoors", "benchmarks/photo_catalogs.py catalogs (empty: none)")
    photo_splits: str = knob("band,checker", "held-out splits of the photo catalogs (backdrop.demo.photos)")
    report_tag: str = knob("", "suffix of the report's name (judge-ceilings-TAG.md)")
    output_dir: str = knob(str(ROOT / "benchmarks" / "results"))


def ceilings(label: str, catalog: dict[str, str]) -> dict:
    """Each judge on the true held-out ads, and on the same ads with shuffled categories."""
    categories = list(dict.fromkeys(r["category"] for r in read_catalog(catalog["train"]).to_pylist()))
    judges = Judges.fit(catalog, categories, EvalConfig())
    cats = [q.category for q in judges.real]
    shuffled = list(np.random.default_rng(0).permutation(cats))
    images, masks = [q.image for q in judges.real], [q.mask for q in judges.real]

    def scores(labels: list[str]) -> dict:
        return {
            "colour_in_sample": metrics.category_consistency(judges.real_feats, labels, judges.centroids)["category_consistency"],
            "colour_by_train_centroids": metrics.category_consistency(
                judges.real_feats, labels, judges.train_centroids)["category_consistency"],
            "pattern": judges.pattern.consistency(images, masks, labels)["pattern_consistency"],
        }

    row = {"catalog": label, "heldout": len(cats), "categories": len(categories), "chance": 1 / len(categories),
           **scores(cats), "control": scores(shuffled)}
    row["control_rejected"] = all(v <= CONTROL_BOUND for v in row["control"].values())
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    args = config_files.parse_recipe(JudgeCeilingsRecipe, argv, description=__doc__)
    from photo_catalogs import judged_catalogs

    with tempfile.TemporaryDirectory() as tmp:
        rows = [ceilings(label, catalog) for label, catalog in
                judged_catalogs(tmp, args.style_seeds, args.photo_catalogs, args.photo_splits)]

    name = "judge-ceilings" + (f"-{args.report_tag}" if args.report_tag else "")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"control_bound": CONTROL_BOUND, "rows": rows,
                                                  "recipe": config_files.to_yaml(args)}, indent=1) + "\n")
    lines = ["# What the category judges give the true held-out ads", "",
             "Every held-out ad of each catalog (default catalog sizes: 160 train ads and 24 held-out "
             "ads per category). Colour in sample: nearest centroid "
             "fitted on these same held-out ads (the evaluation's `real_consistency`). Colour by train "
             "centroids: centroids from the train ads. Pattern: the colour-blind judge fitted on the train "
             "ads (the evaluation's `real_pattern_consistency`). Control: the same ads with their categories "
             f"shuffled, rejected when every judge gives it <= {CONTROL_BOUND}.", "",
             "| catalog | chance | colour in sample | colour by train centroids | pattern | control (in sample / by train / pattern) | control rejected |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c = r["control"]
        lines.append(f"| {r['catalog']} | {r['chance']:.3f} | {r['colour_in_sample']:.3f} | "
                     f"{r['colour_by_train_centroids']:.3f} | {r['pattern']:.3f} | {c['colour_in_sample']:.3f} / "
                     f"{c['colour_by_train_centroids']:.3f} / {c['pattern']:.3f} | "
                     f"{'yes' if r['control_rejected'] else 'NO'} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
