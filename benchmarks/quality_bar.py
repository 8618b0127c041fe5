"""The quality bar, against CG steps (batch 32) and wall minutes, in three modes.

    python benchmarks/quality_bar.py --workdir runs/quality                       # (a) from nothing
    python benchmarks/quality_bar.py --mode adapt --init checkpoints/tiny-64 \\
        --style-seeds 11,12,13 --photo-catalogs textures,nature,flowers \\
        --cg-steps 1500 --workdir runs/adapt                                    # (b) adaptation
    python benchmarks/quality_bar.py --mode table1 --init runs/prior-model \\
        --style-seeds 11 --steps base=3000 --cg-steps 1500 --workdir runs/table1  # Table 1 revisited

Budgets are steps, the same on every machine (``--cg-steps``, ``--curve-steps``, ``--steps``);
``--curve-minutes`` and ``--minutes`` give the old wall-clock budgets instead. Every curve
point reports (CG steps, CG wall minutes, consistency, leak), and the machine's measured
steps/s is printed beside the table, so a step count converts to minutes on this machine.

  scratch  VAE + base (caption "a photo") from random weights on the default catalog; CG with an
           evaluation at each curve point; plain ControlNet from the same base at the same
           budget; PG on the final CG with the reference metrics (Tables 2 and 4).
  adapt    for each style seed (``SyntheticConfig.style_seed``, drawn by the prior's own
           generator) and each photographic catalog (``benchmarks/photo_catalogs.py``: real
           photographs, outside the prior): from ``--init``, fine-tune CG (evaluated at each
           curve point), then PG; mean and spread over the catalogs per point; a gallery per
           catalog. The bar, per catalog, within 1,500 CG steps: colour consistency >= 0.85 and
           pattern consistency >= 0.8 x the true backgrounds'.
  table1   does a base that knows category words beat CG with plain ControlNet? From ``--init``,
           the base UNet is trained on the first style seed's catalog with captions "a photo"
           and "A photo of {category}" (same steps); on each base, mask-guided CG and plain
           ControlNet are trained for the same CG steps and evaluated with product leak.

Numbers come from ``backdrop.quality.evaluation.evaluate`` (what ``jobs/evaluate.py`` runs) on a
checkpoint saved at each point; the report goes to ``--results-dir`` (.md, .json, galleries)
and to an MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "jobs"))
import _bootstrap  # noqa: E402,F401

import numpy as np  # noqa: E402

from backdrop import config_files, runtime  # noqa: E402
from backdrop.catalog import catalog_splits  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.training.arrays import load_training_arrays  # noqa: E402
from backdrop.demo.synthetic import SyntheticConfig, make_catalog  # noqa: E402
from backdrop.limits import DEFAULT_GUIDANCE  # noqa: E402
from backdrop.models.generator import BackdropModel  # noqa: E402
from backdrop.models.presets import TinyPreset  # noqa: E402
from backdrop.quality.evaluation import EvalConfig, Judges, evaluate  # noqa: E402
from backdrop.settings import configure_logging  # noqa: E402
from backdrop.training import StageConfig, StageTrainer, parse_budgets, random_batches, train_stage  # noqa: E402
from backdrop.training.loop import CATEGORY_CAPTION, starting_model  # noqa: E402

log = logging.getLogger("quality_bar")
BAR = 0.85  # adaptation: colour consistency within --cg-steps (1,500 CG steps at batch 32)
PATTERN_BAR = 0.8  # adaptation: pattern consistency / the true backgrounds' pattern consistency


# ------------------------------------------------------------------------------ budgets


class Budget:
    """A cumulative budget for one stage: ``steps`` or ``minutes`` of that stage's wall time."""

    def __init__(self, steps: int | None = None, minutes: float | None = None):
        if (steps is None) == (minutes is None):
            raise ValueError("a budget is steps or minutes")
        self.steps, self.minutes = steps, minutes

    def __str__(self) -> str:
        return f"{self.steps}steps" if self.steps is not None else f"{self.minutes:g}min"


