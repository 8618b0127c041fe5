"""A quality floor in CI: the shipped checkpoint must still paint its categories.

Every other test uses untrained models, so a change that ruins generation (a scheduler built on
the wrong noise schedule fell to consistency 0.115 while every test stayed green) could land. The
shipped ``checkpoints/tiny-64`` measured 1.0 by colour and 0.51 by pattern on the demo catalog's
96 held-out products (20 DDIM steps, guidance 4; the real images score 1.0 and 0.99); here 48 of
them (the judge fitted on 320 train ads): 1.0 and 0.52, with floors above chance (0.125) and below
what it measures, the real images as each judge's own control, an unfinished generation (2 DDIM
steps: the palette without the pattern, 0.25) as the pattern floor's negative control, and each
product painted as the next category (0.0 and 0.27) as the control that the generator follows
its prompt.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from backdrop.demo.synthetic import SyntheticConfig, make_catalog
from backdrop.models.generator import BackdropModel
from backdrop.quality.evaluation import EvalConfig, Judges, evaluate

PATTERN_FLOOR = 0.3
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-64"


def test_the_shipped_checkpoint_keeps_its_colours_and_patterns(tmp_path):
    catalog = make_catalog(str(tmp_path / "catalog"), SyntheticConfig(train_per_category=80, heldout_per_category=6,
                                                                      pairs_per_category=0))
    model = BackdropModel.from_pretrained(str(CHECKPOINT))
    cfg = EvalConfig(steps=20, per_category=6, palette_rows=160)
    judges = Judges.fit(catalog, model.categories.names, cfg)  # one fit for the three evaluations
    m = evaluate(model, catalog, cfg, with_references=False, judges=judges).metrics
    assert m["n_generated"] == 48 and m["product_bit_identical"] is True
    assert m["real_consistency"] >= 0.9 and m["real_pattern_consistency"] >= 0.85, m  # the judges know the truth
    assert m["category_consistency"] >= 0.75, m
    assert m["pattern_consistency"] >= PATTERN_FLOOR, m
    with pytest.raises(ValueError, match="palette_rows"):  # judges are shared only where they would be refitted alike
        evaluate(model, catalog, replace(cfg, palette_rows=80), with_references=False, judges=judges)
    unfinished = evaluate(model, catalog, replace(cfg, steps=2), with_references=False, judges=judges).metrics
    assert unfinished["pattern_consistency"] < PATTERN_FLOOR, unfinished
    # the guidance sweep's control: each product painted as the next category scores near chance
    shifted = evaluate(model, catalog, replace(cfg, category_shift=1), with_references=False, judges=judges).metrics
    assert shifted["category_consistency"] <= 0.35 and shifted["pattern_consistency"] <= 0.35, shifted
