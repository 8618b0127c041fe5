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


def test_autoencode_keeps_the_product_and_the_size(tiny_model):
    """The VAE round trip (evaluation's ceiling on pattern) is shaped like a generation."""
    reqs = requests(2)
    pipe = BackdropPipeline(tiny_model)
    outs = pipe.autoencode(reqs)
    for r, out in zip(reqs, outs):
        keep = r.mask > 0.5
        assert out.size == r.image.size and np.array_equal(np.asarray(out)[keep], np.asarray(r.image)[keep])
        assert not np.array_equal(np.asarray(out)[~keep], np.asarray(r.image)[~keep])  # through the VAE
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(outs, pipe.autoencode(reqs)))


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


@pytest.mark.parametrize("scheduler,with_reference", [("ddim", True), ("dpm++", False)])
def test_row_output_does_not_depend_on_batch_mates(tiny_model, scheduler, with_reference):
    """A row alone, and the same row inside mixed batches of 2, 5 and 8 (other categories,
    references on some mates, other positions): the same pixels, bit for bit."""
    config = InferenceConfig(num_inference_steps=4, guidance_scale=2.0, scheduler=scheduler)
    img, mask = product()
    ref, ref_mask = product(seed=9, size=(64, 64))

    def row(i, reference):
        return GenerationRequest(img if i == 0 else product(seed=i)[0], mask, ["mug", "lamp", "watch"][i % 3],
                                 seed=1000 + i, reference=ref if reference else None,
                                 reference_mask=ref_mask if reference else None)

    pipe = BackdropPipeline(tiny_model)
    alone = np.asarray(pipe([row(0, with_reference)], config)[0])
    for n in (2, 5, 8):
        mates = [row(i, i % 2 == 0) for i in range(1, n)]
        at = n // 2
        batch = mates[:at] + [row(0, with_reference)] + mates[at:]
        assert np.array_equal(np.asarray(pipe(batch, config)[at]), alone), f"batch of {n}"


def test_every_loop_runs_the_bucket_shape(tiny_model):
    """The mechanism behind the test above: a short loop is padded, a long group is split."""
    pipe = BackdropPipeline(tiny_model, batch_bucket=4)
    seen = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        pipe(requests(3) + requests(3), InferenceConfig(num_inference_steps=1, guidance_scale=2.0))
    finally:
        handle.remove()
    assert seen == [8, 8]  # 6 rows -> loops of 4 + 2 (padded to 4), x2 for guidance
    assert pipe.loops(requests(3) * 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "unipc"])
def test_each_scheduler_generates_with_the_product_untouched(tiny_model, scheduler):
    reqs = requests(2)
    outs = BackdropPipeline(tiny_model)(reqs, InferenceConfig(num_inference_steps=3, scheduler=scheduler))
    for r, out in zip(reqs, outs):
        keep = r.mask > 0.5
        assert np.array_equal(np.asarray(out)[keep], np.asarray(r.image)[keep])
    assert np.asarray(outs[0]).std() > 0


def test_schedulers_differ_and_unknown_ones_are_refused(tiny_model):
    pipe = BackdropPipeline(tiny_model)
    a, b = (np.asarray(pipe(requests(1), InferenceConfig(num_inference_steps=3, scheduler=s))[0])
            for s in ("ddim", "unipc"))
    assert not np.array_equal(a, b)
    with pytest.raises(InvalidParameterError, match="scheduler must be one of"):
        pipe(requests(1), InferenceConfig(num_inference_steps=3, scheduler="euler"))


def test_a_model_carries_the_scheduler_it_generates_with_when_none_is_named(tiny_model, tmp_path):
    """ModelConfig.scheduler is saved in backdrop.json: a generator made for few dpm++ steps
    runs dpm++ when a job or request names none, and the batch driver records that name."""
    from copy import deepcopy

    from backdrop import runtime
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.run import with_model_defaults
    from backdrop.models.generator import BackdropModel

    model = deepcopy(tiny_model)
    model.config.scheduler = "dpm++"
    model.save_pretrained(str(tmp_path / "m"))
    loaded = BackdropModel.from_pretrained(str(tmp_path / "m"))
    pipe = BackdropPipeline(loaded)
    run = {s: np.asarray(pipe(requests(1), InferenceConfig(num_inference_steps=3, scheduler=s))[0])
           for s in (None, "dpm++", "ddim")}
    assert np.array_equal(run[None], run["dpm++"]) and not np.array_equal(run[None], run["ddim"])
    assert pipe.scheduler_name(InferenceConfig()) == "dpm++"
    assert BackdropPipeline(tiny_model).scheduler_name(InferenceConfig()) == "ddim"  # saved before: DDIM
    info = runtime.read_model_info(str(tmp_path / "m"))
    assert info.scheduler == "dpm++"
    unnamed = BackfillConfig("c.parquet", "m", "o")
    assert unnamed.scheduler is None and with_model_defaults(unnamed, info).scheduler == "dpm++"
    named = BackfillConfig("c.parquet", "m", "o", scheduler="unipc")
    assert with_model_defaults(named, info).scheduler == "unipc"


def test_prompt_cache_follows_a_cast_model(tiny_model):
    """A cached embedding is keyed by the encoder's dtype and device: after a cast, the
    pipeline encodes again instead of failing with mismatched dtypes."""
    import copy

    model = copy.deepcopy(tiny_model)
    pipe = BackdropPipeline(model)
    pipe(requests(1), InferenceConfig(num_inference_steps=1))
    model.to(dtype=torch.float64)
    out = pipe(requests(1), InferenceConfig(num_inference_steps=1))
    assert out[0].size == requests(1)[0].image.size
    assert {key[1] for key in pipe._text_cache} == {torch.float32, torch.float64}


def test_prompt_cache_is_bounded(tiny_model, monkeypatch):
    import backdrop.pipeline as pipeline

    monkeypatch.setattr(pipeline, "TEXT_CACHE_SIZE", 3)
    pipe = BackdropPipeline(tiny_model)
    pipe.encode_text([f"prompt {i}" for i in range(5)])
    assert len(pipe._text_cache) == 3
    assert [k[-1] for k in pipe._text_cache] == ["prompt 2", "prompt 3", "prompt 4"]


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


@pytest.mark.parametrize("name", ["ddim", "dpm++", "unipc"])
def test_every_scheduler_keeps_the_models_noise_schedule(name):
    """A scheduler changes how the reverse process is integrated, never the betas the networks
    were trained with (the saved scheduler config's); DDIM is the saved scheduler itself."""
    from diffusers import DDIMScheduler

    from backdrop.models.presets import build_scheduler
    from backdrop.schedulers import make_scheduler

    saved = build_scheduler()
    made = make_scheduler(name, saved.config)
    torch.testing.assert_close(made.alphas_cumprod, saved.alphas_cumprod, rtol=0, atol=0)
    assert made.config.steps_offset == saved.config.steps_offset
    if name == "ddim":
        def public(config):
            return {k: v for k, v in dict(config).items() if not k.startswith("_")}

        assert public(made.config) == public(DDIMScheduler.from_config(saved.config).config)
