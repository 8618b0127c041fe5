"""The README's main command, on one machine: synthetic catalog -> tiny generator -> MLflow
registry (evaluation gate) -> Ray Data backfill -> galleries."""

from __future__ import annotations

import logging
import os
import time

from .. import registry, runtime, storage
from ..batch.config import BackfillConfig
from ..batch.run import run_backfill
from ..catalog import read_catalog
from ..gallery import contact_sheet, masked_product
from ..inputs import fetch_product
from ..quality.evaluation import EvalConfig, evaluate
from ..runtime import row_seed
from ..training import DEFAULT_MINUTES, STAGES, train_generator
from ..training.tracking import record_generator, training_run
from .synthetic import SyntheticConfig, make_catalog

log = logging.getLogger(__name__)


def run_demo(
    workdir: str,
    *,
    train_minutes: float = 1.0,
    from_scratch: bool = False,
    checkpoint: str | None = None,
    steps: int = 20,
    per_category: int = 4,
) -> dict[str, str]:
    t0 = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    catalog = make_catalog(os.path.join(workdir, "catalog"), SyntheticConfig())
    log.info("[1/5] synthetic catalog ready (%.0fs): %s", time.perf_counter() - t0, catalog["train"])

    model_dir = os.path.join(workdir, "model")
    scratch = from_scratch or not checkpoint or not os.path.isdir(checkpoint)
    stages, init = (STAGES, None) if scratch else (("cg",), checkpoint)
    minutes = DEFAULT_MINUTES if scratch else {"cg": train_minutes}
    # one MLflow run holds the training (loss curves), the evaluation and the registered model
    with training_run("demo-train", {"catalog": catalog["train"], "stages": ",".join(stages), "init": init,
                                     "minutes": minutes}) as on_log:
        if scratch:
            log.info("[2/5] training every stage from nothing: %s", DEFAULT_MINUTES)
        else:
            log.info("[2/5] fine-tuning CG of the shipped checkpoint %s for %.1f min", checkpoint, train_minutes)
        model, _ = train_generator(catalog["train"], model_dir, stages=stages, init=init, minutes=minutes,
                                   on_log=on_log)
        log.info("[3/5] evaluating, registering in MLflow and promoting through the gate")
        ref = register(model, catalog, steps, stages=stages, init=init)

    log.info("[4/5] catalog backfill of the held-out split through Ray Data with %s", ref)
    backfill = run_backfill(BackfillConfig(catalog=catalog["heldout"], model=ref,
                                           output=os.path.join(workdir, "backfill"), steps=steps))

    log.info("[5/5] galleries (%d DDIM steps)", steps)
    out = render_galleries(model, catalog, os.path.join(workdir, "gallery"), steps=steps, per_category=per_category)
    out["manifest"] = storage.join(backfill.config.output, "manifest.parquet")
    log.info("demo done in %.1f min; open %s", (time.perf_counter() - t0) / 60, out["category"])
    print(f"\ngalleries:\n  {out['category']}\n  {out['reference']}\n  {out['html']}\n"
          f"backfill manifest ({backfill.ok} ok, {backfill.failed} failed): "
          f"{out['manifest']}\n"
          f"MLflow: mlflow ui --backend-store-uri {registry.tracking_uri()}")
    return out


def register(model, catalog: dict, steps: int, name: str = "backdrop", stages=("cg",), init: str | None = None) -> str:
    """Evaluate, register a new version (in the active MLflow run), and move ``champion`` to it
    if the gate allows."""
    import mlflow

    result = evaluate(model, catalog, EvalConfig(steps=steps, per_category=6), with_references=False)
    registry.log_evaluation(result.numbers(), result.grids, result.report())
    mlflow.set_tag("source", "demo")
    version = str(record_generator(model, catalog["train"], stages, "demo-train", register=name, init=init).version)
    registry.record_metrics(name, version, result.numbers())
    try:
        registry.promote(name, version, allow_no_baseline=True)  # the demo's first run makes the first champion
    except registry.RegistryError as e:  # an earlier, better champion stays in place
        log.warning("%s", e)
    log.info("category consistency %.3f by colour, %.3f by pattern (true backgrounds %.3f); %s v%s registered",
             result.metrics["category_consistency"], result.metrics["pattern_consistency"],
             result.metrics["real_pattern_consistency"], name, version)
    return f"models:/{name}@{registry.CHAMPION}"


def render_galleries(model, catalog: dict, out_dir: str, steps: int = 20,
                     per_category: int = 4) -> dict[str, str]:
    """One row per category (product, then generated backgrounds); one row per reference pair."""
    gen = runtime.wrap(model)
    config = runtime.inference(steps)
    os.makedirs(out_dir, exist_ok=True)

    heldout = read_catalog(catalog["heldout"]).to_pylist()
    rows, labels = [], []
    for category in model.categories.names:
        picks = [r for r in heldout if r["category"] == category][:per_category]
        if not picks:
            continue
        reqs = [fetch_product(r).requests([row_seed(0, r["product_id"])])[0] for r in picks]
        outs = runtime.generate_all(gen, reqs, config)
        rows.append([masked_product(reqs[0].image, reqs[0].mask)] + outs)
        labels.append(category)
    cat_path = os.path.join(out_dir, "categories.png")
    contact_sheet(rows, row_labels=labels,
                  column_labels=["product"] + [f"CG #{i + 1}" for i in range(per_category)]).save(cat_path)

    pairs = read_catalog(catalog["pairs"]).to_pylist()
    pair_rows, pair_labels = [], []
    for category in model.categories.names:
        picks = [r for r in pairs if r["category"] == category][:2]
        for r in picks:
            with_ref = fetch_product(r).requests([row_seed(0, r["product_id"])])[0]
            without = fetch_product({**r, "reference_uri": None}).requests([row_seed(0, r["product_id"])])[0]
            a, b = runtime.generate_all(gen, [with_ref, without], config)
            pair_rows.append([masked_product(with_ref.image, with_ref.mask), with_ref.reference, a, b])
            pair_labels.append(f"{category}/{r['brand'][-7:]}")
    ref_path = os.path.join(out_dir, "references.png")
    contact_sheet(pair_rows, row_labels=pair_labels,
                  column_labels=["product", "reference", "CG+PG", "CG alone"]).save(ref_path)

    html_path = os.path.join(out_dir, "index.html")
    storage.write_bytes(html_path, (
        "<!doctype html><title>backdrop demo</title><h1>backdrop demo</h1>"
        "<h2>Category-wise (CG)</h2><img src='categories.png'>"
        "<h2>Reference-based (CG + PG)</h2><img src='references.png'>"
    ).encode())
    return {"category": cat_path, "reference": ref_path, "html": html_path}
