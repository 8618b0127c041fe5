"""The synthetic catalog: determinism, schema, exact masks, category separability."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backdrop.demo import synthetic as S
from backdrop.demo.synthetic import SyntheticConfig, make_catalog, render_sample

SMALL = SyntheticConfig(num_categories=3, train_per_category=4, heldout_per_category=2,
                        pairs_per_category=2, brands_per_category=2, resolution=64, seed=0)


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _bg_features(bg: np.ndarray) -> np.ndarray:
    """8x8 downsampled RGB + per-channel mean and std."""
    x = bg.astype(np.float32) / 255.0
    k = x.shape[0] // 8
    small = x.reshape(8, k, 8, k, 3).mean(axis=(1, 3)).ravel()
    flat = x.reshape(-1, 3)
    return np.concatenate([small, flat.mean(0), flat.std(0)])


def _product_features(sample: S.Sample) -> np.ndarray:
    """Shape of the mask inside its bounding box (8x8), aspect, coverage, mean colour."""
    m = sample.mask > 0
    ys, xs = np.nonzero(m)
    crop = m[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32)
    shape = np.asarray(Image.fromarray(crop).resize((8, 8), Image.Resampling.BILINEAR)).ravel()
    h, w = crop.shape
    colour = sample.image[m].astype(np.float32).mean(0) / 255.0
    return np.concatenate([shape, [np.log(h / w), m.mean() * 4], 0.5 * colour])


def _nearest_centroid_accuracy(xtr, ytr, xte, yte) -> float:
    classes = np.unique(ytr)
    cent = np.stack([xtr[ytr == c].mean(0) for c in classes])
    pred = classes[((xte[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == yte).mean())


# ----------------------------------------------------------------------------- tables


def test_category_names():
    assert category_names_ok(S.category_names(8), 8)
    assert category_names_ok(S.category_names(12), 12)
    assert S.category_names(8) == S.category_names(12)[:8]
    assert S.category_names(8)[:8] == ["mug", "laptop", "sunscreen", "plant", "perfume", "sneaker",
                                       "lamp", "watch"]
    with pytest.raises(ValueError):
        S.category_names(0)
    with pytest.raises(ValueError):
        S.category_names(len(S.CATEGORIES) + 1)


def category_names_ok(names, n):
    return len(names) == n and len(set(names)) == n and all(isinstance(x, str) and x for x in names)


def test_brand_signatures_differ_within_a_category():
    for c in range(len(S.CATEGORIES)):
        sigs = [S.brand_signature(c, b) for b in range(4)]
        assert len({s["kind"] for s in sigs}) == 4
        assert len({s["colour"] for s in sigs}) == 4
    assert S.brand_name("mug", 1) == "mug-brand-1"


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_render_sample_masks_are_exact(resolution):
    n = 3 if resolution < 256 else 1
    coverages = []
    for c in range(len(S.CATEGORIES)):
        for i in range(n):
            s = render_sample(c, i % 2, np.random.default_rng([resolution, c, i]), resolution)
            assert s.image.shape == (resolution, resolution, 3) and s.image.dtype == np.uint8
            assert s.background.shape == (resolution, resolution, 3) and s.background.dtype == np.uint8
            assert s.mask.shape == (resolution, resolution) and s.mask.dtype == np.uint8
            assert set(np.unique(s.mask).tolist()) == {0, 255}
            outside = s.mask == 0
            # Outside the mask the image is the background, bit for bit.
            assert np.array_equal(s.image[outside], s.background[outside])
            # The product is opaque and visible: it differs from the background somewhere inside.
            assert (s.image[~outside] != s.background[~outside]).any()
            cov = float((~outside).mean())
            assert 0.08 <= cov <= 0.45, (S.CATEGORIES[c], cov)
            # The product is inside the frame (does not touch the border).
            assert not s.mask[0].any() and not s.mask[-1].any()
            assert not s.mask[:, 0].any() and not s.mask[:, -1].any()
            coverages.append(cov)
    assert 0.1 <= float(np.mean(coverages)) <= 0.4


def test_render_sample_is_deterministic_in_its_rng():
    a = render_sample(2, 1, np.random.default_rng(7), 64)
    b = render_sample(2, 1, np.random.default_rng(7), 64)
    c = render_sample(2, 1, np.random.default_rng(8), 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_styles_vary_within_a_category():
    cfg = SyntheticConfig(num_categories=12)
    for c in range(12):
        bgs = np.stack([S.split_sample(cfg, "train", c, 2 * i)[1].background for i in range(6)])  # one brand
        spread = bgs.astype(np.float32).std(axis=0).mean()
        assert spread > 4.0, (S.CATEGORIES[c], spread)
        masks = [S.split_sample(cfg, "train", c, i)[1].mask for i in range(6)]
        assert len({m.tobytes() for m in masks}) == 6  # products differ in position/size


def test_splits_do_not_depend_on_each_others_sizes():
    a = SyntheticConfig(train_per_category=5, heldout_per_category=2)
    b = SyntheticConfig(train_per_category=50, heldout_per_category=9)
    assert np.array_equal(S.split_sample(a, "heldout", 3, 1)[1].image, S.split_sample(b, "heldout", 3, 1)[1].image)
    assert not np.array_equal(S.split_sample(a, "heldout", 3, 1)[1].image,
                              S.split_sample(a, "train", 3, 1)[1].image)


# ---------------------------------------------------------------- category separability


def test_nearest_centroid_separates_categories_on_backgrounds():
    """Centroids of train backgrounds classify held-out backgrounds (all 12 categories)."""
    cfg = SyntheticConfig(num_categories=12, brands_per_category=2)
    xtr, ytr, xte, yte = [], [], [], []
    for c in range(cfg.num_categories):
        for i in range(40):
            xtr.append(_bg_features(S.split_sample(cfg, "train", c, i)[1].background))
            ytr.append(c)
        for i in range(24):
            xte.append(_bg_features(S.split_sample(cfg, "heldout", c, i)[1].background))
            yte.append(c)
    acc = _nearest_centroid_accuracy(*(np.asarray(x) for x in (xtr, ytr, xte, yte)))
    assert acc >= 0.95, acc


def test_brands_are_visible_on_the_background():
    """Within a category, a brand's signature separates it from the other brands."""
    cfg = SyntheticConfig(num_categories=8, brands_per_category=3)
    accs = []
    for c in range(cfg.num_categories):
        xtr, ytr, xte, yte = [], [], [], []
        for i in range(30):
            b, s = S.split_sample(cfg, "train", c, i)
            xtr.append(_bg_features(s.background))
            ytr.append(b)
        for i in range(15):
            b, s = S.split_sample(cfg, "heldout", c, i)
            xte.append(_bg_features(s.background))
            yte.append(b)
        accs.append(_nearest_centroid_accuracy(*(np.asarray(x) for x in (xtr, ytr, xte, yte))))
    assert np.mean(accs) >= 0.8, accs


