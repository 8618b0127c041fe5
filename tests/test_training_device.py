"""Training on a GPU, checked where it can be on the CPU: mixed precision (frozen networks cast,
trained weights fp32, fp16's gradient scaler), gradient checkpointing, and the front doors'
refusals. The last test runs CG then PG on CUDA itself when a GPU is there."""

import copy

import pytest
import torch

from backdrop.training.arrays import load_training_arrays
from conftest import small_catalog
from backdrop.models.generator import BackdropModel
from backdrop.training import StageConfig, StageTrainer, random_batches, train_stage

PRECISIONS = [("bf16", torch.bfloat16), ("fp16", torch.float16)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return small_catalog(tmp_path_factory, 2, 4)


@pytest.fixture(scope="module")
def data(catalog):
    return load_training_arrays(catalog["train"], 64).as_dict()


def weights(net):
    return {k: v.clone() for k, v in [*net.named_parameters(), *net.named_buffers()]}


def same(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision,dtype", PRECISIONS)
def test_mixed_precision_casts_the_frozen_networks_for_the_stage_only(data, precision, dtype):
    """The loop autocasts wherever the model is (the CPU here; the front doors allow CUDA only)."""
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    frozen = {name: net for name, net in model.networks().items() if name != "cg"}
    before = {name: weights(net) for name, net in frozen.items()}
    cfg = StageConfig("cg", max_steps=2, batch_size=2, log_every=1, mixed_precision=precision)
    trainer = StageTrainer(model, cfg)
    assert trainer.scaler.is_enabled() == (precision == "fp16")  # bf16 has fp32's range: no scaler
    assert all(p.dtype == dtype for net in frozen.values() for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in model.cg.parameters())
    assert torch.isfinite(torch.tensor(trainer.step([next(random_batches(data, 2))])["loss"]))
    with trainer.unwrapped_model():  # a mid-stage checkpoint saves the frozen weights as they were
        assert all(same(weights(net), before[name]) for name, net in frozen.items())
    assert model.unet.dtype == dtype  # ... and training goes on cast
    result = train_stage(model, random_batches(data, 2), cfg, trainer=trainer)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert all(same(weights(net), before[name]) for name, net in frozen.items())  # bit for bit
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.cg.parameters())


def test_fp16_skips_a_step_whose_gradients_overflowed(data):
    """The scaler's job: an inf gradient lowers the scale and leaves the weights alone."""
    model = BackdropModel.tiny(sorted(set(data["categories"])))
    trainer = StageTrainer(model, StageConfig("cg", batch_size=2, mixed_precision="fp16"))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)  # certain to overflow fp16
    before = weights(model.cg)
    trainer.step([next(random_batches(data, 2))])
    assert same(weights(model.cg), before) and trainer.scaler.get_scale() < 2.0 ** 60


@pytest.mark.parametrize("stage", ["cg", "pg"])
def test_gradient_checkpointing_changes_memory_not_the_result(data, monkeypatch, stage):
    import torch.utils.checkpoint

    checkpoint, calls = torch.utils.checkpoint.checkpoint, []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))

    # one model, copied: two tiny presets differ in their token ids (the BPE trainer breaks ties
    # in no fixed order), so the same prompt would not be the same input
    start = BackdropModel.tiny(sorted(set(data["categories"])))

    def run(on: bool):
        calls.clear()
        model = copy.deepcopy(start)
        cfg = StageConfig(stage, max_steps=2, batch_size=2, log_every=1, gradient_checkpointing=on, seed=5)
        result = train_stage(model, random_batches(data, 2, seed=7), cfg)
        trained = getattr(model, stage)
        assert not any(getattr(m, "gradient_checkpointing", False) for net in model.networks().values()
                       for m in net.modules())  # off again after the stage: nothing to recompute in inference
        return [h["loss"] for h in result.history], weights(trained), len(calls)

    plain_losses, plain_weights, plain_calls = run(False)
    ckpt_losses, ckpt_weights, ckpt_calls = run(True)
    assert plain_calls == 0 and ckpt_calls > 0
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5)
    assert all(torch.allclose(ckpt_weights[k], plain_weights[k], atol=1e-6) for k in plain_weights)


def test_backdrop_train_refuses_what_cannot_run(catalog, tmp_path, monkeypatch):
    from backdrop.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def refusal(*flags):
        with pytest.raises(SystemExit) as e:
            main(["train", "--catalog", catalog["train"], "--output", str(tmp_path / "gen"), *flags])
        return str(e.value.code)

    assert "sees no CUDA GPU" in refusal("--device", "cuda")
    assert "mixed precision bf16 needs a CUDA GPU" in refusal("--mixed-precision", "bf16")  # auto -> cpu
    assert "mixed precision fp16 needs a CUDA GPU" in refusal("--device", "cpu", "--mixed-precision", "fp16")
    assert "unknown stage 'cgg'" in refusal("--learning-rate", "cgg=1e-5")
    assert "learning_rate must be > 0" in refusal("--learning-rate", "cg=0")
    assert "learning rate 'cg'" in refusal("--learning-rate", "cg")
    assert not (tmp_path / "gen").exists()


def test_backdrop_train_on_the_device_asked_for(catalog, tmp_path, capsys):
    from backdrop.cli import main

    assert main(["train", "--catalog", catalog["train"], "--output", str(tmp_path / "gen"), "--stages", "vae",
                 "--steps", "vae=1", "--batch-size", "2", "--device", "cpu", "--gradient-checkpointing",
                 "--learning-rate", "vae=2e-4"]) == 0
    out = capsys.readouterr().out
    assert "training on cpu (mixed precision: no, gradient checkpointing)" in out
    assert "lr 0.0002" in out


def test_the_ray_job_refuses_mixed_precision_on_cpu_workers(capsys):
    from jobs import train as train_job

    required = ["--catalog", "c.parquet", "--storage-path", "/tmp/x"]
    with pytest.raises(SystemExit) as e:
        train_job.parse_args([*required, "--mixed-precision", "bf16"])
    assert e.value.code == 2 and "needs GPU workers (--use-gpu)" in capsys.readouterr().err
    cfg = train_job.parse_args([*required, "--mixed-precision", "fp16", "--use-gpu", "--gradient-checkpointing",
                                "--stages", "cg,pg", "--learning-rate", "pg=2e-5"])
    cg, pg = cfg.stage_config(0, rank=0), cfg.stage_config(1, rank=0)
    assert (cg.learning_rate, pg.learning_rate) == (None, 2e-5)  # cg: the preset's default, chosen on the worker
    assert pg.mixed_precision == "fp16" and pg.gradient_checkpointing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_cg_then_pg_on_cuda(data, precision):
    """The Ray worker's sequence in one process: a trainer per stage on one model."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = BackdropModel.tiny(sorted(set(data["categories"]))).to("cuda")
    before = {name: weights(net) for name, net in model.networks().items()}
    for stage in ("cg", "pg"):
        cfg = StageConfig(stage, max_steps=2, batch_size=2, log_every=1, mixed_precision=precision,
                          gradient_checkpointing=True)
        result = train_stage(model, random_batches(data, 2), cfg)
        assert result.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    for name in ("vae", "text_encoder", "unet"):
        assert same(weights(model.networks()[name]), before[name])
    assert all(p.dtype == torch.float32 for net in model.networks().values() for p in net.parameters())