def cg_loss(args) -> dict:
    """The CG stage's loss knobs, as StageConfig fields."""
    knobs = {"timestep_sampling": args.cg_timestep_sampling, "loss_weighting": args.cg_loss_weighting,
             "lr_schedule": args.cg_lr_schedule}
    if args.cg_lr_schedule != "constant":  # one schedule over the whole curve: its points are checkpoints of one run
        last = curve_budgets(args)[-1]
        if last.steps is None:
            raise ValueError("cg_lr_schedule cosine needs the curve in steps (curve_steps or cg_steps), not minutes")
        knobs["lr_horizon"] = last.steps
    return knobs


def curve_budgets(args) -> list[Budget]:
    if args.curve_minutes:
        return [Budget(minutes=float(x)) for x in args.curve_minutes.split(",")]
    if args.curve_steps:
        points = [int(x) for x in args.curve_steps.split(",")]
    else:  # four evenly spaced points up to --cg-steps
        points = sorted({max(1, round(args.cg_steps * k / 4)) for k in (1, 2, 3, 4)})
    return [Budget(steps=p) for p in points]


def stage_budget(args, stage: str) -> Budget:
    steps, minutes = parse_budgets(args.steps), parse_budgets(args.minutes)
    if stage in steps:
        return Budget(steps=int(steps[stage]))
    if stage in minutes:
        return Budget(minutes=minutes[stage])
    raise SystemExit(f"no budget for stage {stage!r}: pass --steps {stage}=N (or --minutes {stage}=M)")


def pg_budget(args) -> Budget:
    return Budget(minutes=args.pg_minutes) if args.pg_minutes else Budget(steps=args.pg_steps)


def train_for(model, data, stage: str, budget: Budget, seed: int, trainer=None, elapsed: float = 0.0,
              batch_size: int = 32, **stage_kwargs):
    """Train ``stage`` until the cumulative ``budget`` (continuing ``trainer``: its step count
    and ``elapsed`` seconds count towards it)."""
    cfg = StageConfig(stage, max_steps=budget.steps if budget.steps is not None else 10**9,
                      max_minutes=budget.minutes, batch_size=batch_size, seed=seed, **stage_kwargs)
    trainer = trainer or StageTrainer(model, cfg)
    batches = random_batches(data, batch_size, seed + (trainer.step_count or int(elapsed)))
    result = train_stage(model, batches, cfg, trainer=trainer, elapsed_before=elapsed)
    return trainer, result


# --------------------------------------------------------------------------- evaluation


def eval_config(args) -> EvalConfig:
    return EvalConfig(steps=args.eval_steps, guidance=args.eval_guidance, per_category=args.per_category,
                      pairs=args.pairs, seed=args.seed)


def evaluate_checkpoint(model_dir: str, catalog_dir: str, out: str, args, references: bool,
                        judges: Judges | None = None) -> dict:
    """Evaluate a saved checkpoint as ``jobs/evaluate.py`` does; write ``out``.json and its grids.
    ``judges`` (``Judges.fit`` of this catalog) shares one judge fit across a curve's points."""
    t = time.perf_counter()
    model = runtime.load(model_dir, device="cpu").model
    result = evaluate(model, catalog_splits(catalog_dir), eval_config(args), with_references=references,
                      judges=judges)
    report = result.save(out, f"Evaluation of `{model_dir}`")
    log.info("evaluated %s in %.0fs: consistency %.3f", os.path.basename(model_dir), time.perf_counter() - t,
             result.metrics["category_consistency"])
    return report