def test_products_belong_to_their_category():
    """Products of one category look more like each other than like other categories'."""
    cfg = SyntheticConfig(num_categories=12)
    feats, labels = [], []
    for c in range(cfg.num_categories):
        for i in range(20):
            feats.append(_product_features(S.split_sample(cfg, "train", c, i)[1]))
            labels.append(c)
    x, y = np.asarray(feats), np.asarray(labels)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    same = y[:, None] == y[None]
    off_diag = ~np.eye(len(y), dtype=bool)
    intra = d[same & off_diag].mean()
    inter = d[~same].mean()
    assert intra < 0.75 * inter, (intra, inter)
    # And a nearest-centroid classifier on product features is far above chance (1/12).
    tr = np.arange(len(y)) % 20 < 14
    acc = _nearest_centroid_accuracy(x[tr], y[tr], x[~tr], y[~tr])
    assert acc >= 0.7, acc


# ----------------------------------------------------------------------------- catalog


def test_make_catalog_schema_and_files(tmp_path):
    out = tmp_path / "cat"
    uris = make_catalog(str(out), SMALL)
    assert set(uris) == {"train", "heldout", "pairs"}
    names = json.loads((out / "categories.json").read_text())
    assert names == S.category_names(SMALL.num_categories)

    all_ids = []
    for split, per in (("train", SMALL.train_per_category), ("heldout", SMALL.heldout_per_category)):
        assert uris[split] == os.path.join(str(out), f"{split}.parquet")
        table = pq.read_table(uris[split])
        assert table.column_names == list(S.CATALOG_COLUMNS)
        rows = table.to_pylist()
        assert len(rows) == per * SMALL.num_categories
        for cat in names:
            assert sum(r["category"] == cat for r in rows) == per
        for r in rows:
            assert r["product_id"].startswith(f"{split}-{r['category']}-")
            assert r["reference_uri"] is None and r["prompt"] is None
            assert r["brand"] in {S.brand_name(r["category"], b) for b in range(SMALL.brands_per_category)}
            for col, sub in (("image_uri", "images"), ("mask_uri", "masks"), ("background_uri", "backgrounds")):
                assert os.path.isabs(r[col]) and os.path.isfile(r[col])
                assert r[col] == os.path.join(str(out), sub, split, f"{r['product_id']}.png")
            with Image.open(r["image_uri"]) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
            with Image.open(r["mask_uri"]) as im:
                assert im.mode == "L" and im.size == (64, 64)
            with Image.open(r["background_uri"]) as im:
                assert im.mode == "RGB" and im.size == (64, 64)
            img, mask, bg = _load(r["image_uri"]), _load(r["mask_uri"]), _load(r["background_uri"])
            assert np.array_equal(img[mask == 0], bg[mask == 0])
            assert 0.08 <= (mask > 0).mean() <= 0.45
        # Both brands of each category appear.
        assert len({r["brand"] for r in rows}) == SMALL.brands_per_category * SMALL.num_categories
        all_ids += [r["product_id"] for r in rows]
    pairs = pq.read_table(uris["pairs"]).to_pylist()
    all_ids += [r["product_id"] for r in pairs]
    assert len(all_ids) == len(set(all_ids))
    # The files on disk are exactly what render_sample gives for that row.
    brand, s = S.split_sample(SMALL, "train", 1, 3)
    row = pq.read_table(uris["train"]).to_pylist()[SMALL.train_per_category + 3]
    assert row["brand"] == S.brand_name(names[1], brand)
    assert np.array_equal(_load(row["image_uri"]), s.image)
    assert np.array_equal(_load(row["mask_uri"]), s.mask)


