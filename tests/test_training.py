"""The single-process stage loop: what each stage trains, that it learns, budgets, save/extend."""

import os

import numpy as np
import pytest
import torch

from backdrop.training.arrays import load_training_arrays
from conftest import small_catalog
from backdrop.models.generator import BackdropModel
from backdrop.training import StageConfig, StageTrainer, random_batches, train_generator, train_stage


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(tmp_path_factory, 3, 8, 2)


@pytest.fixture(scope="module")
def data(catalog):
    return load_training_arrays(catalog["train"], 64).as_dict()


def snapshot(model):
    return {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in model.networks().items()}


def changed(before, model):
    out = set()
    for name, net in model.networks().items():
        if any(not torch.equal(before[name][k], v) for k, v in net.state_dict().items()):
            out.add(name)
    return out


@pytest.mark.parametrize("stage,expected", [("vae", {"vae"}), ("base", {"unet"}), ("cg", {"cg"}), ("pg", {"pg"})])
def test_each_stage_trains_only_its_network(data, stage, expected):
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    before = snapshot(model)
    result = train_stage(model, random_batches(data, 4), StageConfig(stage, max_steps=2, batch_size=4, log_every=1))
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert changed(before, model) == expected
    assert all(not p.requires_grad for net in model.networks().values() for p in net.parameters())


def test_vae_learns(data):
    """Reconstruction error falls clearly within a few dozen steps (the loop really optimizes)."""
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    res = train_stage(model, random_batches(data, 8), StageConfig("vae", max_steps=60, batch_size=8, log_every=10))
    first, last = res.history[0]["mse"], np.mean([h["mse"] for h in res.history[-2:]])
    assert last < 0.5 * first
    assert model.vae.config.scaling_factor != 0.18215  # calibrated to the trained latents


def test_time_budget_and_shared_stop_decision(data):
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    cfg = StageConfig("cg", max_minutes=0.0, batch_size=4)
    assert train_stage(model, random_batches(data, 4), cfg).steps == 0  # budget already spent
    votes = []
    res = train_stage(model, random_batches(data, 4), StageConfig("cg", max_steps=10, batch_size=4),
                      should_stop=lambda local: votes.append(local) or len(votes) > 3)
    assert res.steps == 3  # a peer's "stop" wins over this worker's "go on"


def test_continuing_a_trainer_keeps_steps_and_optimizer(data):
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    cfg = StageConfig("cg", max_steps=2, batch_size=4)
    trainer = StageTrainer(model, cfg)
    train_stage(model, random_batches(data, 4), cfg, trainer=trainer)
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(s["step"] == 2 for s in state.values())
    more = StageConfig("cg", max_steps=4, batch_size=4)
    assert train_stage(model, random_batches(data, 4), more, trainer=trainer).steps == 4


def test_train_generator_saves_and_extends_categories(catalog, tmp_path):
    out = tmp_path / "gen"
    model, results = train_generator(catalog["train"], str(out), steps={"vae": 1, "base": 1, "cg": 1, "pg": 1},
                                     minutes={}, batch_size=4)
    assert [r.stage for r in results] == ["vae", "base", "cg", "pg"]
    loaded = BackdropModel.from_pretrained(str(out))
    assert loaded.categories.ids == model.categories.ids
    assert [h["stage"] for h in loaded.config.extra["training"]] == ["vae", "base", "cg", "pg"]
    # the QA scorer is fitted on the training catalog and saved with the weights
    assert (out / "qa" / "scorer.json").exists()
    assert sorted(loaded.qa_state["classifier"]["names"]) == sorted(model.categories.names)
    # continuing with a catalog that has a new category appends an id, never renumbers
    loaded.categories.add("zebra-lamp")
    loaded.save_pretrained(str(out))
    again, _ = train_generator(catalog["train"], None, stages=("cg",), steps={"cg": 1}, minutes={},
                               init=str(out), batch_size=4)
    assert again.categories.ids == {**model.categories.ids, "zebra-lamp": len(model.categories)}


