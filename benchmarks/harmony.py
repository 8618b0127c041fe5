"""Contact shadows and reflections learnt from the ads (issue #24): the bar and its ablation.

    .venv/bin/python benchmarks/harmony.py                       # ~35 min on 2 cores
    .venv/bin/python benchmarks/harmony.py --cg-steps 20 --quick # a smoke run, numbers meaningless

The demo catalog drawn twice from the same seed, once with ``--harmony HARMONY`` (contact
shadows, and mirror reflections on the glossy categories' surfaces, drawn around the product in
the background) and once without. From the shipped ``checkpoints/tiny-64``, the documented
adaptation's CG budget (``recipes/adapt.yaml``: 1,500 CG steps at batch 32) is trained on each;
then, on the harmony catalog's held-out products (20 DDIM steps):

  real ads          the held-out ads themselves (what the bar is relative to)
  harmony-trained   CG adapted on the harmony catalog
  ablation          the same training on the catalog without harmony (negative control: ~0)
  shipped           checkpoints/tiny-64 as shipped (never saw a shadow)

Measured per configuration: the contact shadow and reflection scores (``quality.harmony``),
QA's seam score (the halo at the mask edge), colour and pattern category consistency (the same
judges as ``jobs/evaluate.py``) and whether every product pixel is bit-identical. The bar:
contact shadow >= 0.7 x the real ads', with consistency not lower than the ablation's. Writes
benchmarks/results/harmony.{md,json} and a gallery (real | harmony-trained | ablation) beside
them, and logs both to MLflow (run ``harmony-bar``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

import numpy as np  # noqa: E402

from backdrop import config_files  # noqa: E402
from backdrop.config_files import knob  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "tiny-64"


@dataclass
class HarmonyRecipe:
    """The harmony benchmark's measure, budgets and evaluation (flags, ``--config``, e.g.
    ``recipes/benchmarks/harmony-reflection.yaml``, and ``key=value``)."""

    harmony: str = knob("shadow", "shadow: the contact-shadow bar; shadow+reflection: reflections on the glossy "
                                  "categories too (a reflection fills the band under the base, so there the contact "
                                  "shadow is read on the matte categories only)",
                        choices=("shadow", "shadow+reflection"))
    reuse_ablation: bool = knob(False, "keep WORKDIR/ablation from an earlier run "
                                       "(the same catalog without harmony, the same budget)")
    cg_steps: int = knob(1500)
    batch_size: int = knob(32)
    steps: int = knob(20, "DDIM steps of the evaluation")
    per_category: int = knob(12, "held-out products per category")
    workdir: str = knob(str(ROOT / "runs" / "harmony"))
    results_dir: str = knob(str(ROOT / "benchmarks" / "results"))
    quick: bool = knob(False, "tiny catalogs: a smoke run")


def main(argv=None) -> int:
    a = config_files.parse_recipe(HarmonyRecipe, argv, description=__doc__)

    from backdrop import runtime
    from backdrop.demo.synthetic import SyntheticConfig, is_glossy, make_catalog
    from backdrop.gallery import contact_sheet
    from backdrop.models.generator import BackdropModel
    from backdrop.quality.evaluation import EvalConfig, Judges, evaluate
    from backdrop.quality.harmony import harmony_scores
    from backdrop.quality.qa import seam_score
    from backdrop.settings import configure_logging
    from backdrop.training import train_generator

    configure_logging()
    work = Path(a.workdir)
    sizes = dict(train_per_category=16 if a.quick else 160, heldout_per_category=2 if a.quick else a.per_category,
                 pairs_per_category=0)
    catalogs = {mode: make_catalog(str(work / f"catalog-{mode}"), SyntheticConfig(harmony=mode, **sizes))
                for mode in (a.harmony, "off")}
    models, minutes = {"shipped": BackdropModel.from_pretrained(str(CHECKPOINT))}, {}
    for name, mode in (("harmony-trained", a.harmony), ("ablation", "off")):
        if name == "ablation" and a.reuse_ablation and (work / name / "backdrop.json").exists():
            models[name] = BackdropModel.from_pretrained(str(work / name))
            continue
        t0 = time.perf_counter()
        model, _ = train_generator(catalogs[mode]["train"], str(work / (name if mode == "off" else f"{name}-{mode}")),
                                   stages=("cg",),
                                   steps={"cg": a.cg_steps}, init=str(CHECKPOINT), batch_size=a.batch_size)
        models[name], minutes[name] = model, (time.perf_counter() - t0) / 60

    from backdrop.catalog import read_catalog
    from backdrop.inputs import fetch_product
    from backdrop.pipeline import InferenceConfig

    heldout = read_catalog(catalogs[a.harmony]["heldout"]).to_pylist()
    requests = [fetch_product(r).requests([runtime.row_seed(0, r["product_id"])])[0] for r in heldout]
    masks = [q.mask > 0.5 for q in requests]
    real = [np.asarray(q.image) for q in requests]
    order = {c: i for i, c in enumerate(dict.fromkeys(r["category"] for r in heldout))}
    glossy = [is_glossy(order[r["category"]]) for r in heldout]

    def scores(images) -> dict:
        """Contact shadow where the surface is matte (with reflections on, a glossy floor's band
        under the base holds the mirror image), reflection where it is glossy."""
        matte = [not g for g in glossy] if a.harmony == "shadow+reflection" else [True] * len(images)
        shadow = harmony_scores([i for i, k in zip(images, matte) if k], [m for m, k in zip(masks, matte) if k])
        mirror = harmony_scores([i for i, g in zip(images, glossy) if g], [m for m, g in zip(masks, glossy) if g])
        return {"contact_shadow": shadow["contact_shadow"], "contact_shadow_n": shadow["contact_shadow_n"],
                "reflection": mirror["reflection"], "reflection_n": mirror["reflection_n"]}

    report = {"real ads": {**scores(real), "seam": float(np.mean([seam_score(q.image, q.mask) for q in requests]))}}
    shown = {"real ads": real}
    judge_cfg = EvalConfig(steps=a.steps, per_category=sizes["heldout_per_category"], palette_rows=160, judge_rows=320)
    # one fit for every model: they share the catalog and its categories
    judges = Judges.fit(catalogs[a.harmony], next(iter(models.values())).categories.names, judge_cfg)
    for name, model in models.items():
        gen = runtime.wrap(model, name, "bench")
        outputs = runtime.generate_all(gen, requests, InferenceConfig(a.steps, 2.0), 32)
        images = [np.asarray(o) for o in outputs]
        identical = all(np.array_equal(im[m], np.asarray(q.image.convert("RGB"))[m])
                        for im, m, q in zip(images, masks, requests))
        judged = evaluate(model, catalogs[a.harmony], judge_cfg, with_references=False, judges=judges).metrics
        report[name] = {**scores(images),
                        "seam": float(np.mean([seam_score(o, q.mask) for o, q in zip(outputs, requests)])),
                        "category_consistency": judged["category_consistency"],
                        "pattern_consistency": judged["pattern_consistency"],
                        "product_bit_identical": identical, "train_minutes": minutes.get(name)}
        shown[name] = images
    real_shadow = report["real ads"]["contact_shadow"]
    trained, ablation = report["harmony-trained"], report["ablation"]
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "harmony": a.harmony, "cg_steps": a.cg_steps, "batch_size": a.batch_size, "eval_steps": a.steps,
        "heldout": len(requests), "quick": a.quick, "configs": report, "recipe": config_files.to_yaml(a),
        "shadow_vs_real": trained["contact_shadow"] / real_shadow if real_shadow else None,
        "ablation_shadow_vs_real": ablation["contact_shadow"] / real_shadow if real_shadow else None,
        "bar_shadow": bool(real_shadow and real_shadow > 0.05 and trained["contact_shadow"] >= 0.7 * real_shadow),
        "bar_consistency": trained["category_consistency"] >= ablation["category_consistency"],
        "bar_product": trained["product_bit_identical"],
    }
    results = Path(a.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stem = ("harmony" if a.harmony == "shadow" else "harmony-reflection") + ("-quick" if a.quick else "")
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    picks = list(range(0, len(requests), max(1, len(requests) // 8)))[:8]
    from PIL import Image

    rows = [[Image.fromarray(shown[n][i]) for i in picks] for n in ("real ads", "harmony-trained", "ablation")]
    sheet = contact_sheet(rows, row_labels=["real ads", "harmony-trained", "ablation"])
    sheet.save(results / f"{stem}-gallery.png")
    lines = [f"# Contact shadows and reflections ({summary['date']}, {summary['cpus']} CPUs): {a.harmony} catalog, "
             f"CG {a.cg_steps} steps at batch {a.batch_size} from checkpoints/tiny-64, {len(requests)} held-out "
             f"products, {a.steps} DDIM steps", "",
             "| configuration | contact shadow | reflection | seam | colour consistency | pattern consistency | "
             "product bit-identical |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report.items():
        cells = [f"{r['contact_shadow']:.3f}", f"{r['reflection']:.3f}" if r["reflection"] is not None else "-",
                 f"{r['seam']:.3f}", *(f"{r[k]:.3f}" if k in r else "-" for k in ("category_consistency",
                                                                                    "pattern_consistency")),
                 str(r.get("product_bit_identical", "-"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Contact shadow vs the real ads: harmony-trained {summary['shadow_vs_real']:.2f}x, ablation "
              f"{summary['ablation_shadow_vs_real']:.2f}x (bar: >= 0.7x: {summary['bar_shadow']}); colour "
              f"consistency not lower than the ablation's: {summary['bar_consistency']}.", "",
              f"![gallery]({stem}-gallery.png)", "", "Command: `.venv/bin/python benchmarks/harmony.py`"]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    try:
        import mlflow

        from backdrop import registry

        registry.configure()
        with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name="harmony-bar"):
            mlflow.log_dict(summary, "harmony.json")
            mlflow.log_image(sheet, "gallery.png")
    except Exception as e:  # noqa: BLE001 - the files above are the record; MLflow is a copy
        print(f"MLflow: not logged ({type(e).__name__}: {e})")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
