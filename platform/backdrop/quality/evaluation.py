"""Held-out evaluation of a generator: the numbers behind the quality bar and the promotion gate.

Category consistency is judged twice:

* by **colour** (``category_consistency``): nearest centroid of ``metrics.background_features``
  (fixed, parameter-free) against the held-out split's real images;
* by **pattern** (``pattern_consistency``): ``pattern.PatternJudge``, colour-blind texture
  statistics, fitted on the train split's ads at odd row positions (the QA scorer's copy is
  fitted on the even ones, so best-of-N does not pick by the very function it is judged by).

Each comes with the same judge's score on the real held-out images (``real_consistency``,
``real_pattern_consistency``): a model is compared with what its judge gives the truth. And
``vae_pattern_consistency`` judges those real images after a round trip through the model's
VAE: no generation decoded by that VAE can be expected to keep more pattern than that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from PIL import Image

from .. import config_files, registry, runtime
from ..catalog import catalog_splits, read_catalog
from ..categories import normalize
from ..config_files import knob
from ..gallery import contact_sheet, masked_product
from ..inputs import fetch_product, fetch_reference
from ..limits import DEFAULT_GUIDANCE
from ..pipeline import GenerationRequest, InferenceConfig
from ..runtime import LoadedGenerator, row_seed
from ..schedulers import SCHEDULERS
from . import metrics
from .pattern import PatternJudge

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """How a generator is evaluated; ``EvaluateJob`` adds what the job evaluates and where the
    numbers go. Every field is a flag of ``jobs/evaluate.py`` and a key of its ``--config`` file."""

    # 20: the spike measured no gain from 50 over 20 DDIM steps at 64 px
    steps: int = knob(20, "denoising steps per generation")
    guidance: float = knob(DEFAULT_GUIDANCE, "classifier-free guidance")
    scheduler: str = knob("ddim", "denoising scheduler", choices=tuple(SCHEDULERS))
    per_category: int = knob(12, "held-out products generated per category")
    pairs: int = knob(32, "reference pairs for the PG / reference metrics")
    palette_rows: int = knob(400, "train ads the colour judge's palette is drawn from")
    judge_rows: int = knob(640, "train ads the pattern judge is fitted on")
    batch_size: int = knob(48, "requests per generator call")
    seed: int = knob(0, "base seed; each product's seed derives from it")
    clip_model: Optional[str] = knob(None, "CLIP vision dir (local or s3://) for CLIP similarity and FID")
    # A negative control for anything that compares generations (benchmarks/guidance_sweep.py):
    # each product is generated for the category this many places further along the model's list
    # and judged against its own, so a generator that follows its prompt must score near chance.
    category_shift: int = knob(0, "negative control: generate the category this many places along")


@dataclass
class EvaluateJob(EvalConfig):
    """``jobs/evaluate.py``: a model on a catalog's held-out split and pairs, the numbers written
    and logged, and a registered version's ``eval.*`` tags (what the promotion gate reads)."""

    model: str = knob("???", "models:/NAME@ALIAS, models:/NAME/VERSION or a path")
    catalog_dir: str = knob("???", "directory (or s3:// prefix) with train/heldout/pairs.parquet")
    references: bool = knob(True, "the PG / reference metrics (--no-references skips them)")
    output: Optional[str] = knob(None, "write <output>.md, <output>.json and its grids")
    mlflow: bool = knob(True, "log an MLflow run (--no-mlflow: do not)")
    run_name: str = knob("evaluate", "the MLflow run's name")


@dataclass
class EvalResult:
    metrics: dict
    per_category: dict = field(default_factory=dict)
    grids: dict = field(default_factory=dict)  # name -> PIL image

    def table(self) -> str:
        lines = ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in self.metrics.items()]
        return "\n".join(lines)

    def numbers(self) -> dict[str, float]:
        """The metrics that are numbers: what MLflow logs and the registry tags a version with."""
        return {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float))}  # bools as 0/1

    def report(self, **about) -> dict:
        return {**about, **self.metrics, "per_category": self.per_category}

    def save(self, output: str, title: str, **about) -> dict:
        """``output``.md, ``output``.json and ``output``-<grid>.png; returns the report (with the
        grids' paths), the one written form of an evaluation for the job, the demo and the
        benchmarks."""
        import json
        import os

        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        report = self.report(**about, grids={name: f"{output}-{name}.png" for name in self.grids})
        for name, grid in self.grids.items():
            grid.save(f"{output}-{name}.png")
        with open(output + ".json", "w") as f:
            json.dump(report, f, indent=2, default=str)
        with open(output + ".md", "w") as f:
            f.write(f"{title}\n\n{self.table()}\n")
        return report


def _request(row: dict, seed: int) -> GenerationRequest:
    return fetch_product(row).requests([seed])[0]


