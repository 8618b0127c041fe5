"""Placements: the parser, the layout on each canvas (product bit-identical, never resampled)
and non-square generation end to end on the tiny preset."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from backdrop import runtime
from backdrop.errors import ImageTooLargeError, InvalidInputError, InvalidParameterError
from backdrop.inputs import Product
from backdrop.limits import Limits
from backdrop.pipeline import InferenceConfig
from backdrop.placements import Layout, Placement, parse_placement, parse_placements, place, product_box

FAST = InferenceConfig(num_inference_steps=2, guidance_scale=2.0)
FOUR = "1:1,4:5,16:9,9:16"


def odd_product(size=(77, 53), box=(21, 9, 50, 44)):
    """A noisy photo of odd size whose product is an odd-sized, non-rectangular blob."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = np.zeros((size[1], size[0]), np.float32)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    mask[y0:y1, x0:x1] = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.float32)
    return img, mask


# --- the parser ---------------------------------------------------------------------------

def test_named_ratios_and_sizes_parse():
    got = parse_placements("1:1, 4:5,16:9 ,9:16,300x250,32:18")
    assert [p.name for p in got] == ["1:1", "4:5", "16:9", "9:16", "300x250"]  # 32:18 is 16:9 again
    assert got[4].size == (300, 250) and got[4].ratio == (6, 5)
    assert parse_placements(None) == [Placement("1:1", (1, 1))]


@pytest.mark.parametrize("bad", ["", "16/9", "0:1", "1:0", "5x0", "abc", "1:1:1", "-4:5", "16:3", "1.5:1", "x"])
def test_junk_is_a_typed_error(bad):
    with pytest.raises(InvalidParameterError):
        parse_placement(bad)


def test_limits_bound_the_list_and_the_slot():
    with pytest.raises(InvalidParameterError, match="over the limit"):
        parse_placements(",".join(f"{i}:{i + 1}" for i in range(1, 12)))
    with pytest.raises(ImageTooLargeError):
        parse_placement("4000x4000", Limits(max_pixels=1_000_000))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_any_text_parses_or_is_a_typed_error(text):
    try:
        p = parse_placement(text)
    except InvalidInputError:
        return
    assert 0.25 <= p.aspect <= 4.0 and parse_placement(p.name) == p  # canonical and stable


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400))
def test_ratios_reduce_and_respect_the_aspect_limit(w, h):
    if not 0.25 <= w / h <= 4.0:
        with pytest.raises(InvalidParameterError):
            parse_placement(f"{w}:{h}")
        return
    p = parse_placement(f"{w}:{h}")
    assert p.ratio[0] * h == p.ratio[1] * w and np.gcd(*p.ratio) == 1 and p.size is None


# --- the layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec", FOUR.split(",") + ["3:2", "61x97", "99x45"])
def test_product_is_bit_identical_in_every_placement(spec):
    img, mask = odd_product()
    placed = place(img, mask, parse_placement(spec))
    l, t, r, b = placed.box
    sl, st_, sr, sb = placed.source_box
    src, out = np.asarray(img), np.asarray(placed.image)
    keep = mask[st_:sb, sl:sr] > 0.5
    assert np.array_equal(out[t:b, l:r][keep], src[st_:sb, sl:sr][keep])
    assert np.array_equal(placed.mask[t:b, l:r], mask[st_:sb, sl:sr])
    assert placed.mask.sum() == mask.sum()  # nothing else is product
    w, h = placed.image.size
    assert placed.mask.shape == (h, w)
    p = placed.placement
    if p.size:
        assert (w, h) == p.size
    else:
        assert abs(w / h - p.aspect) <= 1 / min(w, h)  # the ratio, to one pixel


def test_default_layout_keeps_the_share_centres_and_rests_on_the_lower_third():
    img, mask = odd_product()
    box = product_box(mask)
    share = max(box[2] - box[0], box[3] - box[1]) / min(img.size)
    for spec in FOUR.split(","):
        placed = place(img, mask, parse_placement(spec))
        w, h = placed.image.size
        l, t, r, b = placed.box
        assert abs(max(r - l, b - t) / min(w, h) - share) < 0.02
        assert abs((l + r) / 2 - w / 2) <= 1
        if b - t <= 2 * h / 3:  # it fits above the line: it rests on it
            assert abs(b - 2 * h / 3) <= 1


def test_scale_and_anchor_are_configurable():
    img, mask = odd_product()
    placed = place(img, mask, parse_placement("16:9"), Layout(scale=0.25, anchor=(0.0, 1.0)))
    w, h = placed.image.size
    l, t, r, b = placed.box
    assert abs(max(r - l, b - t) / min(w, h) - 0.25) < 0.02
    assert l == 0 and b == h  # bottom-left corner
    with pytest.raises(InvalidParameterError):
        Layout(scale=0)
    with pytest.raises(InvalidParameterError):
        Layout(anchor=(0.5, 1.5))


def test_a_product_is_never_cut_or_resampled_to_fit():
    img, mask = odd_product()
    big = place(img, mask, parse_placement("16:9"), Layout(scale=1.0, anchor=(1.0, 0.0)))
    l, t, r, b = big.box
    assert 0 <= l and r <= big.image.width and 0 <= t and b <= big.image.height
    with pytest.raises(InvalidParameterError, match="does not fit"):
        place(img, mask, parse_placement("20x20"))
    with pytest.raises(ImageTooLargeError):
        place(img, mask, parse_placement("16:9"), Layout(scale=0.01), Limits(max_pixels=100_000))


# --- non-square generation ----------------------------------------------------------------

def test_generation_size_follows_the_model_config(tiny_model):
    gen = runtime.wrap(tiny_model)
    m = gen.pipe.size_multiple
    assert m == 16  # the tiny VAE downsamples 4x and its UNet 4x, read from the networks
    r = tiny_model.config.resolution
    for size in [(64, 64), (1600, 900), (900, 1600), (400, 500), (77, 53), (5000, 10)]:
        w, h = gen.pipe.generation_size(size)
        assert w % m == 0 and h % m == 0 and min(w, h) == r
        assert max(w, h) / min(w, h) <= 4.0


def test_four_placements_generate_end_to_end(tiny_model):
    img, mask = odd_product()
    product = Product(img, mask, "mug")
    placed = [product.placed(p) for p in parse_placements(FOUR)]
    requests = [r for p in placed for r in p.requests([5])]
    gen = runtime.wrap(tiny_model)
    results = runtime.generate_measured(gen, requests, FAST)
    sizes = set()
    for req, res in zip(requests, results):
        assert isinstance(res, runtime.Generated)
        assert res.image.size == req.image.size  # the canvas, at the product's own scale
        keep = req.mask > 0.5
        assert np.array_equal(np.asarray(res.image)[keep], np.asarray(req.image)[keep])
        assert not np.array_equal(np.asarray(res.image)[~keep], np.asarray(req.image)[~keep])
        assert res.device_seconds > 0
        sizes.add(res.generation_size)
    assert len(sizes) == 4  # one denoising loop per generation size
    # a placement's pixels do not depend on the other placements in the call
    alone = runtime.generate(gen, [requests[2]], FAST)[0]
    assert np.array_equal(np.asarray(alone), np.asarray(results[2].image))
