"""The model-family seam (models.families), proved with a second family: a tiny SDXL-shaped
preset (two text encoders, a pooled embedding and size micro-conditioning passed as the UNet's
``added_cond_kwargs``), trained from nothing with `backdrop train`, saved and loaded, and then
backfilled through the same runtime and batch stages as the SD family. Serving it over HTTP is
in test_serve.py (a registered version picked by header)."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from backdrop.models.families import FAMILIES, SDXLInpainting, detect
from backdrop.models.generator import BackdropModel
from backdrop.pipeline import BackdropPipeline, GenerationRequest, InferenceConfig
from conftest import small_catalog

SDXL = SDXLInpainting.name


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(tmp_path_factory, 2, 4, 1)


@pytest.fixture(scope="module")
def trained(catalog, tmp_path_factory):
    """`backdrop train --family sdxl-inpainting`: every stage, a few steps, from nothing."""
    from backdrop import cli

    out = str(tmp_path_factory.mktemp("sdxl") / "model")
    assert cli.main(["train", "--catalog", catalog["train"], "--family", SDXL, "--stages", "vae,base,cg,pg",
                     "--steps", "vae=2,base=2,cg=2,pg=2", "--batch-size", "2", "--output", out,
                     "--run-name", "sdxl-family-test"]) == 0
    return out


def _request(category: str, seed: int = 3, reference=None) -> GenerationRequest:
    from PIL import Image

    rng = np.random.default_rng(seed)
    mask = np.zeros((64, 64), np.float32)
    mask[20:44, 24:40] = 1
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return GenerationRequest(image=image, mask=mask, category=category, seed=seed, reference=reference)


def test_the_trained_family_saves_its_second_encoder_and_loads_as_itself(trained, catalog):
    assert {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "cg", "pg"} <= set(os.listdir(trained))
    model = BackdropModel.from_pretrained(trained)
    assert model.config.family == SDXL and model.family is FAMILIES[SDXL]
    assert model.unet.config.addition_embed_type == "text_time" == model.cg.config.addition_embed_type
    assert model.unet.config.cross_attention_dim == 2 * model.text_encoder.config.hidden_size
    history = {h["stage"]: h["steps"] for h in model.config.extra["training"]}
    assert history == {"vae": 2, "base": 2, "cg": 2, "pg": 2}
    fresh = BackdropModel.tiny(model.categories.names, family_name=SDXL)
    assert not torch.equal(fresh.cg.controlnet_down_blocks[0].weight, model.cg.controlnet_down_blocks[0].weight)


def test_generation_keeps_the_product_and_uses_the_pooled_embedding(trained):
    """The added conditions reach the networks: the same request with the pooled embedding
    zeroed gives other pixels (the negative control of a seam that passes nothing)."""
    from PIL import Image

    model = BackdropModel.from_pretrained(trained)
    category = model.categories.names[0]
    reference = Image.fromarray(np.full((64, 64, 3), (200, 90, 40), np.uint8))
    requests = [_request(category), _request(category, seed=4, reference=reference)]
    pipe = BackdropPipeline(model)
    config = InferenceConfig(num_inference_steps=3)
    out = pipe(requests, config)
    for image, r in zip(out, requests):
        keep = r.mask > 0.5
        assert np.array_equal(np.asarray(image)[keep], np.asarray(r.image)[keep])

    class ZeroPooled(type(model.family)):
        def encode_prompt(self, text_components, text):
            hidden, pooled = super().encode_prompt(text_components, text)
            return hidden, torch.zeros_like(pooled)

    model.family = ZeroPooled()
    blind = BackdropPipeline(model)(requests, config)
    assert not np.array_equal(np.asarray(blind[0]), np.asarray(out[0]))


def test_a_bare_base_is_recognised_by_its_encoders(tmp_path):
    """A bare diffusers directory (no backdrop.json) of either family loads as that family,
    with fresh CG and PG made from its UNet; a directory of neither is refused in words."""
    for name in FAMILIES:
        model = BackdropModel.tiny(["mug"], family_name=name)
        path = tmp_path / name
        model.save_pretrained(str(path))
        for generated in ("cg", "pg", "backdrop.json"):
            if (path / generated).is_dir():
                import shutil

                shutil.rmtree(path / generated)
            else:
                (path / generated).unlink()
        loaded = BackdropModel.from_pretrained(str(path))
        assert loaded.config.family == name and loaded.config.preset == "sd-inpainting"
        assert loaded.cg.config.addition_embed_type == model.unet.config.addition_embed_type
    with pytest.raises(ValueError, match="no known model family"):
        detect(lambda sub: False)
    with pytest.raises(ValueError, match="unknown model family 'flux'"):
        BackdropModel.tiny(["mug"], family_name="flux")


def test_the_family_backfills_through_the_same_stages(trained, catalog, tmp_path):
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.run import run_backfill

    config = BackfillConfig(catalog=catalog["heldout"], model=trained, output=str(tmp_path / "out"), steps=2,
                            batch_size=2, executor="local")
    result = run_backfill(config)
    rows = pq.read_table(catalog["heldout"]).num_rows
    assert result.ok == rows and result.failed == 0


def test_train_refuses_an_unknown_family_before_reading_data(tmp_path):
    from backdrop import cli

    with pytest.raises(SystemExit, match="family"):
        cli.main(["train", "--catalog", str(tmp_path / "none.parquet"), "--output", str(tmp_path / "m"),
                  "family=flux"])
