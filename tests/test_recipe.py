"""Training recipes (issue #23): YAML over one dataclass, flags generated from it, key=value on top."""

from __future__ import annotations

import argparse
import glob
import os

import pytest

from backdrop.training import recipe as recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*argv: str) -> recipes.TrainRecipe:
    parser = argparse.ArgumentParser()
    recipes.add_arguments(parser)
    return recipes.resolve(parser.parse_args(list(argv)))


def test_defaults_then_file_then_flags_then_key_value(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("catalog: a.parquet\noutput: out\nstages: [cg, pg]\nsteps: {cg: 10, pg: 5}\nbatch_size: 8\n")
    r = _parse("--config", str(path))
    assert (r.catalog, r.stages, r.steps, r.batch_size, r.resolution) == ("a.parquet", ["cg", "pg"],
                                                                           {"cg": 10, "pg": 5}, 8, 64)
    r = _parse("--config", str(path), "--steps", "cg=20", "--batch-size", "4")
    assert (r.steps, r.batch_size) == ({"cg": 20, "pg": 5}, 4)  # dicts merge key by key
    r = _parse("--config", str(path), "--batch-size", "4", "batch_size=2", "steps.pg=7", "init=ckpt")
    assert (r.batch_size, r.steps, r.init) == (2, {"cg": 10, "pg": 7}, "ckpt")
    # the flags alone, as before recipes existed
    r = _parse("--catalog", "c.parquet", "--output", "o", "--stages", "vae,base", "--minutes", "vae=5,base=4",
               "--gradient-checkpointing")
    assert (r.stages, r.minutes, r.gradient_checkpointing, r.steps) == (["vae", "base"], {"vae": 5.0, "base": 4.0},
                                                                        True, {})


@pytest.mark.parametrize("argv, says", [
    ((), "needs catalog and output"),
    (("catalog=c", "output=o", "batch_szie=3"), "batch_szie"),  # a typo is refused, never ignored
    (("catalog=c", "output=o", "batch_size=many"), "batch_size"),
    (("catalog=c", "output=o", "stages=[cg,cgg]"), "unknown stage(s) ['cgg']"),
    (("catalog=c", "output=o", "steps.cgg=3"), "steps: unknown stage(s) ['cgg']"),
    (("catalog=c", "output=o", "device=tpu"), "device: 'tpu' is not one of auto, cpu, cuda"),
    (("catalog=c", "output=o", "--steps", "cg"), "steps 'cg': expected KEY=VALUE"),
    (("catalog=c", "output=o", "steps"), "expected key=value"),
    (("catalog=c", "output=o", "--lr-schedule", "cg=linear"), "unknown lr_schedule 'linear'"),
    (("catalog=c", "output=o", "loss_weighting.cgg=none"), "unknown stage 'cgg'"),
])
def test_a_bad_recipe_is_refused_in_words(argv, says):
    with pytest.raises(ValueError) as e:
        _parse(*argv)
    assert says in str(e.value)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_recipe_resolves(path):
    r = _parse("--config", path, "catalog=c.parquet", "output=o")  # adapt.yaml leaves both to the user
    assert r.stages and set(r.steps) <= set(r.stages) and r.run_name
    assert recipes.load(None, None, [f"{k}={v}" for k, v in [("catalog", "c"), ("output", "o")]]).stages == \
        ["vae", "base", "cg", "pg"]
    assert "stages:" in recipes.to_yaml(r)


def test_the_recipes_are_the_commands_the_readme_and_makefile_run():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "backdrop train --config recipes/tiny-64-prior.yaml" in makefile
    assert "backdrop train --config recipes/tiny-64-demo.yaml" in makefile
    assert "backdrop train --config recipes/adapt.yaml" in readme
    adapt = _parse("--config", os.path.join(REPO, "recipes", "adapt.yaml"), "catalog=c", "output=o")
    assert (adapt.init, adapt.stages, adapt.steps) == ("checkpoints/tiny-64", ["base", "cg", "pg"],
                                                       {"base": 2000, "cg": 1500, "pg": 300})
    assert adapt.stage_options() == {"base": {"loss_weighting": "none", "base_caption": "A photo of {category}"},
                                     "cg": {"loss_weighting": "none"}}


def test_the_ray_train_job_takes_the_same_recipe_plus_the_clusters_knobs():
    import sys

    sys.path.insert(0, REPO)
    try:
        from jobs.train import parse_args
    finally:
        sys.path.remove(REPO)
    cfg = parse_args(["--config", os.path.join(REPO, "recipes", "adapt.yaml"), "--cpus-per-worker", "0.5",
                      "catalog=c.parquet", "storage_path=/tmp/ckpt", "num_workers=3", "register="])
    assert (cfg.stages, cfg.steps, cfg.num_workers, cfg.cpus_per_worker) == (
        ("base", "cg", "pg"), {"base": 2000, "cg": 1500, "pg": 300}, 3, 0.5)
    assert cfg.init.endswith("checkpoints/tiny-64") and cfg.registered_model_name is None and cfg.name == "adapt"
    cfg = parse_args(["--config", os.path.join(REPO, "recipes", "adapt.yaml"), "catalog=c.parquet",
                      "storage_path=/tmp/ckpt", "lr_schedule.cg=cosine", "loss_weighting.pg=none"])
    base, cg, pg = (cfg.stage_config(i, 0) for i in range(3))  # per-stage options reach Ray Train's stages
    assert (base.base_caption, base.loss_weighting) == ("A photo of {category}", "none")
    assert (cg.lr_schedule, cg.loss_weighting, pg.lr_schedule, pg.loss_weighting) == \
        ("cosine", "none", "constant", "none")
    parser = argparse.ArgumentParser()
    recipes.add_arguments(parser, recipes.DistributedRecipe)
    with pytest.raises(ValueError, match="keeps the model in its checkpoints"):
        recipes.resolve(parser.parse_args(["catalog=c", "storage_path=s", "output=o"]), recipes.DistributedRecipe)


# --------------------------------------------------------------------------- generation jobs
def _generation_config(*argv: str, **base):
    from backdrop.batch.args import add_generation_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_generation_arguments(parser, **base)
    return config_from_args(parser.parse_args(list(argv)))


def test_generation_defaults_are_declared_once_in_the_config_dataclass():
    """No flag declares a default: parsing only the required fields gives the dataclass's."""
    from backdrop.batch.config import BackfillConfig

    assert _generation_config("--catalog", "c", "--model", "m", "--output", "o") == BackfillConfig("c", "m", "o")
    nightly = _generation_config("--catalog", "c", "--output", "o", model="models:/backdrop@champion")
    assert nightly.model == "models:/backdrop@champion"


def test_a_generation_config_file_under_flags_and_key_value(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text('model: models:/x@champion\nsteps: 20\nplacements: ["1:1", "16:9"]\ncategories: [mug]\n'
                    'limits: {max_steps: 30}\n')
    c = _generation_config("--config", str(path), "--catalog", "c", "--output", "o")
    assert (c.model, c.steps, c.placements, c.categories, c.limits.max_steps) == \
        ("models:/x@champion", 20, ("1:1", "16:9"), ("mug",), 30)
    c = _generation_config("--config", str(path), "--catalog", "c", "--output", "o", "--steps", "10", "--model", "m",
                           "--placements", "4:5", "guidance=3.5", "steps=12")
    assert (c.model, c.steps, c.placements, c.guidance) == ("m", 12, ("4:5",), 3.5)
    # a front door's own default (nightly's champion) is below the file
    assert _generation_config("--config", str(path), "--catalog", "c", "--output", "o", model="dflt").model == \
        "models:/x@champion"


@pytest.mark.parametrize("argv, message", [
    (["--catalog", "c", "--output", "o"], "needs model"),
    (["--catalog", "c", "--output", "o", "--model", "m", "stepz=3"], "stepz"),
    (["--catalog", "c", "--output", "o", "--model", "m", "steps=many"], "steps"),
    (["--catalog", "c", "--output", "o", "--model", "m", "steps=500"], "steps must be an integer in 1..100"),
    (["--catalog", "c", "--output", "o", "--model", "m", "placements=[1:1]"], "quote it"),
    (["--config", "/nonexistent/b.yaml"], "no such file"),
])
def test_a_bad_generation_config_is_refused_naming_what(argv, message):
    from backdrop.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=message):
        _generation_config(*argv)


@pytest.mark.parametrize("name", ["backfill", "nightly"])
def test_the_shipped_generation_recipes_load(name):
    c = _generation_config("--config", os.path.join(REPO, "recipes", "generate", f"{name}.yaml"), "--catalog", "c",
                           "--output", "o")
    assert c.model == "models:/backdrop@champion" and c.placements == ("1:1", "4:5", "16:9")


def test_a_bad_config_ends_a_job_with_its_reason_before_anything_starts(capsys):
    from jobs import catalog_backfill

    assert catalog_backfill.main(["--catalog", "c", "--output", "o", "--model", "m", "stepz=3"]) == 2
    assert "Key 'stepz' not in 'BackfillConfig'" in capsys.readouterr().err


# --------------------------------------------------------------------------- evaluation and benchmarks
def test_the_evaluate_job_takes_a_config_file_flags_and_key_value(tmp_path):
    from backdrop import config_files
    from backdrop.quality.evaluation import EvaluateJob

    parser = argparse.ArgumentParser()
    config_files.add_arguments(parser, EvaluateJob)
    args = parser.parse_args(["--config", os.path.join(REPO, "recipes", "evaluate", "held-out.yaml"),
                              "--model", "m", "--no-references", "catalog_dir=c", "per_category=3"])
    job = config_files.resolve(args, EvaluateJob)
    assert (job.model, job.catalog_dir, job.references, job.per_category, job.steps, job.mlflow) == \
        ("m", "c", False, 3, 20, True)
    from jobs import evaluate  # the job itself runs in test_registry.py

    with pytest.raises(SystemExit):
        evaluate.main(["--model", "m"])  # no catalog_dir: argparse's error, naming it


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "benchmarks", "*.yaml"))
                                if f"quality_bar.py --config recipes/benchmarks/{os.path.basename(p)}" in open(p).read()),
                         ids=os.path.basename)  # the recipes whose own header runs them with quality_bar.py
def test_every_quality_bar_recipe_resolves(path):  # every script's: test_benchmark_recipes.py
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("quality_bar", os.path.join(REPO, "benchmarks", "quality_bar.py"))
    bar = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bar)
    recipe = bar.parse(["--config", path, "cg_steps=12"])
    assert recipe.mode == "adapt" and recipe.cg_steps == 12