def run_curve(model, data, catalog_dir: str, workdir: str, prefix: str, args, seed: int) -> tuple[list, object]:
    """CG trained through every curve point (cumulative), saved and evaluated at each."""
    curve, trainer, elapsed = [], None, 0.0
    judges = Judges.fit(catalog_splits(catalog_dir), model.categories.names, eval_config(args))
    for budget in curve_budgets(args):
        trainer, r = train_for(model, data, "cg", budget, seed, trainer, elapsed, args.batch_size,
                               **cg_loss(args))
        elapsed = r.seconds
        ckpt = os.path.join(workdir, f"{prefix}-{budget}")
        model.save_pretrained(ckpt)
        res = evaluate_checkpoint(ckpt, catalog_dir, os.path.join(workdir, "eval", f"{prefix}-{budget}"), args, False,
                                  judges)
        curve.append({"cg_steps": r.steps, "cg_minutes": round(elapsed / 60, 3),
                      "category_consistency": res["category_consistency"], "product_leak": res["product_leak"],
                      "pattern_consistency": res["pattern_consistency"],
                      "real_pattern_consistency": res["real_pattern_consistency"],
                      "pattern_ratio": res["pattern_consistency"] / max(res["real_pattern_consistency"], 1e-9),
                      "checkpoint": ckpt, "grid": res["grids"]["categories"]})
        log.info("curve point: %s", {k: v for k, v in curve[-1].items() if k not in ("checkpoint", "grid")})
    return curve, r


def steps_per_second(steps: int, seconds: float) -> float:
    return steps / seconds if seconds > 0 else float("nan")


def catalog_config(args, style_seed: int | None) -> SyntheticConfig:
    return SyntheticConfig(num_categories=args.categories, train_per_category=args.train_per_category,
                           heldout_per_category=args.heldout_per_category, pairs_per_category=args.pairs_per_category,
                           resolution=args.catalog_resolution or args.resolution, seed=args.seed,
                           style_seed=style_seed)


def load_catalog(args, directory: str, style_seed: int | None, photos: str | None = None) -> dict:
    if photos is not None:
        sys.path.insert(0, HERE)
        from photo_catalogs import assemble

        from backdrop.demo.photos import PhotoCatalogConfig, make_photo_catalog

        folder = assemble(photos, os.path.join(args.workdir, "photos"))
        make_photo_catalog(folder, directory, PhotoCatalogConfig(
            train_per_category=args.train_per_category, heldout_per_category=args.heldout_per_category,
            pairs_per_category=args.pairs_per_category, resolution=args.catalog_resolution or args.resolution,
            seed=args.seed, split=args.photo_split))
    else:
        make_catalog(directory, catalog_config(args, style_seed))
    return load_training_arrays(os.path.join(directory, "train.parquet"), args.resolution).as_dict()


# -------------------------------------------------------------------------------- modes


def run_scratch(args) -> dict:
    """(a) From nothing on the default catalog, with the orderings (CG vs plain, PG)."""
    catalog_dir = os.path.join(args.workdir, "catalog")
    data = load_catalog(args, catalog_dir, None)
    categories = sorted(set(data["categories"]))
    base_dir = os.path.join(args.workdir, "base")
    wall_file = os.path.join(base_dir, "wall.json")
    if args.reuse_base and os.path.exists(wall_file):
        # The base phase does not depend on anything CG does: a rerun may keep it, with the
        # wall time and steps it was measured at when this script trained it.
        model = BackdropModel.from_pretrained(base_dir)
        with open(wall_file) as f:
            base = json.load(f)
    else:
        model = BackdropModel.tiny(categories, TinyPreset(resolution=args.resolution), seed=args.seed)
        base = {}
        for i, stage in enumerate(("vae", "base")):
            _, r = train_for(model, data, stage, stage_budget(args, stage), args.seed + i, batch_size=args.batch_size)
            base[stage] = {"steps": r.steps, "minutes": round(r.seconds / 60, 3)}
        model.save_pretrained(base_dir)
        with open(wall_file, "w") as f:
            json.dump(base, f)
    curve, r = run_curve(model, data, catalog_dir, args.workdir, "cg", args, args.seed + 10)
    final = curve[-1]
    results = {"mode": "scratch", "base": base, "curve": curve, "cg": final,
               "cg_steps_per_s": steps_per_second(r.steps, r.seconds)}
    if not args.skip_baseline:  # the same base, the same budget as the last curve point
        plain = BackdropModel.from_pretrained(base_dir).with_fresh_generators("plain")
        _, rp = train_for(plain, data, "cg", curve_budgets(args)[-1], args.seed + 10, batch_size=args.batch_size,
                          **cg_loss(args))
        plain_dir = os.path.join(args.workdir, "plain-controlnet")
        plain.save_pretrained(plain_dir)
        res = evaluate_checkpoint(plain_dir, catalog_dir, os.path.join(args.workdir, "eval", "plain-controlnet"),
                                  args, False)
        results["plain_controlnet"] = {"cg_steps": rp.steps, "cg_minutes": round(rp.seconds / 60, 3),
                                       "category_consistency": res["category_consistency"],
                                       "product_leak": res["product_leak"],
                                       "real_product_leak": res["real_product_leak"],
                                       "grid": res["grids"]["categories"]}
    if not args.skip_pg:
        results["pg"] = run_pg(final["checkpoint"], data, catalog_dir, os.path.join(args.workdir, "cg-pg"), args)
    return results


