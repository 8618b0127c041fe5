"""The quality bar: train the tiny preset from nothing on the synthetic catalog and measure.

    python benchmarks/quality_bar.py --workdir runs/quality            # ~65 min on 2 cores

Phases (training wall time is measured per phase; evaluation time is not training time):
  1. VAE + base (tiny preset, generic caption only) from random weights;
  2. CG (mask-guided, the paper's) with evaluation at each point of --curve (cumulative CG
     minutes), giving category consistency against total training minutes;
  3. the plain-ControlNet baseline trained from the same base for the same CG budget;
  4. PG on top of the final CG, then the reference metrics (CG+PG vs CG alone, with and
     without the reference-latent initialisation, copy-paste).
Every number is produced by jobs/evaluate.py (run as a subprocess on a saved checkpoint),
written to benchmarks/results/quality.{md,json} and logged to MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "jobs"))
import _bootstrap  # noqa: E402,F401

from backdrop.settings import configure_logging  # noqa: E402
from backdrop.training import parse_budgets  # noqa: E402
from backdrop.catalog import load_training_arrays  # noqa: E402
from backdrop.demo.synthetic import SyntheticConfig, make_catalog  # noqa: E402
from backdrop.models.generator import BackdropModel  # noqa: E402
from backdrop.models.presets import TinyPreset  # noqa: E402
from backdrop.training import StageConfig, StageTrainer, random_batches, train_stage  # noqa: E402

log = logging.getLogger("quality_bar")


def evaluate(model_dir: str, catalog_dir: str, out: str, args, references: bool) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "evaluate.py"), "--model", model_dir,
           "--catalog-dir", catalog_dir, "--output", out, "--steps", str(args.eval_steps),
           "--per-category", str(args.per_category), "--pairs", str(args.pairs),
           "--run-name", f"quality-{os.path.basename(out)}"]
    if not references:
        cmd.append("--no-references")
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out + ".json") as f:
        result = json.load(f)
    log.info("evaluated %s in %.0fs: consistency %.3f", os.path.basename(model_dir), time.perf_counter() - t,
             result["category_consistency"])
    return result


def train_for(model, data, stage: str, minutes: float, seed: int, trainer=None, elapsed: float = 0.0,
              batch_size: int = 32, timestep_sampling: str = "importance"):
    """Train ``stage`` until ``minutes`` of stage wall time in total (continuing ``trainer``)."""
    cfg = StageConfig(stage, max_minutes=minutes, batch_size=batch_size, seed=seed,
                      timestep_sampling=timestep_sampling)
    trainer = trainer or StageTrainer(model, cfg)
    result = train_stage(model, random_batches(data, batch_size, seed + int(elapsed)), cfg, trainer=trainer,
                         elapsed_before=elapsed)
    return trainer, result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/quality")
    p.add_argument("--resolution", type=int, default=64, help="64 (the bar) or 128")
    p.add_argument("--minutes", default="vae=5,base=4", help="VAE and base budgets")
    p.add_argument("--curve", default="3,6,9,12,16,21", help="cumulative CG minutes at which to evaluate")
    p.add_argument("--pg-minutes", type=float, default=5.0)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-pg", action="store_true")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--per-category", type=int, default=12)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cg-timestep-sampling", default="importance", choices=["importance", "uniform"],
                   help="the ablation: 'uniform' draws CG's timesteps uniformly and weights the loss")
    p.add_argument("--reuse-base", action="store_true",
                   help="keep WORKDIR/base (and its measured wall time) from an earlier run of this script")
    args = p.parse_args(argv)
    configure_logging()
    os.makedirs(args.workdir, exist_ok=True)
    catalog_dir = os.path.join(args.workdir, "catalog")
    make_catalog(catalog_dir, SyntheticConfig(resolution=args.resolution, seed=args.seed))
    data = load_training_arrays(os.path.join(catalog_dir, "train.parquet"), args.resolution).as_dict()
    categories = sorted(set(data["categories"]))
    budgets = parse_budgets(args.minutes)
    curve_points = [float(x) for x in args.curve.split(",")]

    base_dir = os.path.join(args.workdir, "base")
    wall_file = os.path.join(base_dir, "wall_minutes.json")
    if args.reuse_base and os.path.exists(wall_file):
        # The base phase does not depend on anything CG does: a rerun may keep it, with the
        # wall time it was measured at when it was trained by this script.
        model = BackdropModel.from_pretrained(base_dir)
        with open(wall_file) as f:
            wall = json.load(f)
        log.info("reusing %s (trained in %s)", base_dir, wall)
    else:
        model = BackdropModel.tiny(categories, TinyPreset(resolution=args.resolution), seed=args.seed)
        wall = {}
        for i, stage in enumerate(("vae", "base")):
            _, r = train_for(model, data, stage, budgets[stage], args.seed + i)
            wall[stage] = r.seconds / 60
            log.info("%s: %d steps in %.1f min, final loss %.4f", stage, r.steps, wall[stage], r.final_loss)
        model.save_pretrained(base_dir)
        with open(wall_file, "w") as f:
            json.dump(wall, f)
    base_minutes = wall["vae"] + wall["base"]

    curve, trainer, elapsed, cg_steps = [], None, 0.0, 0
    for point in curve_points:
        trainer, r = train_for(model, data, "cg", point, args.seed + 10, trainer, elapsed,
                               timestep_sampling=args.cg_timestep_sampling)
        elapsed, cg_steps = r.seconds, r.steps
        ckpt = os.path.join(args.workdir, f"cg-{point:g}min")
        model.save_pretrained(ckpt)
        res = evaluate(ckpt, catalog_dir, os.path.join(args.workdir, "eval", f"cg-{point:g}min"), args, False)
        curve.append({"cg_minutes": round(elapsed / 60, 2), "total_training_minutes": round(base_minutes + elapsed / 60, 2),
                      "cg_steps": cg_steps, "category_consistency": res["category_consistency"],
                      "product_leak": res["product_leak"]})
        log.info("curve point: %s", curve[-1])
    final_cg = curve[-1]
    cg_dir = os.path.join(args.workdir, f"cg-{curve_points[-1]:g}min")

    results = {"resolution": args.resolution, "wall_minutes": {**wall, "cg": elapsed / 60}, "curve": curve,
               "cg": final_cg, "cg_timestep_sampling": args.cg_timestep_sampling}
    if not args.skip_baseline:
        plain = BackdropModel.from_pretrained(base_dir).with_fresh_generators("plain")
        _, r = train_for(plain, data, "cg", curve_points[-1], args.seed + 10)
        plain_dir = os.path.join(args.workdir, "plain-controlnet")
        plain.save_pretrained(plain_dir)
        res = evaluate(plain_dir, catalog_dir, os.path.join(args.workdir, "eval", "plain-controlnet"), args, False)
        results["plain_controlnet"] = {"cg_minutes": round(r.seconds / 60, 2), "cg_steps": r.steps,
                                       "category_consistency": res["category_consistency"],
                                       "product_leak": res["product_leak"],
                                       "real_product_leak": res["real_product_leak"]}
    if not args.skip_pg:
        full = BackdropModel.from_pretrained(cg_dir)
        _, r = train_for(full, data, "pg", args.pg_minutes, args.seed + 20)
        pg_dir = os.path.join(args.workdir, "cg-pg")
        full.save_pretrained(pg_dir)
        res = evaluate(pg_dir, catalog_dir, os.path.join(args.workdir, "eval", "cg-pg"), args, True)
        results["pg"] = {k: res[k] for k in res if k.startswith(("ref_similarity", "copy_paste"))}
        results["pg"].update(pg_minutes=round(r.seconds / 60, 2), pg_steps=r.steps,
                             product_bit_identical=res["product_bit_identical"])

    suffix = "" if args.cg_timestep_sampling == "importance" else f"-cg-{args.cg_timestep_sampling}-t"
    write_report(results, os.path.join(HERE, "results", f"quality-{args.resolution}px{suffix}"))
    return 0


def write_report(results: dict, out: str) -> None:
    import mlflow

    from backdrop import registry

    os.makedirs(os.path.dirname(out), exist_ok=True)
    lines = [f"# Quality bar ({results['resolution']} px, 2 CPU cores)", "",
             f"CG timesteps: {results['cg_timestep_sampling']} sampling of the high-noise-weighted loss", "",
             "Training wall minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in results["wall_minutes"].items()), "",
             "## Category consistency of CG against total training minutes (chance = 1/8)", "",
             "| total training min | CG min | CG steps | consistency | product leak |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['total_training_minutes']:.1f} | {c['cg_minutes']:.1f} | {c['cg_steps']} | "
              f"{c['category_consistency']:.3f} | {c['product_leak']:.3f} |" for c in results["curve"]]
    if "plain_controlnet" in results:
        b = results["plain_controlnet"]
        lines += ["", "## Mask-guided CG vs plain ControlNet (same base, same CG budget)", "",
                  "| model | consistency | product leak into background |", "| --- | --- | --- |",
                  f"| CG (mask-guided, identifier prompt) | {results['cg']['category_consistency']:.3f} | "
                  f"{results['cg']['product_leak']:.3f} |",
                  f"| plain ControlNet (\"A photo of {{category}}\") | {b['category_consistency']:.3f} | "
                  f"{b['product_leak']:.3f} |",
                  f"| real held-out ad images | 1.000 | {b['real_product_leak']:.3f} |"]
    if "pg" in results:
        g = results["pg"]
        lines += ["", "## Reference-based generation (PG)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in g.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    registry.configure()
    with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name=f"quality-bar-{results['resolution']}px"):
        for c in results["curve"]:
            mlflow.log_metric("category_consistency", c["category_consistency"], step=int(round(c["total_training_minutes"] * 60)))
        mlflow.log_text(text, "quality.md")
        mlflow.log_dict(results, "quality.json")


if __name__ == "__main__":
    sys.exit(main())
