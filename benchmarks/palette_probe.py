"""Is the colour bar's miss on photographs the generator's, or the colour judge's?

    .venv/bin/python benchmarks/palette_probe.py                       # the truth of each catalog
    .venv/bin/python benchmarks/palette_probe.py --style-seeds "" --photo-catalogs nature \\
        models=runs/adapt-photos-base2000/photos-nature/cg-1500steps@runs/adapt-photos-base2000/photos-nature/catalog

The colour judge (``metrics.background_features``: an 8x8 grid of mean colours, nearest
centroid) reads layout as much as colour. On crops of a photograph the layout changes from crop
to crop (sky above or below, a shore across or not), so it recognises the true held-out
photographs only 0.42-0.75 of the time by train centroids (``judge_ceilings.py``). This probe
asks the same question without layout: two classifiers of a background's colour *distribution*,
fitted on the train ads (softmax regression, as the pattern judge), product pixels left out:

* ``rgb``: a joint 4x4x4 RGB histogram (square-rooted) with the channel means and deviations;
* ``chroma``: a 6x6 histogram of the opponent chroma plane ((R-G)/sqrt 2, (R+G-2B)/sqrt 6) with
  its means and deviations: blind to brightness, so a grey image carries no colour at all.

Each is scored on the true held-out ads and on three forgeries it must reject (<= 0.35): the
ads with their categories shuffled, with their channels rotated (RGB -> GBR: the same picture in
other colours), and in grey. With ``models=CHECKPOINT@CATALOG_DIR,...`` it also scores each
checkpoint's generations of the evaluation's held-out products (same products, seeds and
settings as ``jobs/evaluate.py``), beside the truth of those same products, and each category's
mean background colour in the train ads, the held-out ads and the generations (a split that
holds out a part of a photograph with its own palette shows there).

This is a probe, not a judge of the bar: neither classifier is used by ``evaluate`` or the
promotion gate, and the bar's colour number stays the colour judge's.
Writes benchmarks/results/palette-probe[-TAG].md (+ .json).
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
from PIL import Image  # noqa: E402

from backdrop import config_files, runtime  # noqa: E402
from backdrop.catalog import catalog_splits, read_catalog  # noqa: E402
from backdrop.config_files import knob  # noqa: E402
from backdrop.pipeline import InferenceConfig  # noqa: E402
from backdrop.quality import metrics  # noqa: E402
from backdrop.quality.evaluation import EvalConfig, _request, picked_requests  # noqa: E402
from backdrop.quality.softmax import Softmax  # noqa: E402

CONTROL_BOUND = 0.35
RGB_BINS, CHROMA_BINS = 4, 6


def backgrounds(images: list, masks: list) -> list[np.ndarray]:
    """Each image's background pixels, (N, 3) RGB in [0, 1] at the colour judge's size: read once
    for both probes and the mean colours."""
    return [arr[bg > 0] for arr, bg in (metrics._prepare(im, m) for im, m in zip(images, masks))]


def rgb_features(px: np.ndarray) -> np.ndarray:
    q = np.minimum((px * RGB_BINS).astype(int), RGB_BINS - 1)
    hist = np.bincount((q[:, 0] * RGB_BINS + q[:, 1]) * RGB_BINS + q[:, 2], minlength=RGB_BINS ** 3) / len(px)
    return np.concatenate([np.sqrt(hist), px.mean(0), px.std(0)])


def chroma_features(px: np.ndarray) -> np.ndarray:
    o1 = (px[:, 0] - px[:, 1]) / np.sqrt(2)
    o2 = (px[:, 0] + px[:, 1] - 2 * px[:, 2]) / np.sqrt(6)
    i1, i2 = (np.clip(((o + 0.5) * CHROMA_BINS).astype(int), 0, CHROMA_BINS - 1) for o in (o1, o2))
    hist = np.bincount(i1 * CHROMA_BINS + i2, minlength=CHROMA_BINS ** 2) / len(px)
    return np.concatenate([np.sqrt(hist), [o1.mean(), o2.mean(), o1.std(), o2.std()]])


PROBES = {"rgb": rgb_features, "chroma": chroma_features}


def mean_colours(pixels: list[np.ndarray], categories: list[str]) -> dict[str, list[int]]:
    """Each category's mean background colour (0-255 RGB): which palette a generator paints, beside
    the palettes of the ads it was trained on and of the held-out ads it is judged against."""
    return {c: [round(float(v) * 255) for v in np.concatenate([px for px, k in zip(pixels, categories) if k == c]).mean(0)]
            for c in dict.fromkeys(categories)}


def rotated(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., [1, 2, 0]]))


def grey(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


class Probes:
    """Both classifiers, fitted on a catalog's train ads (odd rows, as the pattern judge)."""

    def __init__(self, catalog: dict[str, str]) -> None:
        train = [_request(r, 0) for r in read_catalog(catalog["train"]).to_pylist()[1::2]]
        cats = [q.category for q in train]
        pixels = backgrounds([q.image for q in train], [q.mask for q in train])
        self.fitted = {name: Softmax.fit(np.stack([f(px) for px in pixels]), cats, steps=1000)
                       for name, f in PROBES.items()}
        self.train_colours = mean_colours(pixels, cats)

    def scores(self, pixels: list[np.ndarray], categories: list[str]) -> dict[str, float]:
        """Each probe's share of ``pixels`` (``backgrounds``) filed under their own category."""
        return {name: float(np.mean(np.asarray(clf.predict(np.stack([PROBES[name](px) for px in pixels])))
                                    == np.asarray(categories)))
                for name, clf in self.fitted.items()}