def run_pg(cg_dir: str, data: dict, catalog_dir: str, out_dir: str, args) -> dict:
    """PG on top of a CG checkpoint, then the reference metrics (CG+PG vs CG alone, copy-paste)."""
    full = BackdropModel.from_pretrained(cg_dir)
    _, r = train_for(full, data, "pg", pg_budget(args), args.seed + 20, batch_size=args.batch_size)
    full.save_pretrained(out_dir)
    res = evaluate_checkpoint(out_dir, catalog_dir, os.path.join(os.path.dirname(out_dir), "eval",
                                                                  os.path.basename(out_dir)), args, True)
    pg = {k: res[k] for k in res if k.startswith(("ref_similarity", "copy_paste"))}
    pg.update(pg_steps=r.steps, pg_minutes=round(r.seconds / 60, 3), product_bit_identical=res["product_bit_identical"])
    return pg


def adapt_targets(args) -> list[tuple[str, int | None, str | None]]:
    """(name, style seed, photo catalog) of every catalog adapt mode measures."""
    seeds = [int(x) for x in args.style_seeds.split(",") if x.strip()]
    photos = [x.strip() for x in (args.photo_catalogs or "").split(",") if x.strip()]
    return [(f"style-{s}", s, None) for s in seeds] + [(f"photos-{p}", None, p) for p in photos]


def run_adapt(args) -> dict:
    """(b) From ``--init``, CG (then PG) fine-tuned on catalogs it never saw."""
    targets = adapt_targets(args)
    per_catalog, steps_total, seconds_total = {}, 0, 0.0
    pg_targets = [t[0] for t in targets][: len(targets) if args.pg_seeds is None else args.pg_seeds]
    for name, style_seed, photos in targets:
        workdir = os.path.join(args.workdir, name)
        catalog_dir = os.path.join(workdir, "catalog")
        data = load_catalog(args, catalog_dir, style_seed, photos)
        model = starting_model(args.init, sorted(set(data["categories"])), ("cg", "pg"))
        base = None
        if args.adapt_base_steps:  # the base refit on the catalog first (its words with "{category}")
            _, rb = train_for(model, data, "base", Budget(steps=args.adapt_base_steps), args.seed + 5,
                              batch_size=args.batch_size, loss_weighting=args.base_loss_weighting,
                              base_caption=args.adapt_base_caption)
            base = {"steps": rb.steps, "minutes": round(rb.seconds / 60, 3), "caption": args.adapt_base_caption}
        curve, r = run_curve(model, data, catalog_dir, workdir, "cg", args, args.seed + 10)
        steps_total, seconds_total = steps_total + r.steps, seconds_total + r.seconds
        last = curve[-1]
        entry = {"curve": curve, "gallery": last["grid"], "base": base,
                 "bar_met": last["category_consistency"] >= BAR and last["pattern_ratio"] >= PATTERN_BAR}
        if not args.skip_pg and name in pg_targets:
            entry["pg"] = run_pg(last["checkpoint"], data, catalog_dir, os.path.join(workdir, "cg-pg"), args)
            entry["gallery_references"] = os.path.join(workdir, "eval", "cg-pg-references.png")
        per_catalog[name] = entry
        log.info("%s: %s", name, {k: v for k, v in last.items() if k not in ("checkpoint", "grid")})
    points = []
    for k in range(len(curve_budgets(args))):
        rows = [e["curve"][k] for e in per_catalog.values()]
        cons = np.array([x["category_consistency"] for x in rows])
        pattern = np.array([x["pattern_consistency"] for x in rows])
        ratio = np.array([x["pattern_ratio"] for x in rows])
        points.append({"cg_steps": int(np.mean([x["cg_steps"] for x in rows])),
                       "cg_minutes": float(np.mean([x["cg_minutes"] for x in rows])),
                       "consistency_mean": float(cons.mean()), "consistency_std": float(cons.std()),
                       "consistency_min": float(cons.min()), "consistency_max": float(cons.max()),
                       "pattern_mean": float(pattern.mean()), "pattern_std": float(pattern.std()),
                       "pattern_ratio_mean": float(ratio.mean()), "pattern_ratio_min": float(ratio.min()),
                       "leak_mean": float(np.mean([x["product_leak"] for x in rows]))})
    return {"mode": "adapt", "init": args.init, "catalogs": [t[0] for t in targets], "per_catalog": per_catalog,
            "points": points, "bar": BAR, "pattern_bar": PATTERN_BAR,
            "bar_met": all(e["bar_met"] for e in per_catalog.values()),
            "cg_steps_per_s": steps_per_second(steps_total, seconds_total)}