def test_only_category_stages_append_the_catalogs_categories(catalog, data, tmp_path):
    """A base refit on the broad prior ("prior" rows) must not ship "prior" as a category."""
    first = sorted(set(data["categories"]))[0]
    BackdropModel.tiny([first]).save_pretrained(str(tmp_path / "one"))
    base, _ = train_generator(catalog["train"], None, stages=("base",), steps={"base": 1}, minutes={},
                              init=str(tmp_path / "one"), batch_size=4)
    assert base.categories.names == [first]
    cg, _ = train_generator(catalog["train"], None, stages=("cg",), steps={"cg": 1}, minutes={},
                            init=str(tmp_path / "one"), batch_size=4)
    assert cg.categories.names == [first] + [c for c in sorted(set(data["categories"])) if c != first]


def test_plain_controlnet_baseline_variant(data, tmp_path):
    base = BackdropModel.tiny(sorted(set(data["categories"])))
    plain = base.with_fresh_generators("plain")
    assert not plain.mask_guided
    train_stage(plain, random_batches(data, 4), StageConfig("cg", max_steps=1, batch_size=4))
    plain.save_pretrained(str(tmp_path / "plain"))
    assert BackdropModel.from_pretrained(str(tmp_path / "plain")).config.cg_variant == "plain"


@pytest.mark.parametrize("sampling", ["importance", "uniform"])
def test_timestep_sampling_estimates_the_same_weighted_loss(sampling):
    """Both samplers are unbiased for E_t~U[w(t) L(t)]; importance puts the batch at high noise."""
    from diffusers import DDIMScheduler

    from backdrop.training.loop import TimestepSampler, loss_weights

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cfg = StageConfig("cg", timestep_sampling=sampling)
    every_t = torch.arange(scheduler.config.num_train_timesteps)
    per_t_loss = torch.cos(every_t / 300.0) + 2  # any loss curve over t
    exact = (loss_weights(scheduler, every_t, cfg) * per_t_loss).mean()
    t, w = TimestepSampler(scheduler, cfg)(200_000, torch.Generator().manual_seed(0))
    estimate = (w * per_t_loss[t]).mean()
    assert abs(float(estimate / exact) - 1) < 0.01
    share_high = float((t >= 800).float().mean())
    assert share_high > 0.7 if sampling == "importance" else abs(share_high - 0.2) < 0.01


def test_unknown_timestep_sampling_is_refused():
    with pytest.raises(ValueError, match="timestep_sampling"):
        StageConfig("cg", timestep_sampling="sometimes")


def test_default_learning_rate_follows_the_model_preset(data, caplog):
    """SD-size networks are pretrained: the tiny preset's from-nothing rates would wreck them."""
    from backdrop.training.loop import DEFAULT_LR

    model = BackdropModel.tiny(sorted(set(data["categories"])))
    with caplog.at_level("INFO", logger="backdrop.training.loop"):
        tiny = StageTrainer(model, StageConfig("cg"))
        model.config.preset = "sd-inpainting"
        sd = StageTrainer(model, StageConfig("cg"))
        given = StageTrainer(model, StageConfig("pg", learning_rate=3e-5))
    assert tiny.learning_rate == DEFAULT_LR["tiny"]["cg"] == 1e-3
    assert sd.learning_rate == DEFAULT_LR["sd-inpainting"]["cg"] == 1e-5
    assert given.learning_rate == 3e-5
    assert [t.optimizer.param_groups[0]["lr"] for t in (tiny, sd, given)] == [1e-3, 1e-5, 3e-5]
    said = caplog.text
    assert "cg: learning rate 0.001 (the tiny preset's default)" in said
    assert "cg: learning rate 1e-05 (the sd-inpainting preset's default)" in said
    assert "pg: learning rate 3e-05 (given)" in said
    model.config.preset = "sdxl"
    with pytest.raises(ValueError, match="no default learning rate for preset 'sdxl'"):
        StageTrainer(model, StageConfig("cg"))


def test_the_learning_rate_used_is_logged_and_saved(catalog):
    model, results = train_generator(catalog["train"], None, stages=("vae",), steps={"vae": 1}, minutes={},
                                     batch_size=4, stage_options={"vae": {"learning_rate": 2e-4}})
    assert results[0].learning_rate == 2e-4 and results[0].history[0]["lr"] == 2e-4
    assert model.config.extra["training"][-1]["learning_rate"] == 2e-4
    with pytest.raises(ValueError, match="unknown stage"):
        train_generator(catalog["train"], None, stages=("cg",), stage_options={"cgg": {"learning_rate": 1e-5}})