def _shifted(reqs: list[GenerationRequest], shift: int) -> list[GenerationRequest]:
    """``reqs`` asking for another of the evaluated categories (``EvalConfig.category_shift``)."""
    if not shift:
        return reqs
    names = list(dict.fromkeys(normalize(q.category) for q in reqs))
    return [replace(q, category=names[(names.index(normalize(q.category)) + shift) % len(names)]) for q in reqs]


def _bit_identical(outputs, requests) -> bool:
    return all(
        np.array_equal(np.asarray(o)[r.mask > 0.5], np.asarray(r.image.convert("RGB"))[r.mask > 0.5])
        for o, r in zip(outputs, requests)
    )


@dataclass
class Judges:
    """Everything an evaluation judges with that depends on the catalog and not on the model: the
    held-out ads (the truth), the colour judge's centroids and palette, and the pattern judge.

    Fitted once per catalog and passed to every ``evaluate`` of it: a curve, a sweep or a test
    evaluates one catalog several times, and refitting identical judges each time was a third
    of the quality floor test's wall time. ``fitted_for`` names what a fit depends on, so a
    judge fitted for other categories or other judge knobs is refused, not silently reused."""

    fitted_for: dict
    real: list  # the held-out split's requests (image = the true ad), in catalog order, seed 0
    product_ids: list  # of ``real``: each request's noise seed is derived from it and the config's seed
    real_feats: np.ndarray
    centroids: metrics.CategoryCentroids
    # The same colour judge with its centroids from the train ads: where held-out ads come from
    # another part of each photograph than the train ads (``synth --photos``), it separates what
    # the generator could learn from the held-out split's own palette.
    train_centroids: metrics.CategoryCentroids
    palette: metrics.PaletteModel
    pattern: PatternJudge
    encoder: Optional[metrics.ImageEncoder] = None  # one load, two uses (pattern judge, CLIP metrics)
    _truth: dict = field(default_factory=dict, repr=False)  # truth_scores, by the picked rows

    @staticmethod
    def key(catalog: dict[str, str], categories: list[str], cfg: EvalConfig) -> dict:
        return {"catalog": {k: catalog.get(k) for k in ("train", "heldout")}, "categories": list(categories),
                "palette_rows": cfg.palette_rows, "judge_rows": cfg.judge_rows, "clip_model": cfg.clip_model}

    @classmethod
    def fit(cls, catalog: dict[str, str], categories: list[str], cfg: EvalConfig = EvalConfig()) -> "Judges":
        heldout = [r for r in read_catalog(catalog["heldout"]).to_pylist() if r["category"] in categories]
        real = [_request(r, 0) for r in heldout]
        real_feats = np.stack([metrics.background_features(q.image, q.mask) for q in real])
        all_train = [r for r in read_catalog(catalog["train"]).to_pylist() if r["category"] in categories]
        train_rows = all_train[:: max(1, len(all_train) // cfg.palette_rows)]
        train = [_request(r, 0) for r in train_rows]
        train_cats = [r["category"] for r in train_rows]
        encoder = metrics.ImageEncoder(cfg.clip_model) if cfg.clip_model else None
        return cls(
            fitted_for=cls.key(catalog, categories, cfg),
            real=real,
            product_ids=[r["product_id"] for r in heldout],
            real_feats=real_feats,
            centroids=metrics.CategoryCentroids.fit(real_feats, [r["category"] for r in heldout]),
            train_centroids=metrics.CategoryCentroids.fit(
                np.stack([metrics.background_features(q.image, q.mask) for q in train]), train_cats),
            palette=metrics.PaletteModel.fit([q.image for q in train], [q.mask for q in train], train_cats),
            pattern=fit_pattern_judge(all_train[1::2], cfg.judge_rows, catalog["train"], encoder),
            encoder=encoder,
        )

    def truth_scores(self, picks: list[int]) -> dict:
        """What the judges give the picked true ads: the yardstick every generation is read
        against. It depends on the picks alone, so one catalog's curve or sweep computes it once."""
        key = tuple(picks)
        if key not in self._truth:
            reqs = [self.real[i] for i in picks]
            cats, masks, feats = [q.category for q in reqs], [q.mask for q in reqs], self.real_feats[picks]
            self._truth[key] = {
                "real_consistency": metrics.category_consistency(feats, cats, self.centroids)["category_consistency"],
                "real_colour_by_train_centroids":
                    metrics.category_consistency(feats, cats, self.train_centroids)["category_consistency"],
                "real_pattern_consistency":
                    self.pattern.consistency([q.image for q in reqs], masks, cats)["pattern_consistency"],
                "real_product_leak": float(np.mean([self.palette.leak(q.image, q.mask, q.category) for q in reqs])),
            }
        return self._truth[key]

    def check(self, catalog: dict[str, str], categories: list[str], cfg: EvalConfig) -> None:
        wanted = self.key(catalog, categories, cfg)
        if wanted != self.fitted_for:
            diff = {k: (self.fitted_for[k], v) for k, v in wanted.items() if self.fitted_for[k] != v}
            raise ValueError(f"judges fitted for another evaluation (fitted, asked): {diff}")


def picked_requests(real: list[GenerationRequest], product_ids: list[str], categories: list[str],
                    cfg: EvalConfig) -> tuple[list[int], list[GenerationRequest]]:
    """The held-out products an evaluation generates (``cfg.per_category`` of each category, in
    catalog order) and their requests, each seeded from its product id and ``cfg.seed``. A
    function of the held-out rows alone, so a benchmark can generate the same products without
    fitting the judges."""
    real_cats = [q.category for q in real]
    picks = [i for c in categories for i in [j for j, x in enumerate(real_cats) if x == c][: cfg.per_category]]
    return picks, [replace(real[i], seed=row_seed(cfg.seed, product_ids[i])) for i in picks]


def evaluate(model, catalog: dict[str, str], cfg: EvalConfig = EvalConfig(),
             with_references: bool = True, judges: Optional[Judges] = None) -> EvalResult:
    """Category consistency, product leak, reference similarity (+ablations), copy-paste.

    ``judges`` (``Judges.fit`` for this catalog, the model's categories and ``cfg``) saves
    refitting them when one catalog is evaluated several times."""
    t0 = time.perf_counter()
    gen = runtime.wrap(model)
    infer = InferenceConfig(cfg.steps, cfg.guidance, scheduler=cfg.scheduler)
    if judges is None:
        judges = Judges.fit(catalog, model.categories.names, cfg)
    else:
        judges.check(catalog, model.categories.names, cfg)
    real_feats, judge, palette = judges.real_feats, judges.pattern, judges.palette
    picks, reqs = picked_requests(judges.real, judges.product_ids, model.categories.names, cfg)
    outputs = runtime.generate_all(gen, _shifted(reqs, cfg.category_shift), infer, cfg.batch_size)
    feats = np.stack([metrics.background_features(o, q.mask) for o, q in zip(outputs, reqs)])
    cats, masks = [q.category for q in reqs], [q.mask for q in reqs]
    consistency = metrics.category_consistency(feats, cats, judges.centroids)
    pattern = judge.consistency(outputs, masks, cats)
    # the real ads through the VAE and back: the ceiling the VAE puts on any generation
    vae_pattern = judge.consistency(gen.pipe.autoencode(reqs), masks, cats)
    truth = judges.truth_scores(picks)
    m = {
        "category_consistency": consistency["category_consistency"],
        "pattern_consistency": pattern["pattern_consistency"],
        "chance": consistency["chance"],
        "real_consistency": truth["real_consistency"],
        "colour_by_train_centroids":
            metrics.category_consistency(feats, cats, judges.train_centroids)["category_consistency"],
        "real_colour_by_train_centroids": truth["real_colour_by_train_centroids"],
        "real_pattern_consistency": truth["real_pattern_consistency"],
        "vae_pattern_consistency": vae_pattern["pattern_consistency"],
        "product_leak": float(np.mean([palette.leak(o, q.mask, q.category) for o, q in zip(outputs, reqs)])),
        "real_product_leak": truth["real_product_leak"],
        "n_generated": len(outputs),
    }
    identical = _bit_identical(outputs, reqs)
    grids = {"categories": _category_grid(reqs, outputs)}

    if with_references and model.pg is not None and catalog.get("pairs"):
        ref_metrics, ref_grid, ref_identical = _reference_eval(gen, catalog["pairs"], cfg, real_feats.mean(0))
        m.update(ref_metrics)
        grids["references"] = ref_grid
        identical = identical and ref_identical
    if judges.encoder is not None:
        m["clip_similarity"] = metrics.clip_similarity(judges.encoder, outputs, [q.image for q in reqs])
        m["fid"] = metrics.fid(judges.encoder, outputs, [q.image for q in judges.real])
    m["product_bit_identical"] = identical
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    per_category = {c: {"colour": v, "pattern": pattern["per_category"][c]} for c, v in consistency["per_category"].items()}
    return EvalResult(m, per_category, grids)


def run_evaluation(job: EvaluateJob) -> EvalResult:
    """What ``jobs/evaluate.py`` runs: resolve and load the model, evaluate it, write the table
    (``job.output``), log an MLflow run with the resolved config, and record a registered
    version's numbers as ``eval.*`` tags."""
    import json

    resolved = registry.resolve(job.model)
    model = runtime.load(resolved.path, device="cpu").model
    catalog = catalog_splits(job.catalog_dir)
    result = evaluate(model, catalog, job, with_references=job.references)
    about = {"model": job.model, "name": resolved.name, "version": resolved.version}
    print(result.table())
    print(json.dumps({"per_category": result.per_category}))
    if job.output:
        result.save(job.output, f"Evaluation of `{job.model}` (version {resolved.version})", **about)
    if job.mlflow:
        import mlflow

        registry.configure()
        with mlflow.start_run(experiment_id=registry.ensure_experiment(), run_name=job.run_name):
            mlflow.set_tags({"model_name": resolved.name, "model_version": resolved.version, "job": "evaluate"})
            mlflow.log_params({k: v for k, v in vars(job).items() if v is not None})
            mlflow.log_text(config_files.to_yaml(job), "config.yaml")
            registry.log_evaluation(result.numbers(), result.grids, result.report(**about))
        if job.model.startswith("models:/"):
            registry.record_metrics(resolved.name, resolved.version, result.numbers())
    return result


def fit_pattern_judge(rows: list[dict], max_rows: int, catalog_uri: str,
                      encoder: metrics.ImageEncoder | None = None) -> PatternJudge:
    """The pattern judge fitted on up to ``max_rows`` of ``rows`` (train ads), spread evenly."""
    rows = rows[:: max(1, -(-len(rows) // max_rows))]
    ads = [_request(r, 0) for r in rows]
    return PatternJudge.fit([q.image for q in ads], [q.mask for q in ads], [q.category for q in ads],
                            encoder=encoder, catalog=catalog_uri)


def _reference_eval(gen: LoadedGenerator, pairs_uri: str, cfg: EvalConfig, center: np.ndarray):
    """CG+PG vs CG alone, PG with vs without the reference-latent init, and copy-paste."""
    rows = _round_robin([r for r in read_catalog(pairs_uri).to_pylist() if r["category"] in gen.categories],
                        cfg.pairs)
    with_ref = [_request(r, row_seed(cfg.seed, r["product_id"])) for r in rows]
    alone = [GenerationRequest(q.image, q.mask, q.category, seed=q.seed) for q in with_ref]
    ref_bg = [fetch_reference(r["reference_uri"], r.get("reference_mask_uri")) for r in rows]

    full = InferenceConfig(cfg.steps, cfg.guidance, reference_init=True, scheduler=cfg.scheduler)
    no_init = InferenceConfig(cfg.steps, cfg.guidance, reference_init=False, scheduler=cfg.scheduler)
    out_full = runtime.generate_all(gen, with_ref, full, cfg.batch_size)
    out_noinit = runtime.generate_all(gen, with_ref, no_init, cfg.batch_size)
    out_alone = runtime.generate_all(gen, alone, full, cfg.batch_size)

    ref_feats = np.stack([metrics.background_features(img, m) for img, m in ref_bg])

    def sim(outs):
        return metrics.reference_similarity(
            np.stack([metrics.background_features(o, q.mask) for o, q in zip(outs, with_ref)]), ref_feats, center)

    def copy(outs):
        vals = [metrics.copy_paste(o, img, m, q.mask) for o, (img, m), q in zip(outs, ref_bg, with_ref)]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    result = {
        "ref_similarity_cg_pg": sim(out_full),
        "ref_similarity_cg_pg_no_init": sim(out_noinit),
        "ref_similarity_cg_alone": sim(out_alone),
        "copy_paste_cg_pg": copy(out_full),
        "copy_paste_cg_alone": copy(out_alone),
    }
    grid_rows = [[masked_product(q.image, q.mask), img, a, b, c]
                 for q, (img, _), a, b, c in list(zip(with_ref, ref_bg, out_full, out_noinit, out_alone))[:16]]
    grid = contact_sheet(grid_rows, cell=96, row_labels=[q.category for q in with_ref[:16]],
                         column_labels=["product", "reference", "CG+PG", "no init", "CG alone"])
    identical = _bit_identical(out_full, with_ref) and _bit_identical(out_alone, alone)
    return result, grid, identical


def _round_robin(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` rows taking each category in turn, so every category is represented."""
    by_cat: dict[str, list] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    out, queues = [], [list(v) for _, v in sorted(by_cat.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _category_grid(reqs: list[GenerationRequest], outputs: list[Image.Image], pairs: int = 3) -> Image.Image:
    """One row per category: the product, then true held-out ads beside the generations for the
    same products (true #k, generated #k), so a reader compares patterns, not just palettes."""
    by_cat: dict[str, list] = {}
    for q, o in zip(reqs, outputs):
        by_cat.setdefault(q.category, []).append((q, o))
    rows = [[masked_product(items[0][0].image, items[0][0].mask)]
            + [im for q, o in items[:pairs] for im in (q.image, o)] for items in by_cat.values()]
    labels = [f"{kind} #{k + 1}" for k in range(pairs) for kind in ("true", "generated")]
    return contact_sheet(rows, cell=96, row_labels=list(by_cat), column_labels=["product"] + labels)