def test_make_catalog_pairs(tmp_path):
    uris = make_catalog(str(tmp_path / "cat"), SMALL)
    table = pq.read_table(uris["pairs"])
    assert table.column_names == list(S.PAIRS_COLUMNS)
    rows = table.to_pylist()
    assert len(rows) == SMALL.pairs_per_category * SMALL.num_categories
    for r in rows:
        assert r["prompt"] is None
        for col in ("image_uri", "mask_uri", "background_uri", "reference_uri", "reference_mask_uri",
                    "reference_background_uri"):
            assert os.path.isfile(r[col]) and f"{os.sep}pairs{os.sep}" in r[col]
        assert r["reference_uri"] != r["image_uri"]
        img, ref = _load(r["image_uri"]), _load(r["reference_uri"])
        mask, ref_mask = _load(r["mask_uri"]), _load(r["reference_mask_uri"])
        ref_bg = _load(r["reference_background_uri"])
        assert not np.array_equal(img, ref) and not np.array_equal(mask, ref_mask)  # a different product
        assert np.array_equal(ref[ref_mask == 0], ref_bg[ref_mask == 0])
    # Same brand and category: the reference's background is closer to its own row's background
    # (same brand signature, same category scene) than to other brands' backgrounds of that category.
    for cat in S.category_names(SMALL.num_categories):
        cat_rows = [r for r in rows if r["category"] == cat]
        assert {r["brand"] for r in cat_rows} == {S.brand_name(cat, b) for b in range(SMALL.brands_per_category)}
    ci = 0
    cfg = SyntheticConfig(num_categories=1, pairs_per_category=6, brands_per_category=2)
    for j in range(6):
        b0, s0 = S.split_sample(cfg, "pairs", ci, j, part=0)
        b1, s1 = S.split_sample(cfg, "pairs", ci, j, part=1)
        assert b0 == b1 == j % 2
        other = S.split_sample(cfg, "pairs", ci, j + 1, part=1)[1]  # the other brand
        f0, f1, fo = (_bg_features(x.background) for x in (s0, s1, other))
        assert np.linalg.norm(f0 - f1) < np.linalg.norm(f0 - fo)


