"""The QA scorer (fixed components, fitted on the train split, saved with the model) and
best-of-N through the runtime."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from backdrop import runtime
from backdrop.catalog import read_catalog
from backdrop.demo.synthetic import SyntheticConfig, make_catalog
from backdrop.errors import InvalidParameterError
from backdrop.inputs import Product, fetch_product
from backdrop.models.generator import QA_SCORER_NAME, BackdropModel
from backdrop.pipeline import GenerationRequest, InferenceConfig
from backdrop.quality import qa

FAST = InferenceConfig(num_inference_steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cfg = SyntheticConfig(num_categories=3, train_per_category=12, heldout_per_category=4, pairs_per_category=2)
    return make_catalog(str(tmp_path_factory.mktemp("qa-catalog")), cfg)


@pytest.fixture(scope="module")
def scorer(catalog):
    return qa.fit_scorer(catalog["train"])


def heldout(catalog):
    return [fetch_product(r) for r in read_catalog(catalog["heldout"]).to_pylist()]


def test_category_fit_recognises_real_heldout_backgrounds(catalog, scorer):
    products = heldout(catalog)
    right = 0
    for p in products:
        fits = {c: scorer(GenerationRequest(p.image, p.mask, c), p.image)["category_fit"]
                for c in scorer.classifier.names}
        right += max(fits, key=fits.get) == p.category
    assert right / len(products) > 1 / len(scorer.classifier.names) + 0.3  # well above chance


def test_pattern_fit_prefers_the_real_pattern_to_its_blur(catalog, scorer):
    """``pattern_fit`` sees texture: the true background beats the same background blurred to
    8x8, which keeps the palette (and so ``category_fit``) but loses the pattern."""
    from backdrop.quality.pattern import blurred

    products = heldout(catalog)
    real = [scorer(GenerationRequest(p.image, p.mask, p.category), p.image)["pattern_fit"] for p in products]
    blur = [scorer(GenerationRequest(p.image, p.mask, p.category), blurred(p.image))["pattern_fit"] for p in products]
    assert np.mean(real) > np.mean(blur) + 0.3, (np.mean(real), np.mean(blur))


def test_seam_flags_a_halo_around_the_product():
    rng = np.random.default_rng(0)
    # a gently textured background, a square product, then the same with a bright rim
    base = (120 + rng.integers(-6, 7, (64, 64, 3))).astype(np.uint8)
    mask = np.zeros((64, 64), np.float32)
    mask[24:40, 24:40] = 1
    halo = base.copy()
    halo[22:42, 22:42] = 250
    halo[24:40, 24:40] = base[24:40, 24:40]
    clean, haloed = qa.seam_score(Image.fromarray(base), mask), qa.seam_score(Image.fromarray(halo), mask)
    assert clean > 0.9 and haloed < 0.5


def test_leak_and_reference_components_react(catalog, scorer):
    p = heldout(catalog)[0]
    req = GenerationRequest(p.image, p.mask, p.category)
    real = scorer(req, p.image)
    # paint the whole background with the product's own mean colour: product colour leaked
    arr = np.asarray(p.image).copy()
    arr[p.mask <= 0.5] = np.asarray(p.image)[p.mask > 0.5].mean(0).astype(np.uint8)
    leaked = scorer(req, Image.fromarray(arr))
    assert leaked["leak"] < real["leak"]
    assert "reference" not in real
    with_ref = GenerationRequest(p.image, p.mask, p.category, reference=p.image, reference_mask=p.mask)
    same, other = scorer(with_ref, p.image)["reference"], scorer(with_ref, Image.fromarray(arr))["reference"]
    assert same > 0.99 and other < same
    for s in (real, leaked):
        assert set(s) >= {"category_fit", "seam", "leak", "qa_score"} and 0 <= s["qa_score"] <= 1


def test_the_scorer_is_saved_with_the_model_and_loaded_by_the_runtime(catalog, tmp_path):
    model_dir = str(tmp_path / "gen")
    BackdropModel.tiny(["mug", "lamp", "watch"]).save_pretrained(model_dir)
    fitted = qa.fit_scorer(catalog["train"], model_dir)
    assert os.path.exists(os.path.join(model_dir, QA_SCORER_NAME))
    gen = runtime.load(model_dir, device="cpu")
    assert gen.describe()["qa_scorer"] is True
    loaded = qa.scorer_for(gen)
    p = heldout(catalog)[1]
    req = GenerationRequest(p.image, p.mask, p.category)
    assert loaded(req, p.image) == pytest.approx(fitted(req, p.image))
    # saving the loaded model again keeps it (what the registry logs)
    again = str(tmp_path / "again")
    gen.model.save_pretrained(again)
    with open(os.path.join(again, QA_SCORER_NAME)) as f:
        assert json.load(f) == fitted.state()
    assert fitted.fitted_on["catalog"] == catalog["train"]


def test_a_model_without_a_scorer_says_so(tiny_model):
    with pytest.raises(qa.NoScorerError, match="no QA scorer"):
        qa.scorer_for(runtime.wrap(tiny_model))


def test_best_of_n_keeps_the_best_candidate(catalog, scorer, tiny_model):
    gen = runtime.wrap(tiny_model)
    products = [p for p in heldout(catalog) if p.category in tiny_model.categories][:1]
    products = products or [Product(*_square_product(), "mug")]
    requests = [r for p in products for r in p.requests([7])]
    best = runtime.generate_best(gen, requests, FAST, 3, scorer, threshold=0.0)
    plain = runtime.generate_measured(gen, requests, FAST)
    for b, one in zip(best, plain):
        assert isinstance(b, runtime.Generated)
        assert len(b.candidates) == 3 and sum(c["kept"] for c in b.candidates) == 1
        kept = next(c for c in b.candidates if c["kept"])
        assert kept["scores"]["qa_score"] == max(c["scores"]["qa_score"] for c in b.candidates)
        assert b.scores == kept["scores"] and b.seed == kept["seed"]
        assert len({c["seed"] for c in b.candidates}) == 3 and b.candidates[0]["seed"] == 7
        assert b.device_seconds == pytest.approx(sum(c["device_seconds"] for c in b.candidates))
        assert b.qa_passed is True  # threshold 0
        # candidate 0 is the plain output: best-of-1 is plain generation
        first = runtime.generate_best(gen, requests, FAST, 1, scorer)[0]
        assert np.array_equal(np.asarray(first.image), np.asarray(one.image))
        assert first.qa_passed == (first.scores["qa_score"] >= scorer.threshold)
    flagged = runtime.generate_best(gen, requests, FAST, 2, scorer, threshold=1.01)
    assert all(f.qa_passed is False for f in flagged)  # still an output, flagged for review
    with pytest.raises(InvalidParameterError):
        runtime.generate_best(gen, requests, FAST, 0, scorer)


def test_best_of_n_in_slices_keeps_the_same_outputs_and_bounds_what_is_held(catalog, scorer, tiny_model,
                                                                          monkeypatch):
    """Candidates are made a slice at a time (at most max_pixels_in_flight of output, at least one
    loop): the kept images, seeds and scores equal the one-slice run's, and no call generates
    more than the bound allows."""
    gen = runtime.wrap(tiny_model, batch_bucket=2)
    products = [p for p in heldout(catalog) if p.category in tiny_model.categories][:3]
    requests = [r for p in products for r in p.requests([5])]
    whole = runtime.generate_best(gen, requests, FAST, 3, scorer)
    sizes, real = [], runtime.generate_measured

    def counted(gen_, reqs, *args, **kwargs):
        sizes.append(len(reqs))
        return real(gen_, reqs, *args, **kwargs)

    monkeypatch.setattr(runtime, "generate_measured", counted)
    one_image = requests[0].image.size[0] * requests[0].image.size[1]
    sliced = runtime.generate_best(gen, requests, FAST, 3, scorer, max_pixels_in_flight=2 * one_image)
    assert sizes == [2, 2, 2, 2, 1]  # 9 candidates, two (one loop) at a time
    for a, b in zip(whole, sliced):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.seed == b.seed
        assert [c["seed"] for c in a.candidates] == [c["seed"] for c in b.candidates]
        assert [c["scores"] for c in a.candidates] == [c["scores"] for c in b.candidates]


def _square_product():
    img = Image.new("RGB", (64, 64), (90, 90, 90))
    mask = np.zeros((64, 64), np.float32)
    mask[20:44, 20:44] = 1
    return img, mask


def test_the_scorer_works_on_clip_features_from_a_local_directory(catalog, tmp_path):
    """A real (small, randomly initialised) CLIP vision model saved in transformers format:
    the same loading and feature path as a downloaded CLIP directory."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    clip_dir = str(tmp_path / "clip")
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)

    fitted = qa.fit_scorer(catalog["train"], clip_model=clip_dir)
    assert fitted.features == "clip" and fitted.classifier.mean.shape == (16,)
    assert fitted.pattern.features == "encoder" and fitted.pattern.classifier.mean.shape == (16,)
    p = heldout(catalog)[0]
    req = GenerationRequest(p.image, p.mask, p.category)
    loaded = qa.QAScorer.from_state(fitted.state(), clip_model=clip_dir)
    assert "pattern_fit" in fitted(req, p.image)
    assert loaded(req, p.image) == pytest.approx(fitted(req, p.image), rel=1e-5)
    with pytest.raises(qa.NoScorerError, match="CLIP"):
        qa.QAScorer.from_state(fitted.state()).pattern.proba([p.image], [p.mask])
    with pytest.raises(qa.NoScorerError, match="CLIP"):
        qa.QAScorer.from_state(fitted.state())(req, p.image)
