"""Automatic QA of generated ads: the scores best-of-N picks by, fixed here before any use.

At catalog scale nobody looks at every image, so every output gets scores and a verdict.
Each component is in [0, 1], higher is better:

* ``category_fit``: P(requested category | background) under a softmax (multinomial logistic)
  regression on background features, fitted on the **train** split's real ad backgrounds.
  Features: ``metrics.background_features`` (fixed, parameter-free; the tiny preset's own),
  or, when a local CLIP vision directory is configured, CLIP image embeddings of the image
  with its product pixels painted mid-grey.
* ``pattern_fit``: P(requested category | texture) under ``pattern.PatternJudge`` (colour-blind,
  interior texture statistics, or a local CLIP's embeddings of the grey image), fitted on the
  same train rows. ``category_fit`` alone would pass an output that keeps the palette and
  blurs the pattern away; scorers saved before the judge existed have no ``pattern_fit``.
* ``seam``: ``exp(-max(0, g_ring / (g_rest + 0.01) - 1))``. ``g`` is the mean absolute colour
  difference (RGB in [0, 1], mean over channels) of 4-neighbour pixel pairs that are both
  background; ``g_ring`` over pairs with a pixel in the ring of background within ``w``
  pixels of the product (``w = max(2, round(0.03 * short side))``, Chebyshev distance; so the
  ring's outer edge counts), ``g_rest`` over pairs wholly in the rest of the background. A halo or a hard seam around the product makes the ring busier
  than the background's own texture; 1.0 means it is not.
* ``leak``: ``1 - metrics.PaletteModel.leak``: the share of background pixels whose colour is
  likelier under the category's product palette than under its background palette (palettes
  from the train split).
* ``reference`` (only with a reference ad): ``(1 + cos) / 2`` of the centred background
  features of output and reference (centre: the mean train background), as in
  ``metrics.reference_similarity``.

``qa_score`` is the weighted mean of the components present (weights ``category_fit`` and
``pattern_fit`` 2, the others 1); an output passes when ``qa_score >= threshold`` (default 0.5).

Independent of the judge: ``quality.evaluation``'s category consistency is nearest-centroid
accuracy against centroids of the **held-out** split's real images. The scorer is a different
function (a logistic regression, not a centroid distance) fitted on different data (the train
split only), so best-of-N cannot simply optimise the number it is judged by.

The scorer's state is plain JSON saved as ``qa/scorer.json`` inside the generator directory
(``BackdropModel.qa_state``), so it is versioned with the weights and travels through the
registry; :func:`fit_scorer` makes it, :func:`scorer_for` loads it from a loaded generator.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from .. import storage
from ..catalog import read_catalog
from ..errors import InvalidParameterError, NoScorerError
from ..inputs import fetch_pair
from ..runtime import DEFAULT_QA_THRESHOLD
from . import metrics
from .pattern import PatternJudge
from .softmax import Softmax

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_THRESHOLD = DEFAULT_QA_THRESHOLD  # the one definition is the runtime's
PATTERN_ROWS = 640  # train ads the pattern component is fitted on
COMPONENT_WEIGHTS = {"category_fit": 2.0, "pattern_fit": 2.0, "seam": 1.0, "leak": 1.0, "reference": 1.0}


# --- the fixed components ----------------------------------------------------------------

def seam_score(image: Image.Image, mask: np.ndarray) -> float:
    """The ``seam`` component (see the module docstring for its definition)."""
    arr = np.asarray(image.convert("RGB"), np.float32) / 255
    product = np.asarray(mask) > 0.5
    bg = ~product
    w = max(2, round(0.03 * min(product.shape)))
    grown = np.asarray(Image.fromarray(product.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * w + 1))) > 0
    ring = grown & bg
    rest = bg & ~grown
    sums = {"ring": [0.0, 0], "rest": [0.0, 0]}
    for diff, a, b in ((np.abs(arr[:, 1:] - arr[:, :-1]).mean(-1), np.s_[:, 1:], np.s_[:, :-1]),
                       (np.abs(arr[1:] - arr[:-1]).mean(-1), np.s_[1:], np.s_[:-1])):
        # a ring pair has a pixel in the ring (so the ring's outer edge, where a halo ends,
        # counts); a rest pair has both pixels in the rest; both pixels are background
        pairs = {"ring": bg[a] & bg[b] & (ring[a] | ring[b]), "rest": rest[a] & rest[b]}
        for name, both in pairs.items():
            sums[name][0] += float(diff[both].sum())
            sums[name][1] += int(both.sum())
    if sums["ring"][1] == 0 or sums["rest"][1] == 0:
        return 1.0
    g_ring = sums["ring"][0] / sums["ring"][1]
    g_rest = sums["rest"][0] / sums["rest"][1]
    return float(np.exp(-max(0.0, g_ring / (g_rest + 0.01) - 1.0)))


def _grey_product(image: Image.Image, mask: np.ndarray) -> Image.Image:
    arr = np.asarray(image.convert("RGB")).copy()
    arr[np.asarray(mask) > 0.5] = 128
    return Image.fromarray(arr)


# --- the scorer ----------------------------------------------------------------------------

@dataclass
class QAScorer:
    """Scores one output for its request (the ``runtime.Scorer`` the platform ships)."""

    classifier: Softmax
    palette: metrics.PaletteModel
    center: np.ndarray  # mean train background feature (for the reference component)
    features: str = "tiny"  # "tiny" (background_features) or "clip"
    threshold: float = DEFAULT_THRESHOLD
    fitted_on: dict = field(default_factory=dict)
    encoder: metrics.ImageEncoder | None = None  # set for "clip"
    pattern: PatternJudge | None = None

    def _category_features(self, images: list[Image.Image], masks: list[np.ndarray]) -> np.ndarray:
        if self.features == "clip":
            if self.encoder is None:
                raise NoScorerError("this QA scorer was fitted on CLIP features: configure the CLIP directory")
            return self.encoder([_grey_product(im, m) for im, m in zip(images, masks)])
        return np.stack([metrics.background_features(im, m) for im, m in zip(images, masks)])

    def __call__(self, request, image: Image.Image) -> dict:
        """``category_fit``, ``seam``, ``leak``, (``reference``) and their weighted ``qa_score``."""
        mask = request.mask
        scores: dict[str, float] = {}
        if request.category in self.classifier.names:
            proba = self.classifier.proba(self._category_features([image], [mask]))[0]
            scores["category_fit"] = float(proba[self.classifier.names.index(request.category)])
        if self.pattern is not None and request.category in self.pattern.classifier.names:
            proba = self.pattern.proba([image], [mask])[0]
            scores["pattern_fit"] = float(proba[self.pattern.classifier.names.index(request.category)])
        scores["seam"] = seam_score(image, mask)
        if request.category in self.palette.product:
            scores["leak"] = 1.0 - self.palette.leak(image, mask, request.category)
        if request.reference is not None:
            out_f = metrics.background_features(image, mask)
            ref_f = metrics.background_features(request.reference, request.reference_mask)
            scores["reference"] = float((1 + metrics.cosine(out_f - self.center, ref_f - self.center)) / 2)
        total = sum(COMPONENT_WEIGHTS[k] * v for k, v in scores.items())
        scores["qa_score"] = float(total / sum(COMPONENT_WEIGHTS[k] for k in scores))
        return scores

    def passed(self, scores: dict) -> bool:
        return scores["qa_score"] >= self.threshold

    # --- state (JSON, saved with the model) -----------------------------------------------
    def state(self) -> dict:
        c, p = self.classifier, self.palette
        return {
            "version": STATE_VERSION, "features": self.features, "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "classifier": {"names": c.names, "mean": c.mean.tolist(), "std": c.std.tolist(),
                           "weights": c.weights.tolist(), "bias": c.bias.tolist()},
            "palette": {"bins": p.bins, "product": {k: v.tolist() for k, v in p.product.items()},
                        "background": {k: v.tolist() for k, v in p.background.items()}},
            "center": self.center.tolist(),
            "pattern": self.pattern.state() if self.pattern is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict, clip_model: str | None = None) -> "QAScorer":
        if state.get("version") != STATE_VERSION:
            raise NoScorerError(f"QA scorer state version {state.get('version')!r}, expected {STATE_VERSION}")
        c, p = state["classifier"], state["palette"]
        classifier = Softmax.from_state(c)
        palette = metrics.PaletteModel(int(p["bins"]), {k: np.asarray(v) for k, v in p["product"].items()},
                                       {k: np.asarray(v) for k, v in p["background"].items()})
        encoder = metrics.ImageEncoder(clip_model) if state["features"] == "clip" and clip_model else None
        pattern = PatternJudge.from_state(state["pattern"], encoder) if state.get("pattern") else None
        return cls(classifier, palette, np.asarray(state["center"], np.float32), state["features"],
                   float(state["threshold"]), dict(state.get("fitted_on", {})), encoder, pattern)

    def attach(self, model) -> None:
        """Keep this scorer in ``model`` so ``save_pretrained`` writes it with the weights."""
        model.qa_state = self.state()


def fit_scorer(catalog_uri: str, model_dir: str | None = None, *, clip_model: str | None = None,
               max_rows: int | None = None, threshold: float = DEFAULT_THRESHOLD) -> QAScorer:
    """Fit the scorer on a catalog's **train** split (a Parquet URI) and, with ``model_dir``,
    write it into that saved generator (``qa/scorer.json``), so it is versioned with it."""
    every = read_catalog(catalog_uri).to_pylist()
    positions = list(range(len(every)))
    if max_rows and len(positions) > max_rows:
        positions = positions[:: -(-len(positions) // max_rows)]
    rows = [every[i] for i in positions]
    if not rows:
        raise InvalidParameterError(f"catalog {catalog_uri} has no rows to fit a QA scorer on")
    pairs = [fetch_pair(r["image_uri"], r.get("mask_uri")) for r in rows]
    images, masks = [im for im, _ in pairs], [m for _, m in pairs]
    cats = [r["category"] for r in rows]
    tiny = np.stack([metrics.background_features(im, m) for im, m in zip(images, masks)])
    encoder = metrics.ImageEncoder(clip_model) if clip_model else None
    feats = encoder([_grey_product(im, m) for im, m in zip(images, masks)]) if encoder else tiny
    classifier = Softmax.fit(feats, cats)
    accuracy = float((np.asarray(classifier.names)[classifier.proba(feats).argmax(1)] == np.asarray(cats)).mean())
    # even catalog positions only: evaluation's pattern judge is fitted on the odd ones
    even = [k for k, i in enumerate(positions) if i % 2 == 0][:PATTERN_ROWS]
    pattern = PatternJudge.fit([images[k] for k in even], [masks[k] for k in even], [cats[k] for k in even],
                               encoder=encoder, catalog=catalog_uri)
    scorer = QAScorer(classifier, metrics.PaletteModel.fit(images, masks, cats), tiny.mean(0),
                      "clip" if encoder else "tiny", threshold,
                      {"catalog": catalog_uri, "rows": len(rows), "train_accuracy": round(accuracy, 4)}, encoder, pattern)
    log.info("QA scorer fitted on %d rows of %s (train accuracy %.3f)", len(rows), catalog_uri, accuracy)
    if model_dir is not None:
        from ..models.generator import QA_SCORER_NAME  # the path BackdropModel saves and loads

        storage.write_bytes(storage.join(model_dir, QA_SCORER_NAME), json.dumps(scorer.state()).encode())
    return scorer


def attach_scorer(model, catalog_uri: str, max_rows: int = 2000) -> None:
    """Fit the scorer on the catalog a model was just trained on and keep it with the model
    (``model.qa_state``: saved and registered with the weights), so best-of-N and the review
    flags work for every trained model. A catalog of one category has nothing to tell apart:
    the model then carries no scorer (``backdrop qa-fit`` can add one later)."""
    categories = set(read_catalog(catalog_uri, columns=["category"]).column("category").to_pylist())
    if len(categories) < 2:
        log.info("no QA scorer: %s has %d category", catalog_uri, len(categories))
        return
    model.qa_state = fit_scorer(catalog_uri, max_rows=max_rows).state()


def require_scorer(candidates: int | list[int], has_scorer: bool, model: str) -> None:
    """Best-of-N needs the scorer saved with the model: refused before any generation, in the
    same words by the batch jobs (at planning), the HTTP service (before a job joins a batch)
    and the runtime."""
    most = max(candidates if isinstance(candidates, (list, tuple)) else [candidates], default=1)
    if most > 1 and not has_scorer:
        raise NoScorerError(f"candidates={most} needs a QA scorer saved with the model, and {model} has no QA "
                            f"scorer (qa/scorer.json); {NoScorerError.HOW_TO_FIT}")


def scorer_for(gen, clip_model: str | None = None, threshold: float | None = None) -> QAScorer:
    """The QA scorer saved with a loaded generator (``runtime.load`` reads it with the weights)."""
    state = gen.model.qa_state
    if state is None:
        raise NoScorerError(f"model {gen.name} v{gen.version} has no QA scorer (qa/scorer.json), which "
                            f"candidates > 1 needs; {NoScorerError.HOW_TO_FIT}")
    scorer = QAScorer.from_state(state, clip_model)
    if threshold is not None:
        scorer.threshold = float(threshold)
    return scorer


def _cached_scorer(gen, clip_model: str | None = None) -> QAScorer:
    """The generator's scorer, parsed once per loaded generator (its state is megabytes of JSON lists)."""
    cached = getattr(gen, "_qa_scorer", None)
    if cached is None or cached[0] is not gen.model.qa_state:
        cached = (gen.model.qa_state, scorer_for(gen, clip_model))
        gen._qa_scorer = cached
    return cached[1]


def generate_scored(gen, requests, config, candidates: int | list[int] = 1, threshold: float | None = None,
                    progress=None, clip_model: str | None = None):
    """Every front door's outputs (batch records, HTTP answers): best-of-``candidates`` under the
    QA scorer saved with the model, so each output carries its scores and ``qa_passed`` (with
    one candidate that is plain generation, scored); a model without a scorer gets plain
    measured generation, and ``candidates > 1`` on it is a :class:`NoScorerError`.
    """
    from .. import runtime

    if gen.model.qa_state is None:
        require_scorer(candidates, False, f"{gen.name} v{gen.version}")
        return runtime.generate_measured(gen, requests, config, progress)
    return runtime.generate_best(gen, requests, config, candidates, _cached_scorer(gen, clip_model),
                                 threshold=threshold, progress=progress)