def run_table1(args) -> dict:
    """Table 1 revisited: CG vs plain ControlNet on a base with and without category words."""
    s = int(args.style_seeds.split(",")[0])
    catalog_dir = os.path.join(args.workdir, f"style-{s}", "catalog")
    data = load_catalog(args, catalog_dir, s)
    categories = sorted(set(data["categories"]))
    rows, steps_total, seconds_total = [], 0, 0.0
    for name, caption in (("generic base (\"a photo\")", "a photo"),
                          ("category base (\"A photo of {category}\")", CATEGORY_CAPTION)):
        tag = "category-base" if "{category}" in caption else "generic-base"
        base = BackdropModel.from_pretrained(args.init)
        base.categories.extend(categories)
        _, rb = train_for(base, data, "base", stage_budget(args, "base"), args.seed + 1, batch_size=args.batch_size,
                          base_caption=caption)
        base_dir = os.path.join(args.workdir, tag)
        base.save_pretrained(base_dir)
        for variant, label in (("mask-guided", "CG (mask-guided, identifier prompt)"),
                               ("plain", "plain ControlNet (\"A photo of {category}\")")):
            model = BackdropModel.from_pretrained(base_dir).with_fresh_generators(variant)
            _, r = train_for(model, data, "cg", curve_budgets(args)[-1], args.seed + 10, batch_size=args.batch_size,
                             **cg_loss(args))
            steps_total, seconds_total = steps_total + r.steps, seconds_total + r.seconds
            out_dir = os.path.join(args.workdir, f"{tag}-{variant}")
            model.save_pretrained(out_dir)
            res = evaluate_checkpoint(out_dir, catalog_dir, os.path.join(args.workdir, "eval", f"{tag}-{variant}"),
                                      args, False)
            rows.append({"base": name, "base_steps": rb.steps, "model": label, "cg_steps": r.steps,
                         "cg_minutes": round(r.seconds / 60, 3), "category_consistency": res["category_consistency"],
                         "product_leak": res["product_leak"], "real_product_leak": res["real_product_leak"],
                         "grid": res["grids"]["categories"]})
    return {"mode": "table1", "init": args.init, "style_seed": s, "rows": rows,
            "cg_steps_per_s": steps_per_second(steps_total, seconds_total)}


# ------------------------------------------------------------------------------- report


def _rate(results: dict, batch_size: int) -> str:
    sps = results["cg_steps_per_s"]
    return (f"Measured on this machine ({os.cpu_count()} cores): **{sps:.2f} CG steps/s** "
            f"({sps * 60:.0f} per minute) at batch {batch_size}; a step budget converts to minutes with it.")


