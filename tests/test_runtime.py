"""The runtime as an inference-only image uses it: no tracking library, quiet loads, and the
same pixels whichever path (a batch, a one-by-one retry) made a row."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backdrop import runtime
from backdrop.errors import Failure, InvalidParameterError, RegistryError
from backdrop.limits import Limits
from backdrop.pipeline import GenerationRequest, InferenceConfig

ROOT = Path(__file__).resolve().parents[1]


def test_a_saved_path_generates_without_mlflow_and_loads_quietly(tmp_path):
    """In a fresh interpreter: load the shipped checkpoint by path, generate one image; MLflow
    (and the registry module) are never imported, and no diffusers cast warning is printed."""
    script = """
import sys, numpy as np
from PIL import Image
from backdrop import runtime
from backdrop.pipeline import GenerationRequest
gen = runtime.load(sys.argv[1], "cpu")
mask = np.zeros((64, 64), np.float32); mask[20:40, 20:40] = 1
out = runtime.generate(gen, [GenerationRequest(Image.new("RGB", (64, 64), (200, 30, 30)), mask,
                                               gen.categories.names[0])], runtime.inference(2))
assert out[0].size == (64, 64), out
print("mlflow" in sys.modules, "backdrop.registry" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "checkpoints" / "tiny-64")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
    assert "should be kept in float32" not in done.stderr


def test_a_missing_path_is_an_unknown_model(tmp_path):
    with pytest.raises(RegistryError, match="no saved generator"):
        runtime.load(str(tmp_path / "nothing"), "cpu")


def test_scheduler_is_checked_against_the_limits():
    assert runtime.inference(10, 2.0).scheduler is None  # none named: the model's own (pipeline.scheduler_name)
    assert runtime.inference(10, 2.0, scheduler="DPM++").scheduler == "dpm++"
    with pytest.raises(InvalidParameterError, match="scheduler must be one of ddim, unipc"):
        runtime.inference(10, 2.0, Limits(schedulers=("ddim", "unipc")), scheduler="dpm++")
    with pytest.raises(ValueError, match="schedulers must name some of"):
        Limits(schedulers=("euler",))


def test_one_by_one_retry_makes_the_same_pixels(tiny_model, monkeypatch):
    """A batch that fails as a whole is retried request by request; the survivors' pixels are
    the ones the batch would have made (the retry is one of the paths a row can take)."""
    gen = runtime.wrap(tiny_model)
    rng = np.random.default_rng(0)
    from PIL import Image

    def req(i, category="mug"):
        mask = np.zeros((64, 64), np.float32)
        mask[10:30, 12:40] = 1
        return GenerationRequest(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)), mask, category,
                                 seed=i)

    good = [req(i) for i in range(3)]
    config = InferenceConfig(num_inference_steps=2)
    together = runtime.generate(gen, good, config)
    retried = runtime.generate(gen, good[:2] + [req(9, category="no-such-category")] + good[2:], config)
    assert isinstance(retried[2], Failure)
    for a, b in zip(together, retried[:2] + retried[3:]):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_scoring_error_fails_that_candidate_only(tiny_model):
    """Best-of-N: a scorer that raises on one request's candidates fails that request (stage
    qa, its reason kept), and its batch mates are scored and kept as usual."""
    from PIL import Image

    gen = runtime.wrap(tiny_model)
    mask = np.zeros((64, 64), np.float32)
    mask[10:30, 12:40] = 1
    requests = [GenerationRequest(Image.new("RGB", (64, 64), (30 * i, 90, 160)), mask, "mug", seed=i)
                for i in range(3)]

    def scorer(request, image):
        if request.seed == 1:
            raise ValueError("no background pixels to describe")
        return {"qa_score": float(np.asarray(image).mean()) / 255}

    out = runtime.generate_best(gen, requests, InferenceConfig(num_inference_steps=1), 2, scorer)
    assert isinstance(out[1], Failure) and (out[1].stage, out[1].code) == ("qa", "qa_error")
    assert "no background pixels" in out[1].message
    assert all(isinstance(out[i], runtime.Generated) and out[i].qa_passed is not None for i in (0, 2))
