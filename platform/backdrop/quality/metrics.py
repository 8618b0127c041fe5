"""Quality metrics, fixed before any model is trained.

* ``category_consistency`` (paper Fig. 5a as a number): do generated backgrounds land in
  their own category's cluster? Nearest-centroid accuracy of background features against
  centroids of held-out real ad images of each category.
* ``reference_similarity`` (paper Table 2 "Sim"): cosine similarity of the generated
  background's features to the reference's background features.
* ``product_leak``: how much product-like content is painted into the background (the
  failure paper Fig. 5b shows for a plain ControlNet): the fraction of background pixels
  whose colour is likelier under the category's product palette than under its background
  palette, both estimated on real training images.
* ``copy_paste``: how closely the output reproduces the reference where the reference had
  its product (a PG that copies scores high).
* ``clip_similarity`` and ``fid`` as in the paper, with an image encoder loaded from a local
  path or ``s3://`` (no weights can be downloaded here; any CLIP-vision directory works).

Background features are masked statistics of the pixels: an 8x8 grid of mean colours over
background pixels only, plus per-channel mean and standard deviation. They are cheap,
deterministic and have no trained parameters, so no metric can be tuned by training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

GRID = 8
FEATURE_SIZE = 64


def _prepare(image: Image.Image | np.ndarray, mask: np.ndarray | None, size: int = FEATURE_SIZE):
    """float RGB in [0,1] and a background weight map, both at ``size``."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
    if mask is None:
        return arr, np.ones((size, size), np.float32)
    product = (np.asarray(mask) > 0.5).astype(np.float32)
    if product.shape != (size, size):
        # the same filter as the image: a pixel counts as background only if no product pixel
        # contributed to it, so product colours never bleed into the features at any resolution
        product = np.asarray(Image.fromarray(product, mode="F").resize((size, size), Image.BILINEAR))
    return arr, (product <= 0).astype(np.float32)


def background_features(image, mask: np.ndarray | None = None) -> np.ndarray:
    """Masked 8x8 mean colours + channel mean/std over background pixels (product ignored)."""
    arr, bg = _prepare(image, mask)
    total = bg.sum()
    if total == 0:
        raise ValueError("no background pixels to describe")
    mean = (arr * bg[..., None]).sum((0, 1)) / total
    std = np.sqrt((((arr - mean) ** 2) * bg[..., None]).sum((0, 1)) / total)
    cell = FEATURE_SIZE // GRID
    a = arr.reshape(GRID, cell, GRID, cell, 3)
    w = bg.reshape(GRID, cell, GRID, cell, 1)
    wsum = w.sum((1, 3))
    grid = np.where(wsum > 0, (a * w).sum((1, 3)) / np.maximum(wsum, 1e-6), mean)  # empty cells: global mean
    return np.concatenate([grid.ravel(), mean, std]).astype(np.float32)