def test_make_catalog_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_catalog(str(a), SMALL)
    make_catalog(str(b), SMALL)
    make_catalog(str(c), SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    fa, fb, fc = _files(a), _files(b), _files(c)
    pngs = sorted(k for k in fa if k.endswith(".png"))
    assert len(pngs) == 3 * SMALL.num_categories * (
        SMALL.train_per_category + SMALL.heldout_per_category + 2 * SMALL.pairs_per_category)
    assert fa.keys() == fb.keys() == fc.keys()
    for k in pngs:
        assert fa[k] == fb[k], k
    for split in ("train", "heldout", "pairs"):
        ta = pq.read_table(a / f"{split}.parquet").to_pylist()
        tb = pq.read_table(b / f"{split}.parquet").to_pylist()
        strip = lambda rows, root: [{k: (v.replace(str(root), "") if isinstance(v, str) else v)  # noqa: E731
                                     for k, v in r.items()} for r in rows]
        assert strip(ta, a) == strip(tb, b)
    # Another seed gives other images (same names).
    assert sum(fa[k] != fc[k] for k in pngs if "/images/" in "/" + k.replace(os.sep, "/")) >= 0.9 * (len(pngs) / 3)


def test_make_catalog_at_128(tmp_path):
    cfg = SyntheticConfig(num_categories=2, train_per_category=2, heldout_per_category=1, pairs_per_category=1,
                          resolution=128)
    uris = make_catalog(str(tmp_path / "cat128"), cfg)
    for split in ("train", "heldout", "pairs"):
        for r in pq.read_table(uris[split]).to_pylist():
            with Image.open(r["image_uri"]) as im:
                assert im.mode == "RGB" and im.size == (128, 128)
            with Image.open(r["mask_uri"]) as im:
                assert im.mode == "L" and im.size == (128, 128)


def test_make_catalog_accepts_file_uri(tmp_path):
    cfg = SyntheticConfig(num_categories=1, train_per_category=1, heldout_per_category=1, pairs_per_category=1)
    uris = make_catalog(f"file://{tmp_path}/cat", cfg)
    row = pq.read_table(uris["train"]).to_pylist()[0]
    assert row["image_uri"] == os.path.join(str(tmp_path), "cat", "images", "train", "train-mug-00000.png")
    assert os.path.isfile(row["image_uri"])


def test_png_round_trip_is_lossless():
    s = render_sample(0, 0, np.random.default_rng(0), 64)
    buf = io.BytesIO()
    Image.fromarray(s.mask).save(buf, format="PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), s.mask)


# ------------------------------------------------------------ style seeds and the prior

# sha256 over (relative path, PNG bytes) of every PNG make_catalog wrote for DIGEST_CONFIG,
# computed before style seeds existed: the default catalog must not change by one byte.
DIGEST_CONFIG = SyntheticConfig(num_categories=12, train_per_category=3, heldout_per_category=2,
                                pairs_per_category=1, brands_per_category=2)
DEFAULT_CATALOG_SHA256 = "d596302a7161e4b47c0f7e966a06c5b21e5c4edd709a32f9970e457a20397e78"


def _png_digest(root) -> str:
    import hashlib

    h = hashlib.sha256()
    files = _files(root)
    for name in sorted(k for k in files if k.endswith(".png")):
        h.update(name.encode())
        h.update(files[name])
    return h.hexdigest()


def test_default_catalog_is_byte_identical(tmp_path):
    make_catalog(str(tmp_path / "cat"), DIGEST_CONFIG)
    assert _png_digest(tmp_path / "cat") == DEFAULT_CATALOG_SHA256
    assert SyntheticConfig().style_seed is None


def _centroid_data(cfgs, train=30, test=12, label_offset=0):
    """Background features of several catalogs, labelled (catalog, category)."""
    xtr, ytr, xte, yte = [], [], [], []
    for k, cfg in enumerate(cfgs):
        for c in range(cfg.num_categories):
            label = label_offset + 100 * k + c
            for i in range(train):
                xtr.append(_bg_features(S.split_sample(cfg, "train", c, i)[1].background))
                ytr.append(label)
            for i in range(test):
                xte.append(_bg_features(S.split_sample(cfg, "heldout", c, i)[1].background))
                yte.append(label)
    return [np.asarray(x) for x in (xtr, ytr, xte, yte)]


@pytest.mark.parametrize("style_seed", [11, 12, 13])
def test_style_seed_categories_are_separable(style_seed):
    cfg = SyntheticConfig(num_categories=8, style_seed=style_seed)
    acc = _nearest_centroid_accuracy(*_centroid_data([cfg]))
    assert acc >= 0.9, acc


def test_style_seeds_differ_from_each_other_and_from_the_default_catalog():
    """Over the union of the default catalog and two style seeds (24 classes), held-out
    backgrounds of the styled catalogs still land on their own category: their families are
    not the demo catalog's, nor each other's."""
    cfgs = [SyntheticConfig(num_categories=8), SyntheticConfig(num_categories=8, style_seed=11),
            SyntheticConfig(num_categories=8, style_seed=12)]
    xtr, ytr, xte, yte = _centroid_data(cfgs, train=24, test=10)
    classes = np.unique(ytr)
    cent = np.stack([xtr[ytr == c].mean(0) for c in classes])
    pred = classes[((xte[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)]
    styled = yte >= 100
    assert (pred[styled] == yte[styled]).mean() >= 0.9
    assert (pred[styled] < 100).mean() <= 0.03  # almost never taken for a demo-catalog category


def test_style_families_are_drawn_per_seed_and_stable():
    fam = [S.style_family(11, c) for c in range(8)]
    assert len({f.pattern for f in fam}) == 8  # the first eight categories differ in pattern family
    assert fam == [S.style_family(11, c) for c in range(8)]
    assert fam != [S.style_family(12, c) for c in range(8)]
    for field_ in ("layout", "lighting", "product", "scheme"):
        assert len({getattr(f, field_) for f in fam + [S.style_family(12, c) for c in range(8)]}) > 1, field_
    # A category's family does not depend on how many categories the catalog has.
    a = SyntheticConfig(num_categories=2, style_seed=5)
    b = SyntheticConfig(num_categories=8, style_seed=5)
    assert np.array_equal(S.split_sample(a, "train", 1, 3)[1].image, S.split_sample(b, "train", 1, 3)[1].image)
    assert S.catalog_category_names(a) == S.catalog_category_names(b)[:2]


def test_styled_catalog_rows_and_masks(tmp_path):
    cfg = SyntheticConfig(num_categories=3, train_per_category=4, heldout_per_category=2, pairs_per_category=1,
                          style_seed=7)
    uris = make_catalog(str(tmp_path / "cat"), cfg)
    names = json.loads((tmp_path / "cat" / "categories.json").read_text())
    assert names == S.catalog_category_names(cfg)
    assert not set(names) & set(S.CATEGORIES)  # new words: adapting appends categories
    rows = pq.read_table(uris["train"]).to_pylist()
    assert [r["category"] for r in rows] == [n for n in names for _ in range(4)]
    for r in rows:
        img, mask, bg = _load(r["image_uri"]), _load(r["mask_uri"]), _load(r["background_uri"])
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert np.array_equal(img[mask == 0], bg[mask == 0])
        assert (img[mask > 0] != bg[mask > 0]).any()
        assert 0.05 <= (mask > 0).mean() <= 0.45


def test_prior_catalog(tmp_path):
    uris = S.make_prior_catalog(str(tmp_path / "prior"), 40, resolution=32, seed=3)
    rows = pq.read_table(uris["train"]).to_pylist()
    assert len(rows) == 40 and {r["category"] for r in rows} == {S.PRIOR_CATEGORY}
    bgs = []
    for r in rows:
        img, mask, bg = _load(r["image_uri"]), _load(r["mask_uri"]), _load(r["background_uri"])
        assert img.shape == (32, 32, 3) and set(np.unique(mask).tolist()) == {0, 255}
        assert np.array_equal(img[mask == 0], bg[mask == 0])
        bgs.append(bg)
    # Broad: backgrounds differ a lot from image to image (mean colours spread over the cube).
    means = np.stack([b.reshape(-1, 3).mean(0) for b in bgs])
    assert means.std(0).min() > 25, means.std(0)
    again = S.make_prior_catalog(str(tmp_path / "again"), 40, resolution=32, seed=3)
    assert _png_digest(tmp_path / "prior") == _png_digest(tmp_path / "again")
    assert again["train"].endswith("train.parquet")
    with pytest.raises(ValueError):
        S.make_prior_catalog(str(tmp_path / "none"), 0)


def test_synth_command_style_seed_and_prior(tmp_path, capsys):
    from backdrop import cli

    out = tmp_path / "styled"
    assert cli.main(["synth", "--output", str(out), "--categories", "2", "--train-per-category", "2",
                     "--heldout-per-category", "1", "--style-seed", "11"]) == 0
    assert json.loads((out / "categories.json").read_text()) == S.catalog_category_names(
        SyntheticConfig(num_categories=2, style_seed=11))
    assert cli.main(["synth", "--output", str(tmp_path / "prior"), "--prior", "--rows", "3", "--resolution", "32"]) == 0
    rows = pq.read_table(tmp_path / "prior" / "train.parquet").to_pylist()
    assert [r["product_id"] for r in rows] == ["prior-0000000", "prior-0000001", "prior-0000002"]
    assert "train" in capsys.readouterr().out