def render_report(results: dict, args) -> str:
    mode, res = results["mode"], args.resolution
    lines = [f"# Quality bar: {mode} ({res} px, batch {args.batch_size})", "", _rate(results, args.batch_size), "",
             f"Evaluated at {args.eval_steps} DDIM steps, guidance {args.eval_guidance:g}.", ""]
    if mode == "scratch":
        base = ", ".join(f"{k} {v['steps']} steps / {v['minutes']:.1f} min" for k, v in results["base"].items())
        lines += [f"Base: {base}",
                  "", "## Category consistency of CG (chance = 1/categories)", "",
                  "| CG steps | CG wall min | colour consistency | pattern consistency | product leak |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['cg_steps']} | {c['cg_minutes']:.2f} | {c['category_consistency']:.3f} | "
                  f"{c['pattern_consistency']:.3f} | {c['product_leak']:.3f} |" for c in results["curve"]]
        if "plain_controlnet" in results:
            b, cg = results["plain_controlnet"], results["cg"]
            lines += ["", "## Mask-guided CG vs plain ControlNet (same base, same CG steps)", "",
                      "| model | CG steps | consistency | product leak into background |", "| --- | --- | --- | --- |",
                      f"| CG (mask-guided, identifier prompt) | {cg['cg_steps']} | {cg['category_consistency']:.3f} | "
                      f"{cg['product_leak']:.3f} |",
                      f"| plain ControlNet (\"A photo of {{category}}\") | {b['cg_steps']} | "
                      f"{b['category_consistency']:.3f} | {b['product_leak']:.3f} |",
                      f"| real held-out ad images | | 1.000 | {b['real_product_leak']:.3f} |"]
    elif mode == "adapt":
        lines += [f"From `{results['init']}` on {', '.join(results['catalogs'])} (catalogs it never saw). "
                  f"Bar, per catalog at the last point: colour consistency >= {BAR} and pattern consistency "
                  f">= {PATTERN_BAR} x the true backgrounds': **{'met' if results['bar_met'] else 'not met'}**.",
                  "", "| CG steps | CG wall min (mean) | colour mean | std | min | max | pattern mean | std "
                  "| pattern / truth mean | min | leak mean |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {p['cg_steps']} | {p['cg_minutes']:.2f} | {p['consistency_mean']:.3f} | {p['consistency_std']:.3f} "
                  f"| {p['consistency_min']:.3f} | {p['consistency_max']:.3f} | {p['pattern_mean']:.3f} "
                  f"| {p['pattern_std']:.3f} | {p['pattern_ratio_mean']:.3f} | {p['pattern_ratio_min']:.3f} "
                  f"| {p['leak_mean']:.3f} |" for p in results["points"]]
        for name, e in results["per_catalog"].items():
            lines += ["", f"### {name} (bar {'met' if e['bar_met'] else 'not met'})", ""]
            if e.get("base"):
                b = e["base"]
                lines += [f"Before CG: the base refit on the catalog for {b['steps']} steps ({b['minutes']:.2f} wall "
                          f"min), caption `{b['caption']}`.", ""]
            lines += ["| CG steps | CG wall min | colour | pattern | truth's pattern | pattern / truth | product leak |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {c['cg_steps']} | {c['cg_minutes']:.2f} | {c['category_consistency']:.3f} | "
                      f"{c['pattern_consistency']:.3f} | {c['real_pattern_consistency']:.3f} | {c['pattern_ratio']:.3f} | "
                      f"{c['product_leak']:.3f} |" for c in e["curve"]]
            if "pg" in e:
                lines += ["", "PG: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in e["pg"].items())]
    else:
        lines += [f"From `{results['init']}`, style seed {results['style_seed']}: the base UNet trained on the "
                  "catalog with each caption for the same steps, then each generator for the same CG steps.", "",
                  "| base | model | CG steps | consistency | product leak | real-ad leak |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['base']} | {r['model']} | {r['cg_steps']} | {r['category_consistency']:.3f} | "
                  f"{r['product_leak']:.3f} | {r['real_product_leak']:.3f} |" for r in results["rows"]]
    if results.get("pg"):
        lines += ["", "## Reference-based generation (PG)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results["pg"].items()]
    return "\n".join(lines) + "\n"


def galleries(results: dict) -> dict[str, str]:
    """name -> PNG path of the grids worth publishing."""
    if results["mode"] == "adapt":
        out = {name: e["gallery"] for name, e in results["per_catalog"].items()}
        out.update({f"{name}-references": e["gallery_references"] for name, e in results["per_catalog"].items()
                    if os.path.exists(e.get("gallery_references", ""))})
        return out
    if results["mode"] == "table1":
        return {os.path.basename(r["grid"]).removesuffix("-categories.png"): r["grid"] for r in results["rows"]}
    out = {"cg": results["cg"]["grid"]}
    if "plain_controlnet" in results:
        out["plain-controlnet"] = results["plain_controlnet"]["grid"]
    return out


def write_report(results: dict, args) -> str:
    """Markdown + JSON + galleries under --results-dir, and the same in an MLflow run."""
    import shutil

    import mlflow

    from backdrop import registry

    stem = f"quality-{args.resolution}px" + ("" if results["mode"] == "scratch" else f"-{results['mode']}")
    if args.report_tag:
        stem += f"-{args.report_tag}"
    if args.cg_timestep_sampling != "importance":
        stem += f"-cg-{args.cg_timestep_sampling}-t"
    if args.cg_loss_weighting != "high-noise":
        stem += f"-cg-{args.cg_loss_weighting}-weighting"
    if args.cg_lr_schedule != "constant":
        stem += f"-cg-{args.cg_lr_schedule}-lr"
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, stem)
    pictures = {}
    for name, path in galleries(results).items():
        pictures[name] = f"{out}-{name}.png"
        shutil.copyfile(path, pictures[name])
    results["galleries"] = pictures
    text = render_report(results, args)
    text += "".join(f"\n![{name}]({os.path.basename(p)})\n" for name, p in pictures.items())
    print(text)
    with open(out + ".md", "w") as f:
        f.write(text)
    registry.configure()
    with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name=f"{stem}-bar") as run:
        mlflow.set_tags({"job": "quality_bar", "mode": results["mode"]})
        mlflow.log_metric("cg_steps_per_s", results["cg_steps_per_s"])
        for c in results.get("curve", []):
            mlflow.log_metric("category_consistency", c["category_consistency"], step=c["cg_steps"])
            mlflow.log_metric("pattern_consistency", c["pattern_consistency"], step=c["cg_steps"])
        for p in results.get("points", []):
            mlflow.log_metric("consistency_mean", p["consistency_mean"], step=p["cg_steps"])
            mlflow.log_metric("consistency_std", p["consistency_std"], step=p["cg_steps"])
            mlflow.log_metric("pattern_mean", p["pattern_mean"], step=p["cg_steps"])
            mlflow.log_metric("pattern_ratio_min", p["pattern_ratio_min"], step=p["cg_steps"])
        mlflow.log_text(text, "quality.md")
        mlflow.log_dict(results, "quality.json")
        for name, path in pictures.items():
            mlflow.log_artifact(path, "galleries")
        results["mlflow_run_id"] = run.info.run_id
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    return out


