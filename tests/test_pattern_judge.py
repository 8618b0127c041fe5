"""The pattern judge against forgeries that keep palette and layout but lose texture.

The colour judge gives 1.000 to each category's mean training image (issue #21); a judge that
sees patterns must not. On the demo catalog and on a style seed the model never saw, the true
held-out backgrounds must score >= 0.85, and three forgeries of them <= 0.35 each: the
category's mean training image, the true background blurred to 8x8, and one flat colour per
category (the mean image's mean).
"""

import numpy as np
import pytest
from PIL import Image

from backdrop.catalog import read_catalog
from backdrop.demo.synthetic import SyntheticConfig, make_catalog
from backdrop.inputs import fetch_product
from backdrop.quality import pattern


def _rows(uri: str):
    reqs = [fetch_product(r).requests([0])[0] for r in read_catalog(uri).to_pylist()]
    return [q.image for q in reqs], [q.mask for q in reqs], [q.category for q in reqs]


@pytest.fixture(scope="module", params=[None, 11], ids=["demo", "style-11"])
def judged(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"pattern-{request.param}")
    catalog = make_catalog(str(out), SyntheticConfig(train_per_category=160, heldout_per_category=12,
                                                     pairs_per_category=0, style_seed=request.param))
    train, heldout = _rows(catalog["train"]), _rows(catalog["heldout"])
    return pattern.PatternJudge.fit(*train), train, heldout


def test_true_backgrounds_pass_and_forgeries_fail(judged):
    judge, (t_images, _, t_cats), (images, masks, cats) = judged
    means = pattern.mean_images(t_images, t_cats)
    scores = {
        "true": judge.consistency(images, masks, cats)["pattern_consistency"],
        "mean training image": judge.consistency([means[c] for c in cats], masks, cats)["pattern_consistency"],
        "blurred to 8x8": judge.consistency([pattern.blurred(im) for im in images], masks, cats)["pattern_consistency"],
        "flat colour": judge.consistency([pattern.flat(means[c]) for c in cats], masks, cats)["pattern_consistency"],
    }
    assert scores["true"] >= 0.85, scores
    assert all(v <= 0.35 for k, v in scores.items() if k != "true"), scores


def test_the_judge_is_colour_blind_and_ignores_the_product(judged):
    judge, _, (images, masks, cats) = judged
    image, mask = images[0], masks[0]
    grey = image.convert("L").convert("RGB")
    assert np.allclose(judge.describe([image], [mask]), judge.describe([grey], [mask]), atol=1e-6, equal_nan=True)
    repainted = np.asarray(image.convert("RGB")).copy()
    repainted[mask > 0.5] = 255 - repainted[mask > 0.5]  # the product changes, the background does not
    assert np.array_equal(judge.describe([Image.fromarray(repainted)], [mask]), judge.describe([image], [mask]), equal_nan=True)


def test_state_round_trip_keeps_every_prediction(judged):
    judge, _, (images, masks, _) = judged
    again = pattern.PatternJudge.from_state(judge.state())
    assert np.array_equal(again.proba(images, masks), judge.proba(images, masks))
