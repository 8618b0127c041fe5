"""benchmarks/quality_bar.py end to end at a tiny budget (so the long runs cannot rot), and the
training budgets and captions it relies on."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from backdrop.categories import plain_prompt
from backdrop.training import loop
from backdrop.training.loop import CATEGORY_CAPTION, base_caption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(ROOT, "checkpoints", "tiny-64")
# The smallest run the script allows: 2 categories, 1 style seed, 1-2 steps per stage, 2 DDIM steps.
TINY = ["--categories", "2", "--train-per-category", "4", "--heldout-per-category", "2",
        "--pairs-per-category", "1", "--batch-size", "4", "--cg-steps", "2", "--curve-steps", "1,2",
        "--pg-steps", "1", "--eval-steps", "2", "--per-category", "1", "--pairs", "2"]


@pytest.fixture(scope="module")
def bar():
    spec = importlib.util.spec_from_file_location("quality_bar", os.path.join(ROOT, "benchmarks", "quality_bar.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private MLflow store: the report's run lands here."""
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _mlflow_run(run_id: str):
    import mlflow

    from backdrop import registry

    registry.configure()
    client = mlflow.MlflowClient()
    return client, client.get_run(run_id)


def test_adapt_mode_end_to_end(bar, home):
    results_dir = home / "results"
    assert bar.main(["--mode", "adapt", "--init", CHECKPOINT, "--style-seeds", "11", "--workdir",
                     str(home / "work"), "--results-dir", str(results_dir), "--catalog-resolution", "96",
                     "--adapt-base-steps", "1", *TINY]) == 0
    # a user's catalog is larger than the model: written at 96 px, trained and evaluated at 64
    from PIL import Image

    image = next((home / "work" / "style-11" / "catalog" / "images" / "train").iterdir())
    assert Image.open(image).size == (96, 96)
    report = json.loads((results_dir / "quality-64px-adapt.json").read_text())
    assert report["catalogs"] == ["style-11"] and report["init"] == CHECKPOINT
    curve = report["per_catalog"]["style-11"]["curve"]
    assert [c["cg_steps"] for c in curve] == [1, 2]  # cumulative steps, one point each
    for c, point in zip(curve, report["points"]):
        # one seed: each curve point is the report's mean (a 1-step model has no quality to
        # floor; the shipped checkpoint's floor is tests/test_quality_floor.py)
        assert point["consistency_mean"] == c["category_consistency"] and c["cg_minutes"] > 0
        assert point["pattern_mean"] == c["pattern_consistency"]
        assert c["pattern_ratio"] == c["pattern_consistency"] / c["real_pattern_consistency"]
        assert os.path.isdir(c["checkpoint"])
    assert [p["cg_steps"] for p in report["points"]] == [1, 2]
    assert report["points"][-1]["consistency_std"] == 0.0  # one seed: no spread
    assert report["cg_steps_per_s"] > 0
    pg = report["per_catalog"]["style-11"]["pg"]
    assert pg["pg_steps"] == 1 and pg["product_bit_identical"] is True
    base = report["per_catalog"]["style-11"]["base"]  # the base refit on the catalog before CG
    assert base["steps"] == 1 and base["caption"] == "A photo of {category}"
    # The adapted model kept the shipped categories and appended the catalog's new ones.
    saved = json.loads(open(os.path.join(curve[-1]["checkpoint"], "backdrop.json")).read())["categories"]["ids"]
    assert {"mug", "s11c0-scene", "s11c1-texture"} <= set(saved) and saved["mug"] == 2
    # A gallery per style seed, next to the report and in the MLflow run.
    assert (results_dir / "quality-64px-adapt-style-11.png").is_file()
    text = (results_dir / "quality-64px-adapt.md").read_text()
    assert "CG steps/s" in text and "| 1 |" in text and "### style-11" in text and "pattern / truth" in text
    assert "the base refit on the catalog for 1 steps" in text
    client, run = _mlflow_run(report["mlflow_run_id"])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "galleries")}
    assert "galleries/quality-64px-adapt-style-11.png" in names
    assert run.data.metrics["cg_steps_per_s"] > 0


def test_scratch_and_table1_modes_end_to_end(bar, home):
    """From nothing at 32 px (steps only), then the Table-1 revisit from that base."""
    work, results_dir = home / "work", home / "results"
    common = ["--resolution", "32", "--results-dir", str(results_dir), *TINY]
    assert bar.main(["--workdir", str(work), "--steps", "vae=2,base=2", *common]) == 0
    scratch = json.loads((results_dir / "quality-32px.json").read_text())
    assert scratch["base"]["vae"]["steps"] == 2 and scratch["base"]["base"]["steps"] == 2
    assert [c["cg_steps"] for c in scratch["curve"]] == [1, 2]
    assert scratch["plain_controlnet"]["cg_steps"] == 2  # the baseline at equal steps
    assert scratch["pg"]["pg_steps"] == 1
    assert (results_dir / "quality-32px-cg.png").is_file() and (results_dir / "quality-32px-plain-controlnet.png").is_file()

    assert bar.main(["--mode", "table1", "--init", str(work / "base"), "--style-seeds", "12", "--steps", "base=2",
                     "--workdir", str(home / "t1"), *common]) == 0
    t1 = json.loads((results_dir / "quality-32px-table1.json").read_text())
    assert [(r["base"].split()[0], r["model"].split()[0]) for r in t1["rows"]] == [
        ("generic", "CG"), ("generic", "plain"), ("category", "CG"), ("category", "plain")]
    assert {r["cg_steps"] for r in t1["rows"]} == {2} and {r["base_steps"] for r in t1["rows"]} == {2}
    for r in t1["rows"]:
        assert 0.0 <= r["product_leak"] and os.path.isfile(r["grid"])
    assert len(list(results_dir.glob("quality-32px-table1-*.png"))) == 4


def test_budgets_in_steps_and_minutes(bar):
    args = bar.parse(["--cg-steps", "1500"])
    assert [b.steps for b in bar.curve_budgets(args)] == [375, 750, 1125, 1500]
    args = bar.parse(["--curve-steps", "10,20"])
    assert [b.steps for b in bar.curve_budgets(args)] == [10, 20]
    args = bar.parse(["--curve-minutes", "3,6"])
    assert [b.minutes for b in bar.curve_budgets(args)] == [3.0, 6.0]
    args = bar.parse(["--steps", "vae=7", "--minutes", "base=2"])
    assert bar.stage_budget(args, "vae").steps == 7 and bar.stage_budget(args, "base").minutes == 2.0
    with pytest.raises(ValueError):
        bar.Budget()


def test_category_caption_is_the_plain_controlnet_prompt():
    assert base_caption(CATEGORY_CAPTION, "Mug  Warmer") == plain_prompt("Mug  Warmer") == "A photo of mug warmer"
    assert base_caption("a photo", "mug") == "a photo"


def test_a_step_budget_is_not_cut_by_the_default_minutes():
    """`backdrop train --steps vae=N,base=M` trains N and M steps on a slow machine too: the
    default minutes only stand in for a stage given no budget."""
    assert loop.stage_budgets(("vae", "base", "cg"), None, {"vae": 7, "base": 9}) == {
        "vae": (7, None), "base": (9, None), "cg": (100_000, loop.DEFAULT_MINUTES["cg"])}
    assert loop.stage_budgets(("vae",), {"vae": 2.0}, {"vae": 7}) == {"vae": (7, 2.0)}  # whichever ends first
    assert loop.stage_budgets(("pg",), {}, None) == {"pg": (100_000, None)}
