"""Shadows and reflections (issue #24): the harmony catalog and the measures behind its bar.

The default catalog stays byte-identical (test_synthetic.test_default_catalog_is_byte_identical
covers it with harmony off, the default); here: harmony draws only on background pixels, and
each measure tells ads with shadows or reflections from the same ads without, with a flat
background as a second negative control."""

import numpy as np
import pytest

from backdrop.demo.synthetic import HARMONY, SyntheticConfig, add_harmony, is_glossy, make_catalog, split_sample
from backdrop.quality.harmony import contact_shadow, harmony_scores, reflection


def _ads(mode: str, n: int = 8):
    config = SyntheticConfig(harmony=mode)
    return [(ci, split_sample(config, "heldout", ci, i)[1]) for ci in range(8) for i in range(n)]


def test_harmony_draws_only_on_the_background_and_the_default_is_unchanged():
    for (ci, off), (_, on) in zip(_ads("off", 3), _ads("shadow+reflection", 3)):
        product = off.mask > 127
        assert np.array_equal(on.mask, off.mask) and np.array_equal(on.background, off.background)
        assert np.array_equal(on.image[product], off.image[product])  # the product's pixels untouched
        assert not np.array_equal(on.image, off.image)
    default = split_sample(SyntheticConfig(), "train", 3, 5)[1]
    assert np.array_equal(default.image, split_sample(SyntheticConfig(harmony="off"), "train", 3, 5)[1].image)
    with pytest.raises(ValueError, match="harmony must be one of"):
        make_catalog("/nonexistent", SyntheticConfig(harmony="glow"))
    with pytest.raises(ValueError, match="harmony must be one of"):
        add_harmony(default, "glow", np.random.default_rng(0))
    assert HARMONY == ("off", "shadow", "shadow+reflection")


def test_the_contact_shadow_measure_sees_shadows_and_rejects_their_absence():
    def mean_shadow(mode):
        return harmony_scores([s.image for _, s in _ads(mode)], [s.mask > 127 for _, s in _ads(mode)])["contact_shadow"]

    with_shadows, without = mean_shadow("shadow"), mean_shadow("off")
    assert with_shadows > 0.15 and abs(without) < 0.1 and with_shadows - without > 0.15, (with_shadows, without)
    flat = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 24:40] = True
    assert contact_shadow(flat, mask) == pytest.approx(0.0)  # a flat floor: nothing under the product
    standing_on_the_edge = np.zeros((64, 64), bool)
    standing_on_the_edge[40:, 24:40] = True
    assert contact_shadow(flat, standing_on_the_edge) is None and reflection(flat, standing_on_the_edge) is None


def test_the_reflection_measure_sees_mirror_images_on_glossy_floors_only():
    def glossy(mode):
        pairs = [(s.image, s.mask > 127) for ci, s in _ads(mode) if is_glossy(ci)]
        return harmony_scores(*zip(*pairs))["reflection"]

    mirrored, shadow_only = glossy("shadow+reflection"), glossy("shadow")
    assert mirrored > 0.1 and mirrored - shadow_only > 0.1, (mirrored, shadow_only)
    # an exact mirror image of a textured product below it scores ~1
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:32, 20:44] = True
    image[10:32, 20:44] = rng.integers(0, 256, (22, 24, 3))
    image[32:54, 20:44] = image[10:32, 20:44][::-1]
    assert reflection(image, mask) > 0.99