# --------------------------------------------------------------------------------- main


@dataclass
class QualityBarRecipe:
    """Every knob of this benchmark, declared once: a flag each, a ``--config`` YAML file of
    them (``recipes/benchmarks/*.yaml``: the README's runs) and ``key=value`` overrides."""

    mode: str = knob("scratch", "scratch: from nothing on the demo catalog; adapt: from --init on unseen "
                                "catalogs; table1: the paper's Table 1 question", choices=("scratch", "adapt", "table1"))
    workdir: str = knob("runs/quality", "catalogs, checkpoints and evaluations go here")
    results_dir: str = knob(os.path.join(HERE, "results"), "where the report (md, json, png) is written")
    resolution: int = knob(64, "64 (the bar) or 128")
    catalog_resolution: Optional[int] = knob(None, "the catalog's pixels (default: resolution); a user's 128 px "
                                                   "catalog trains at 64")
    categories: int = knob(8, "categories of the synthetic catalogs")
    train_per_category: int = knob(SyntheticConfig.train_per_category, "training ads per category")
    heldout_per_category: int = knob(SyntheticConfig.heldout_per_category, "held-out products per category")
    pairs_per_category: int = knob(SyntheticConfig.pairs_per_category, "reference pairs per category")
    batch_size: int = knob(32, "images per training step")
    steps: str = knob("", "base budgets in steps, e.g. vae=2000,base=3000 (scratch, table1)")
    minutes: str = knob("vae=5,base=4", "base budgets in wall minutes where steps has none")
    cg_steps: int = knob(1500, "the last CG curve point")
    curve_steps: Optional[str] = knob(None, "cumulative CG steps at which to evaluate (default: 4 points to cg_steps)")
    curve_minutes: Optional[str] = knob(None, "cumulative CG wall minutes instead of steps", aliases=("--curve",))
    pg_steps: int = knob(300, "PG steps")
    pg_minutes: Optional[float] = knob(None, "PG budget in wall minutes instead of pg_steps")
    init: str = knob(os.path.join(ROOT, "checkpoints", "tiny-64"),
                     "adapt / table1: the checkpoint to start from (the shipped one or a prior model)")
    style_seeds: str = knob("11,12,13", "adapt: one catalog per seed; table1: the first")
    photo_catalogs: str = knob("", "adapt: photographic catalogs too (benchmarks/photo_catalogs.py: textures, "
                                   "nature, outdoors)")
    photo_split: str = knob("band", "photo catalogs' held-out split (backdrop.demo.photos): band or checker",
                            choices=("band", "checker"))
    skip_baseline: bool = knob(False, "skip the plain-ControlNet baseline")
    skip_pg: bool = knob(False, "skip PG")
    pg_seeds: Optional[int] = knob(None, "adapt: train and measure PG on the first N catalogs only")
    eval_steps: int = knob(20, "denoising steps of the evaluation")
    eval_guidance: float = knob(DEFAULT_GUIDANCE, "classifier-free guidance of the evaluation (2 before the sweep)")
    per_category: int = knob(12, "held-out products evaluated per category")
    pairs: int = knob(32, "reference pairs evaluated")
    seed: int = knob(0, "random seed")
    cg_timestep_sampling: str = knob("importance", "the ablation: 'uniform' draws CG's timesteps uniformly and "
                                                   "weights the loss", choices=("importance", "uniform"))
    cg_loss_weighting: str = knob("high-noise", "CG's loss weighting: 'high-noise' (1 + 1/SNR, capped) or 'none' "
                                                "(plain eps-MSE over uniform t, the paper's Eq. 1)",
                                  choices=("high-noise", "none"))
    adapt_base_steps: int = knob(0, "adapt: steps of the base stage on each catalog before CG (0: the shipped "
                                    "base as it is)")
    adapt_base_caption: str = knob(CATEGORY_CAPTION, "adapt: that base stage's caption")
    base_loss_weighting: str = knob("high-noise", "the base stage's loss weighting (see cg_loss_weighting)",
                                    choices=("high-noise", "none"))
    cg_lr_schedule: str = knob("constant", "CG's learning rate: constant, or cosine to 0 over the last curve point",
                               choices=("constant", "cosine"))
    report_tag: str = knob("", "appended to the report's file names (several runs side by side)")
    reuse_base: bool = knob(False, "scratch: keep WORKDIR/base (and its measured steps and minutes) from an "
                                   "earlier run")


def parse(argv=None) -> QualityBarRecipe:
    return config_files.parse_recipe(QualityBarRecipe, argv, description=__doc__)


def main(argv=None) -> int:
    args = parse(argv)
    configure_logging()
    os.makedirs(args.workdir, exist_ok=True)
    results = {"scratch": run_scratch, "adapt": run_adapt, "table1": run_table1}[args.mode](args)
    results["resolution"] = args.resolution
    results["batch_size"] = args.batch_size
    results["cg_timestep_sampling"] = args.cg_timestep_sampling
    results["cg_loss_weighting"] = args.cg_loss_weighting
    results["cg_lr_schedule"] = args.cg_lr_schedule
    results["recipe"] = config_files.to_yaml(args)
    write_report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