@dataclass
class CategoryCentroids:
    names: list[str]
    centroids: np.ndarray  # (K, D)

    @classmethod
    def fit(cls, features: np.ndarray, categories: list[str]) -> "CategoryCentroids":
        names = sorted(set(categories))
        cats = np.asarray(categories)
        return cls(names, np.stack([features[cats == n].mean(0) for n in names]))

    def predict(self, features: np.ndarray) -> list[str]:
        d = ((features[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        return [self.names[i] for i in d.argmin(1)]


def consistency(predicted: list[str], categories: list[str], n_classes: int, key: str) -> dict:
    """A judge's accuracy overall (under ``key``) and per category, with chance = 1 / classes."""
    pred, truth = np.asarray(predicted), np.asarray(categories)
    per = {c: float((pred[truth == c] == c).mean()) for c in sorted(set(categories))}
    return {key: float((pred == truth).mean()), "per_category": per, "chance": 1.0 / n_classes}


def category_consistency(features: np.ndarray, categories: list[str], centroids: CategoryCentroids) -> dict:
    """Accuracy overall and per category of nearest-centroid assignment."""
    return consistency(centroids.predict(features), categories, len(centroids.names), "category_consistency")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def reference_similarity(generated_feats: np.ndarray, reference_feats: np.ndarray,
                         center: np.ndarray | None = None) -> float:
    """Mean cosine similarity of paired features after subtracting ``center``.

    Raw colour statistics of any two backgrounds are similar (all positive); centring on the
    mean feature of real ad images (fixed, independent of the outputs being scored) makes
    the score measure what is specific to each reference.
    """
    if center is None:
        center = np.zeros(generated_feats.shape[-1], np.float32)
    return float(cosine(generated_feats - center, reference_feats - center).mean())


@dataclass
class PaletteModel:
    """Per-category colour histograms of product pixels and of background pixels."""

    bins: int
    product: dict[str, np.ndarray]
    background: dict[str, np.ndarray]

    @classmethod
    def fit(cls, images: list, masks: list[np.ndarray], categories: list[str], bins: int = 8) -> "PaletteModel":
        prod, back = {}, {}
        for im, m, c in zip(images, masks, categories):
            arr = np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im)
            idx = cls._bin(arr, bins)
            keep = np.asarray(m) > 0.5
            prod.setdefault(c, np.zeros(bins**3))
            back.setdefault(c, np.zeros(bins**3))
            prod[c] += np.bincount(idx[keep], minlength=bins**3)
            back[c] += np.bincount(idx[~keep], minlength=bins**3)
        norm = lambda h: (h + 1) / (h + 1).sum()  # noqa: E731 - Laplace smoothing
        return cls(bins, {c: norm(h) for c, h in prod.items()}, {c: norm(h) for c, h in back.items()})

    @staticmethod
    def _bin(arr: np.ndarray, bins: int) -> np.ndarray:
        q = (arr.astype(np.int32) * bins) // 256
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    def leak(self, image, mask: np.ndarray, category: str) -> float:
        """Fraction of background pixels whose colour is likelier 'product' than 'background'."""
        arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        idx = self._bin(arr, self.bins)[np.asarray(mask) <= 0.5]
        return float((self.product[category][idx] > self.background[category][idx]).mean())


def copy_paste(output, reference, reference_mask: np.ndarray, product_mask: np.ndarray) -> float | None:
    """1 − mean |output − reference| over pixels where the reference had its product and the
    output has background; None when those regions do not overlap."""
    out = np.asarray(output.convert("RGB").resize(reference.size), np.float32) / 255
    ref = np.asarray(reference.convert("RGB"), np.float32) / 255
    pm = np.asarray(Image.fromarray((product_mask > 0.5).astype(np.uint8) * 255).resize(reference.size)) > 127
    region = (np.asarray(reference_mask) > 0.5) & ~pm
    if region.sum() == 0:
        return None
    return float(1 - np.abs(out[region] - ref[region]).mean())


# --- CLIP similarity and FID with an encoder from a local path / s3 -----------------------

class ImageEncoder:
    """A CLIP vision encoder (transformers format) loaded from a directory or s3:// prefix."""

    def __init__(self, uri: str, device: str = "cpu") -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from .. import storage

        with storage.local_copy(uri) as path:
            self.model = CLIPVisionModelWithProjection.from_pretrained(path).to(device).eval()
            self.processor = CLIPImageProcessor.from_pretrained(path)
        self.device = device

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.no_grad():
            inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
            return self.model(**inputs).image_embeds.float().cpu().numpy()


def clip_similarity(encoder: ImageEncoder, a: list[Image.Image], b: list[Image.Image]) -> float:
    """Mean cosine similarity of paired images' CLIP embeddings, in [-1, 1]."""
    return float(cosine(encoder(a), encoder(b)).mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    ``x`` and ``y`` are (N, D) (or (N,) for D = 1). ``tr sqrt(S1 S2)`` is computed as
    ``tr sqrt(S1^½ S2 S1^½)`` from symmetric eigendecompositions in float64, which stays real
    and accurate for the rank-deficient covariances of small sets.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = np.atleast_2d(np.cov(x, rowvar=False))
    s2 = np.atleast_2d(np.cov(y, rowvar=False))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def fid(encoder: ImageEncoder, a: list[Image.Image], b: list[Image.Image]) -> float:
    return frechet_distance(encoder(a), encoder(b))