def test_a_cosine_schedule_decays_to_zero_over_the_budget_and_is_logged(catalog):
    from backdrop.training.loop import options_by_stage

    cfg = StageConfig("cg", max_steps=100, lr_schedule="cosine")
    assert [round(cfg.lr_factor(s, 0.0), 3) for s in (0, 50, 100, 150)] == [1.0, 0.5, 0.0, 0.0]
    assert StageConfig("cg", max_steps=100, lr_schedule="cosine", lr_horizon=200).lr_factor(100, 0.0) == \
        pytest.approx(0.5)  # a checkpoint halfway along a longer run's schedule
    by_time = StageConfig("cg", max_steps=10**9, max_minutes=2.0, lr_schedule="cosine")
    assert by_time.lr_factor(7, 60.0) == pytest.approx(0.5)  # a minutes budget: by the clock
    minutes_only = StageConfig("cg", max_minutes=2.0, lr_schedule="cosine")  # max_steps left at its default
    assert minutes_only.lr_factor(7, 60.0) == pytest.approx(0.5)  # the clock runs out first, so it rules
    assert StageConfig("cg", max_steps=100).lr_factor(99, 0.0) == 1.0  # constant
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        options_by_stage(lr_schedule={"cg": "linear"})
    with pytest.raises(ValueError, match="unknown loss_weighting"):
        options_by_stage(loss_weighting={"cg": "snr"})

    options = options_by_stage(learning_rate={"vae": 1e-3}, lr_schedule={"vae": "cosine"})
    assert options == {"vae": {"learning_rate": 1e-3, "lr_schedule": "cosine"}}
    _, results = train_generator(catalog["train"], None, stages=("vae",), steps={"vae": 4}, minutes={},
                                 batch_size=2, stage_options=options)
    assert results[0].learning_rate == 1e-3  # the base rate
    assert results[0].history[0]["lr"] == pytest.approx(1e-3)  # step 1 ran at the full rate


def test_a_stage_after_another_ignores_where_the_schedule_moved(data):
    """CG then PG in one process crashed on CUDA: CG's add_noise moved the model's
    ``alphas_cumprod`` to the GPU, and PG's timestep sampler, built from it, met its CPU
    generator. The meta device stands in for the GPU on any machine."""
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    train_stage(model, random_batches(data, 2), StageConfig("cg", max_steps=1, batch_size=2))
    model.scheduler.alphas_cumprod = model.scheduler.alphas_cumprod.to("meta")  # what a CUDA step leaves
    trainer = StageTrainer(model, StageConfig("pg", max_steps=1, batch_size=2, log_every=1))
    assert trainer.timesteps.weights.device.type == "cpu"
    result = train_stage(model, random_batches(data, 2), trainer.cfg, trainer=trainer)
    assert result.steps == 1 and np.isfinite(result.final_loss)
    assert model.scheduler.alphas_cumprod.device.type == "meta"  # training leaves the model's schedule alone


def test_a_pg_step_encodes_no_reference_latents(data, monkeypatch):
    """The loss never reads the references' latents (they only start inference's z_T)."""
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    encoded = []
    encode = model.vae.encode
    monkeypatch.setattr(model.vae, "encode", lambda x, *a, **k: encoded.append(len(x)) or encode(x, *a, **k))
    trainer = StageTrainer(model, StageConfig("pg", batch_size=2))
    trainer.step([next(random_batches(data, 2))])
    assert encoded == [2, 2]  # the masked product (UNet input) and the target; nothing else


# --- the prepared catalog: streamed to disk once, latents once per VAE ------------------------------

