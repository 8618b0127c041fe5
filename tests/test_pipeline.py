"""The generator end to end on the tiny preset: PG masking, determinism, paste-back, save/load."""

import numpy as np
import pytest
import torch
from PIL import Image

from backdrop.errors import InvalidParameterError, MaskSizeError, UnknownCategoryError
from backdrop.models.attention import mask_at
from backdrop.models.generator import BackdropModel
from backdrop.pipeline import BackdropPipeline, GenerationRequest, InferenceConfig, predict_noise

FAST = InferenceConfig(num_inference_steps=4, guidance_scale=2.0)


def product(seed=0, size=(72, 56)):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = np.zeros((size[1], size[0]), np.float32)
    mask[10:40, 15:45] = 1
    return img, mask


def requests(n=3):
    img, mask = product()
    ref, ref_mask = product(seed=9, size=(64, 64))
    cats = ["mug", "lamp", "watch"]
    return [
        GenerationRequest(img, mask, cats[i % 3], seed=i,
                          reference=ref if i % 2 else None, reference_mask=ref_mask if i % 2 else None,
                          prompt="soft light" if i == 2 else None)
        for i in range(n)
    ]


def test_product_pixels_are_bit_identical(tiny_model):
    reqs = requests()
    for r, out in zip(reqs, BackdropPipeline(tiny_model)(reqs, FAST)):
        assert out.size == r.image.size and out.mode == "RGB"
        got, orig = np.asarray(out), np.asarray(r.image)
        keep = r.mask > 0.5
        assert np.array_equal(got[keep], orig[keep])
        assert not np.array_equal(got[~keep], orig[~keep])  # the background was generated


def test_same_seed_same_output_different_seed_differs(tiny_model):
    pipe = BackdropPipeline(tiny_model)
    a = pipe(requests(), FAST)
    b = pipe(requests(), FAST)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    other = requests()
    for r in other:
        r.seed += 100
    c = pipe(other, FAST)
    assert all(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))


def test_row_output_does_not_depend_on_batch_mates(tiny_model):
    pipe = BackdropPipeline(tiny_model)
    batch = pipe(requests(3), FAST)
    alone = pipe(requests(3)[1:2], FAST)[0]
    diff = np.abs(np.asarray(batch[1], np.int16) - np.asarray(alone, np.int16))
    assert diff.max() <= 2  # same noise; only float reduction order may differ


def test_pg_contribution_is_zero_inside_product_at_every_resolution(tiny_model):
    """Capture the residuals entering the UNet with and without a reference."""
    pipe = BackdropPipeline(tiny_model)
    reqs = requests(2)  # row 1 has a reference
    cond = pipe.prepare(reqs)
    seen = []

    def grab(_module, _args, kwargs):
        seen.append((kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"]))

    handle = tiny_model.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        x = torch.randn(2, 4, *cond.product_mask.shape[-2:], generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500, 500])
        predict_noise(tiny_model, x, t, cond)
        cond.pg_rows = None
        predict_noise(tiny_model, x, t, cond)
    finally:
        handle.remove()
    (down_pg, mid_pg), (down_cg, mid_cg) = seen
    for with_pg, without in zip(list(down_pg) + [mid_pg], list(down_cg) + [mid_cg]):
        delta = (with_pg - without)[1]  # the reference row
        inside = mask_at(cond.product_mask[1:2], with_pg.shape[-2:])[0, 0] > 0.5
        assert inside.any() and (~inside).any()
        assert torch.all(delta[:, inside] == 0)
        assert delta[:, ~inside].abs().max() > 0  # PG does act on the background
        assert torch.equal(with_pg[0], without[0])  # the row without a reference: CG alone


def test_cg_alone_skips_pg(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_model.pg, "forward", lambda *a, **k: calls.append(1))
    BackdropPipeline(tiny_model)([requests(1)[0]], FAST)
    assert calls == []


def test_save_load_round_trip_is_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(str(tmp_path / "gen"))
    loaded = BackdropModel.from_pretrained(str(tmp_path / "gen"))
    assert loaded.categories.ids == tiny_model.categories.ids
    a = BackdropPipeline(tiny_model)(requests(), FAST)
    b = BackdropPipeline(loaded)(requests(), FAST)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_load_from_s3(tiny_model, s3_bucket):
    uri = f"{s3_bucket}/models/tiny"
    tiny_model.save_pretrained(uri)
    loaded = BackdropModel.from_pretrained(uri)
    a = BackdropPipeline(tiny_model)(requests(2), FAST)
    b = BackdropPipeline(loaded)(requests(2), FAST)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_bare_inpainting_base_loads_with_fresh_generators(tiny_model, tmp_path):
    """A plain SD-inpainting-format directory (no cg/) is how real weights come in."""
    base = tmp_path / "sd-inpainting"
    for name in ("vae", "unet", "text_encoder"):
        getattr(tiny_model, name).save_pretrained(str(base / name))
    tiny_model.tokenizer.save_pretrained(str(base / "tokenizer"))
    tiny_model.scheduler.save_pretrained(str(base / "scheduler"))
    m = BackdropModel.from_pretrained(str(base), resolution=64)
    assert m.config.preset == "sd-inpainting" and m.config.resolution == 64 and m.pg is not None
    torch.testing.assert_close(m.cg.conv_in.weight, tiny_model.unet.conv_in.weight)


def test_bad_inputs_are_typed(tiny_model):
    pipe = BackdropPipeline(tiny_model)
    img, mask = product()
    with pytest.raises(MaskSizeError):
        pipe([GenerationRequest(img, mask[:-1], "mug")], FAST)
    with pytest.raises(UnknownCategoryError):
        pipe([GenerationRequest(img, mask, "sofa")], FAST)
    with pytest.raises(InvalidParameterError):
        pipe([GenerationRequest(img, mask, "mug")], InferenceConfig(num_inference_steps=0))
    with pytest.raises(InvalidParameterError):
        pipe([GenerationRequest(img, mask, "mug")], InferenceConfig(guidance_scale=-1))
