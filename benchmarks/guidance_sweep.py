"""Classifier-free guidance against both category judges, on the shipped and on adapted generators.

    .venv/bin/python benchmarks/guidance_sweep.py                      # the shipped model, demo catalog
    .venv/bin/python benchmarks/guidance_sweep.py --config recipes/benchmarks/guidance-sweep.yaml
    .venv/bin/python benchmarks/guidance_sweep.py --quick              # a smoke run, numbers meaningless

Each generator (``label=MODEL_DIR@CATALOG_DIR``; the default: ``checkpoints/tiny-64`` on the demo
catalog, ``demo.synthetic.make_catalog`` seed 0) generates its catalog's held-out products at each
guidance, judged by ``quality/evaluation.py``: colour consistency (8x8 mean colours, nearest
held-out centroid) and pattern consistency (the colour-blind texture judge fitted on the train
ads), beside the true backgrounds' own scores. Guidance at or below 1 runs the conditional branch
alone (no classifier-free guidance), as diffusers does.

Negative control, per generator at the default guidance: each product generated for the *next*
category (``EvalConfig.category_shift = 1``) and judged against its own. A generator that follows
its prompt, judged by judges that see the category, scores near chance there; the control is
rejected when both consistencies are at most 0.35 (the forgery bound of the judges' CI tests).

Writes benchmarks/results/guidance.md (+ .json).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from backdrop import config_files, runtime  # noqa: E402
from backdrop.catalog import catalog_splits  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.demo.synthetic import SyntheticConfig, make_catalog  # noqa: E402
from backdrop.limits import DEFAULT_GUIDANCE  # noqa: E402
from backdrop.quality.evaluation import EvalConfig, Judges, evaluate  # noqa: E402

CONTROL_BOUND = 0.35


@dataclass
class GuidanceSweepRecipe:
    """The generators, catalogs and guidances swept (flags, ``--config``, ``key=value``)."""

    generators: str = knob("", "comma-separated label=MODEL_DIR@CATALOG_DIR (empty: the shipped model, demo catalog)")
    guidances: str = knob("1,2,4,5,7")
    steps: int = knob(20, "DDIM steps per generation")
    per_category: int = knob(12)
    quick: bool = knob(False)
    report_tag: str = knob("", "suffix of the report's name (guidance-TAG.md)")
    output_dir: str = knob(str(ROOT / "benchmarks" / "results"))


def sweep(label: str, model_dir: str, catalog: dict[str, str], guidances: list[float], args) -> dict:
    model = runtime.load(model_dir, device="cpu").model
    base = EvalConfig(steps=args.steps, per_category=args.per_category)
    judges = Judges.fit(catalog, model.categories.names, base)  # one fit for every guidance and the control

    def judge(guidance: float, shift: int = 0) -> dict:
        cfg = replace(base, guidance=guidance, category_shift=shift)
        m = evaluate(model, catalog, cfg, with_references=False, judges=judges).metrics
        row = {"generator": label, "guidance": guidance, "colour": m["category_consistency"],
               "pattern": m["pattern_consistency"], "truth_colour": m["real_consistency"],
               "truth_pattern": m["real_pattern_consistency"], "chance": m["chance"],
               "colour_by_train": m["colour_by_train_centroids"], "truth_colour_by_train": m["real_colour_by_train_centroids"],
               "bit_identical": m["product_bit_identical"], "n": m["n_generated"], "category_shift": shift}
        print(json.dumps(row), flush=True)
        return row

    rows = [judge(g) for g in guidances]
    control = judge(DEFAULT_GUIDANCE, shift=1)
    control["rejected"] = control["colour"] <= CONTROL_BOUND and control["pattern"] <= CONTROL_BOUND
    return {"generator": label, "model": model_dir, "rows": rows, "control": control}


def main(argv=None) -> int:
    args = config_files.parse_recipe(GuidanceSweepRecipe, argv, description=__doc__)
    guidances = [float(g) for g in args.guidances.split(",")]
    if args.quick:
        guidances, args.per_category, args.steps = [1.0, DEFAULT_GUIDANCE], 1, 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.generators:
            for item in args.generators.split(","):
                label, _, rest = item.strip().partition("=")
                model_dir, _, catalog_dir = rest.partition("@")
                results.append(sweep(label, model_dir, catalog_splits(catalog_dir), guidances, args))
        else:
            model_dir = str(ROOT / "checkpoints" / "tiny-64")
            n = len(runtime.load(model_dir, device="cpu").categories.names)
            catalog = make_catalog(tmp, SyntheticConfig(num_categories=n, train_per_category=20 if args.quick else 160))
            results.append(sweep("shipped on demo", model_dir, catalog, guidances, args))

    name = "guidance" + (f"-{args.report_tag}" if args.report_tag else "") + ("-quick" if args.quick else "")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"default_guidance": DEFAULT_GUIDANCE, "steps": args.steps, "per_category": args.per_category,
              "control_bound": CONTROL_BOUND, "generators": results, "recipe": config_files.to_yaml(args)}
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Guidance against the colour and pattern judges ({args.steps} DDIM steps, held-out)", "",
             f"{args.per_category} held-out products per category per setting, one noise seed; the project's "
             f"default guidance is {DEFAULT_GUIDANCE:g}. Pattern / truth is the generations' pattern consistency "
             "over the true backgrounds'.", "",
             "Colour by train centroids: the same colour judge with its category centroids from the train ads "
             "instead of the held-out ones (what the generator could learn, where the held-out ads come "
             "from another part of each photograph).", "",
             "| generator | guidance | colour (truth) | colour by train centroids (truth) | pattern (truth) | pattern / truth |",
             "| --- | --- | --- | --- | --- | --- |"]
    for res in results:
        for r in res["rows"] + [res["control"]]:
            tag = " (control: next category)" if r["category_shift"] else ""
            lines.append(f"| {r['generator']}{tag} | {r['guidance']:g} | {r['colour']:.3f} ({r['truth_colour']:.3f}) | "
                         f"{r['colour_by_train']:.3f} ({r['truth_colour_by_train']:.3f}) | "
                         f"{r['pattern']:.3f} ({r['truth_pattern']:.3f}) | "
                         f"{r['pattern'] / max(r['truth_pattern'], 1e-9):.2f} |")
    lines += ["", "Negative control rejected (both consistencies <= "
              f"{CONTROL_BOUND} for the next category's generations): "
              + ", ".join(f"{r['generator']} {'yes' if r['control']['rejected'] else 'NO'}" for r in results) + ".",
              "Product bit-identical in every output: "
              + ("yes" if all(r["bit_identical"] for res in results for r in res["rows"] + [res["control"]]) else "NO")
              + "."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