def test_prepared_catalog_streams_rows_to_disk_once_and_leaves_out_bad_rows(catalog, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backdrop.catalog import read_catalog
    from backdrop.training import prepared
    from backdrop.training.prepared import PreparedCatalog

    rows = read_catalog(catalog["train"]).to_pylist()
    rows.insert(3, {**rows[0], "product_id": "broken", "image_uri": str(tmp_path / "missing.png")})
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    made = PreparedCatalog.prepare(str(path), 64, str(tmp_path / "cache"), chunk_rows=5)
    assert made.rows == len(rows) - 1 and "broken" in made.skipped
    assert made.images.shape == (made.rows, 3, 64, 64) and made.masks.shape == (made.rows, 1, 64, 64)
    assert isinstance(made.images, np.memmap)  # read from disk, not held in memory
    expected = load_training_arrays(str(path), 64)
    assert made.product_ids == expected.product_ids
    assert np.array_equal(made.images, expected.images.numpy()) and np.array_equal(made.masks, expected.masks.numpy())

    def no_fetch(*_a, **_k):
        raise AssertionError("a prepared catalog is not decoded again")

    monkeypatch.setattr(prepared, "fetch_pair", no_fetch)
    again = PreparedCatalog.prepare(str(path), 64, str(tmp_path / "cache"))
    assert again.root == made.root and again.rows == made.rows


def test_cached_latents_give_the_loss_of_live_encoding(catalog, tmp_path):
    """CG and PG read latents encoded once per VAE; a step's loss is the live-encoding loss
    (to fp16 rounding), and a changed VAE gets latents of its own."""
    from backdrop.pipeline import BackdropPipeline
    from backdrop.training.prepared import PreparedCatalog, vae_key

    model = BackdropModel.tiny(["c0", "c1", "c2"])
    model.categories.extend(sorted(set(load_training_arrays(catalog["train"], 64).categories)))
    data = PreparedCatalog.prepare(catalog["train"], 64, str(tmp_path / "cache"))
    latents = data.latents(BackdropPipeline(model))
    assert latents[0].dtype == np.float16 and len(latents[0]) == data.rows
    for stage in ("cg", "pg"):
        cached = next(data.batches(4, seed=1, latents=latents))
        live = {k: v for k, v in cached.items() if k not in ("latents", "masked_latents")}
        wrong = {**cached, "latents": cached["latents"].roll(1, 0),  # other rows' latents
                 "masked_latents": cached["masked_latents"].roll(1, 0)}
        losses = []
        for batch in (cached, live, wrong):
            trainer = StageTrainer(model, StageConfig(stage, seed=3))
            with torch.no_grad():
                losses.append(float(trainer.loss(batch)[0]))
        assert losses[0] == pytest.approx(losses[1], rel=1e-5), stage
        assert losses[2] != pytest.approx(losses[1], rel=1e-6), stage  # the trainer reads them
    with torch.no_grad():  # and they are the rows' own latents
        pipe = BackdropPipeline(model)
        x = torch.from_numpy(np.asarray(data.images[:4])).float().div(255)
        m = torch.from_numpy(np.asarray(data.masks[:4])).float()
        for cached_latents, live_latents in ((latents[0][:4], pipe.encode_images(x)),
                                             (latents[1][:4], pipe.encode_images(x * m))):
            torch.testing.assert_close(torch.from_numpy(np.asarray(cached_latents)).float(), live_latents,
                                       atol=2e-3, rtol=2e-3)
    key = vae_key(model.vae)
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.add_(1.0)  # the decoder alone: the encoder's latents are the same ...
    assert vae_key(model.vae) != key  # ... but a VAE that changed at all is another VAE


def test_backdrop_train_is_tracked_and_can_register(catalog, tmp_path, monkeypatch):
    """The README's documented adaptation (`backdrop train --init ...`) logs one MLflow run: the
    resolved config, a loss curve per stage with steps/s, the model with its lineage, and with
    --register a registry version."""
    import mlflow

    from backdrop import cli, registry

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    checkpoint = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "tiny-64")
    assert cli.main(["train", "--catalog", catalog["train"], "--init", checkpoint, "--stages", "cg",
                     "--steps", "cg=3", "--batch-size", "2", "--output", str(tmp_path / "model"),
                     "--register", "adapted", "--run-name", "adapt-test"]) == 0
    registry.configure()
    client = mlflow.MlflowClient()
    run = client.search_runs([registry.ensure_experiment()], "attributes.run_name = 'adapt-test'")[0]
    assert run.data.params["steps"] == "{'cg': 3}" and run.data.params["init"] == checkpoint
    assert [m.step for m in client.get_metric_history(run.info.run_id, "cg/loss")] == [1]  # step 1, then every 25th
    assert run.data.metrics["cg/steps_per_s"] > 0
    assert run.data.tags["data_fingerprint"] and run.data.tags["init"] == checkpoint
    assert registry.describe_registered("adapted")["versions"] == ["1"]
    recipe = client.download_artifacts(run.info.run_id, "recipe.yaml", str(tmp_path))
    assert "steps:\n  cg: 3\n" in open(recipe).read() and "register: adapted" in open(recipe).read()