def truth_row(label: str, catalog: dict[str, str]) -> dict:
    probes = Probes(catalog)
    real = [_request(r, 0) for r in read_catalog(catalog["heldout"]).to_pylist()]
    images, masks, cats = [q.image for q in real], [q.mask for q in real], [q.category for q in real]
    shuffled = [str(c) for c in np.random.default_rng(0).permutation(cats)]
    pixels = backgrounds(images, masks)
    row = {"catalog": label, "heldout": len(real), "chance": 1 / len(set(cats)),
           "truth": probes.scores(pixels, cats),
           "controls": {"shuffled": probes.scores(pixels, shuffled),
                        "rotated": probes.scores(backgrounds([rotated(im) for im in images], masks), cats),
                        "grey": probes.scores(backgrounds([grey(im) for im in images], masks), cats)}}
    row["rejected"] = {name: all(c[name] <= CONTROL_BOUND for c in row["controls"].values()) for name in PROBES}
    print(json.dumps(row), flush=True)
    return row


def model_row(spec: str) -> dict:
    """A checkpoint's generations of the evaluation's held-out products, and their truth."""
    checkpoint, catalog_dir = spec.split("@")
    catalog = catalog_splits(catalog_dir)
    model = runtime.load(checkpoint, device="cpu").model
    cfg = EvalConfig()
    heldout = read_catalog(catalog["heldout"]).to_pylist()
    _, reqs = picked_requests([_request(r, 0) for r in heldout], [r["product_id"] for r in heldout],
                              model.categories.names, cfg)
    outputs = runtime.generate_all(runtime.wrap(model), reqs, InferenceConfig(cfg.steps, cfg.guidance,
                                                                              scheduler=cfg.scheduler), cfg.batch_size)
    probes = Probes(catalog)
    masks, cats = [q.mask for q in reqs], [q.category for q in reqs]
    generated, truth = backgrounds(outputs, masks), backgrounds([q.image for q in reqs], masks)
    row = {"model": checkpoint, "catalog": catalog_dir, "generated": len(outputs),
           "generations": probes.scores(generated, cats),
           "truth": probes.scores(truth, cats),
           "mean_colour": {"train": probes.train_colours, "truth": mean_colours(truth, cats),
                           "generations": mean_colours(generated, cats)}}
    print(json.dumps(row), flush=True)
    return row


@dataclass
class PaletteProbeRecipe:
    """The catalogs and checkpoints probed (flags, ``--config``, ``key=value``)."""

    style_seeds: str = knob("11", "procedural style seeds (comma-separated; empty: none)")
    photo_catalogs: str = knob("textures,nature,outdoors", "benchmarks/photo_catalogs.py catalogs (empty: none)")
    models: str = knob("", "CHECKPOINT@CATALOG_DIR,... whose generations are probed")
    report_tag: str = knob("", "suffix of the report's name (palette-probe-TAG.md)")
    output_dir: str = knob(str(ROOT / "benchmarks" / "results"))


def main(argv=None) -> int:
    args = config_files.parse_recipe(PaletteProbeRecipe, argv, description=__doc__)
    from photo_catalogs import judged_catalogs

    with tempfile.TemporaryDirectory() as tmp:
        catalogs = [truth_row(label, catalog) for label, catalog in
                    judged_catalogs(tmp, args.style_seeds, args.photo_catalogs)]
    models = [model_row(spec) for spec in args.models.split(",") if spec.strip()]

    name = "palette-probe" + (f"-{args.report_tag}" if args.report_tag else "")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"control_bound": CONTROL_BOUND, "catalogs": catalogs,
                                                  "models": models, "recipe": config_files.to_yaml(args)},
                                                 indent=1) + "\n")
    lines = ["# Colour without layout: a probe of the colour bar's miss on photographs", "",
             "Two classifiers of a background's colour distribution, fitted on the train ads "
             "(`benchmarks/palette_probe.py` says how). Each cell: rgb / chroma. Forgeries rejected "
             f"when each scores <= {CONTROL_BOUND}.", "",
             "| catalog | chance | true held-out ads | shuffled labels | channels rotated | grey | rejected (rgb / chroma) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def pair(d: dict) -> str:
        return f"{d['rgb']:.3f} / {d['chroma']:.3f}"

    for r in catalogs:
        c = r["controls"]
        lines.append(f"| {r['catalog']} | {r['chance']:.3f} | {pair(r['truth'])} | {pair(c['shuffled'])} | "
                     f"{pair(c['rotated'])} | {pair(c['grey'])} | "
                     f"{' / '.join('yes' if r['rejected'][n] else 'NO' for n in PROBES)} |")
    if models:
        lines += ["", "| checkpoint | generations | their true ads |", "| --- | --- | --- |"]
        lines += [f"| `{m['model']}` | {pair(m['generations'])} | {pair(m['truth'])} |" for m in models]
        lines += ["", "Mean background colour per category (RGB): the train ads the probes are fitted on, the "
                  "held-out ads generated, and their generations.", "",
                  "| checkpoint | category | train ads | held-out ads | generations |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{m['model']}` | {c} | {' '.join(map(str, rgb))} | "
                  f"{' '.join(map(str, m['mean_colour']['truth'][c]))} | {' '.join(map(str, m['mean_colour']['generations'][c]))} |"
                  for m in models for c, rgb in m["mean_colour"]["train"].items() if c in m["mean_colour"]["truth"]]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
