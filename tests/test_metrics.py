"""The quality metrics have the properties their definitions promise, checked on the synthetic
catalog's real images and, for CLIP similarity and FID, on a small random CLIP vision network
saved to disk (no weights can be downloaded here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backdrop.quality import metrics
from backdrop.demo.synthetic import SyntheticConfig, category_names, split_sample

CFG = SyntheticConfig()  # 8 categories, 64 px: the quality bar's catalog
NAMES = category_names(CFG.num_categories)


def _samples(split: str, per_category: int):
    """[(category, image PIL, mask bool HxW)] exactly as make_catalog writes them."""
    out = []
    for ci, name in enumerate(NAMES):
        for i in range(per_category):
            s = split_sample(CFG, split, ci, i)[1]
            out.append((name, Image.fromarray(s.image), s.mask > 0))
    return out


@pytest.fixture(scope="module")
def heldout():
    return _samples("heldout", 16)


@pytest.fixture(scope="module")
def train():
    return _samples("train", 8)


def _features(samples) -> np.ndarray:
    return np.stack([metrics.background_features(im, m) for _, im, m in samples])


# --------------------------------------------------------------------------- background features


@pytest.mark.parametrize("size", [64, 96])  # native size, and a resize on the way to the grid
def test_background_features_ignore_the_product(heldout, size):
    rng = np.random.default_rng(0)
    _, image, mask = heldout[5]
    image = image.resize((size, size), Image.NEAREST)
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    base = metrics.background_features(image, mask)
    assert base.shape == (metrics.GRID * metrics.GRID * 3 + 6,) and base.dtype == np.float32

    repainted = np.asarray(image).copy()
    repainted[mask] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    assert np.array_equal(metrics.background_features(Image.fromarray(repainted), mask), base)

    moved = np.asarray(image).copy()
    ys, xs = np.nonzero(~mask)
    pick = rng.choice(len(ys), size=len(ys) // 10, replace=False)
    moved[ys[pick], xs[pick]] = 255 - moved[ys[pick], xs[pick]]
    assert not np.allclose(metrics.background_features(Image.fromarray(moved), mask), base, atol=1e-3)

    everything = metrics.background_features(Image.fromarray(repainted), None)  # no mask: all pixels count
    assert not np.allclose(everything, base, atol=1e-3)
    with pytest.raises(ValueError, match="no background"):
        metrics.background_features(image, np.ones_like(mask))


# --------------------------------------------------------------------------- category consistency


def test_category_consistency_separates_real_categories(heldout, train):
    feats, cats = _features(heldout), [c for c, _, _ in heldout]
    centroids = metrics.CategoryCentroids.fit(feats, cats)
    assert centroids.names == sorted(NAMES)

    real = metrics.category_consistency(feats, cats, centroids)
    assert real["category_consistency"] >= 0.95
    assert real["chance"] == pytest.approx(1 / len(NAMES))
    assert set(real["per_category"]) == set(NAMES)
    # unseen real images of the same categories land in their own clusters too
    unseen = metrics.category_consistency(_features(train), [c for c, _, _ in train], centroids)
    assert unseen["category_consistency"] >= 0.95

    # centroids fitted on shuffled labels know nothing of categories: chance, in and out of sample
    rng = np.random.default_rng(0)
    inside, outside = [], []
    train_feats, train_cats = _features(train), [c for c, _, _ in train]
    for _ in range(10):
        shuffled = list(rng.permutation(cats))
        noise = metrics.CategoryCentroids.fit(feats, shuffled)
        inside.append(metrics.category_consistency(feats, shuffled, noise)["category_consistency"])
        outside.append(metrics.category_consistency(train_feats, train_cats, noise)["category_consistency"])
    chance = 1 / len(NAMES)
    assert np.mean(outside) == pytest.approx(chance, abs=0.1)
    assert np.mean(inside) < chance + 0.15  # only the small in-sample bias above chance


# --------------------------------------------------------------------------- product leak


def test_palette_leak_flags_product_colours_in_the_background(heldout, train):
    palette = metrics.PaletteModel.fit([im for _, im, _ in train], [m for _, _, m in train],
                                       [c for c, _, _ in train])
    real, forged = [], []
    for cat, image, mask in heldout:
        real.append(palette.leak(image, mask, cat))
        arr = np.asarray(image).copy()
        product = arr[mask]
        arr[~mask] = product[np.arange(int((~mask).sum())) % len(product)]  # tile the product everywhere
        forged.append(palette.leak(Image.fromarray(arr), mask, cat))
    real, forged = np.asarray(real), np.asarray(forged)
    assert ((0 <= real) & (real <= 1)).all() and ((0 <= forged) & (forged <= 1)).all()
    assert real.mean() < 0.2
    assert forged.mean() > real.mean() + 0.5
    assert (forged > real).mean() >= 0.9


# --------------------------------------------------------------------------- copy-paste


def test_copy_paste(heldout):
    _, reference, ref_mask = heldout[0]
    _, unrelated, _ = heldout[-1]
    own = np.zeros_like(ref_mask)
    own[:8, :8] = True  # the output's product sits in a corner, away from the reference product
    assert metrics.copy_paste(reference, reference, ref_mask, own) == pytest.approx(1.0)
    bigger = reference.resize((128, 128), Image.NEAREST)  # outputs are compared at the reference size
    assert metrics.copy_paste(bigger, reference, ref_mask, own) > 0.98  # resampling blurs a little
    other = metrics.copy_paste(unrelated, reference, ref_mask, own)
    assert 0.0 <= other < 0.9
    # the output's product covers all of the reference's product region: nothing to compare
    assert metrics.copy_paste(unrelated, reference, ref_mask, ref_mask | own) is None


# --------------------------------------------------------------------------- reference similarity


def test_reference_similarity(heldout, train):
    feats = _features(heldout)
    center = _features(train).mean(0)  # the mean real ad image, fixed before scoring
    assert metrics.reference_similarity(feats, feats.copy()) == pytest.approx(1.0, abs=1e-5)
    assert metrics.reference_similarity(feats, feats.copy(), center) == pytest.approx(1.0, abs=1e-5)
    mirrored = 2 * center - feats  # every centred feature flipped
    assert metrics.reference_similarity(mirrored, feats, center) == pytest.approx(-1.0, abs=1e-5)
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=(12, 30)), rng.normal(size=(12, 30)) * 5 + 3
        assert -1.0 <= metrics.reference_similarity(a, b) <= 1.0
        assert -1.0 <= metrics.reference_similarity(a, b, rng.normal(size=30)) <= 1.0
    assert metrics.reference_similarity(feats, mirrored) == pytest.approx(metrics.reference_similarity(mirrored, feats))
    # pairing matters once the shared "every background" direction is removed
    shuffled = metrics.reference_similarity(feats, feats[rng.permutation(len(feats))], center)
    assert shuffled < 0.5


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_matches_the_1d_gaussian_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 2.0, 500), rng.normal(-0.5, 0.5, 400)
    v1, v2 = x.var(ddof=1), y.var(ddof=1)
    expected = (x.mean() - y.mean()) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2)  # (μ1−μ2)² + (σ1−σ2)²
    assert metrics.frechet_distance(x[:, None], y[:, None]) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)  # (N,) works too
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_full_rank_covariances():
    from scipy import linalg

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(x, y) == pytest.approx(metrics.frechet_distance(y, x), rel=1e-6)


# --------------------------------------------------------------------------- CLIP similarity, FID


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A small random CLIP vision model in transformers format (stand-in for real weights)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    path = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return metrics.ImageEncoder(str(clip_dir))


def _noised(images, sigma: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(np.asarray(im, np.float32) + rng.normal(0, sigma, np.asarray(im).shape),
                                    0, 255).astype(np.uint8)) for im in images]


def test_image_encoder_loads_from_a_local_dir_and_from_s3(clip_dir, encoder, heldout, s3_bucket):
    from backdrop import storage

    images = [im for _, im, _ in heldout[:6]]
    local = encoder(images)
    assert local.shape == (6, 16) and local.dtype == np.float32
    storage.upload_dir(clip_dir, f"{s3_bucket}/encoders/clip")
    remote = metrics.ImageEncoder(f"{s3_bucket}/encoders/clip")
    np.testing.assert_allclose(remote(images), local, rtol=1e-5, atol=1e-6)


def test_fid_properties(encoder, heldout, train):
    a = [im for _, im, _ in heldout[::2]]  # 64 images, 8 categories
    same = metrics.fid(encoder, a, a)
    slightly, strongly = metrics.fid(encoder, a, _noised(a, 20)), metrics.fid(encoder, a, _noised(a, 80))
    shifted = metrics.fid(encoder, a, [Image.fromarray((np.asarray(im) // 2 + 100).astype(np.uint8)) for im in a])
    assert same >= 0 and same < 1e-3 * slightly
    assert slightly < strongly
    assert shifted > 1e3 * max(same, 1e-12)
    assert metrics.fid(encoder, a, [im for _, im, _ in train]) == pytest.approx(
        metrics.fid(encoder, [im for _, im, _ in train], a), rel=1e-4)


def test_clip_similarity_properties(encoder, heldout, train):
    a = [im for _, im, _ in heldout[:32]]
    b = [im for _, im, _ in train[:32]]
    ab, ba = metrics.clip_similarity(encoder, a, b), metrics.clip_similarity(encoder, b, a)
    assert ab == pytest.approx(ba, abs=1e-6)
    assert -1.0 <= ab <= 1.0
    assert metrics.clip_similarity(encoder, a, a) == pytest.approx(1.0, abs=1e-5)
    assert metrics.clip_similarity(encoder, a, _noised(a, 80)) < metrics.clip_similarity(encoder, a, _noised(a, 10))
