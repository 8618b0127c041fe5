"""The catalog backfill and the nightly regeneration, end to end on real Ray, S3 and MLflow.

Everything runs against real services: a local Ray instance (and a real ``ray start`` head for
``ray job submit``), the moto S3 server on loopback, and MLflow's SQLite store in a private
``BACKDROP_HOME``. The model is an untrained tiny generator: its pictures are noise, but they
go through the same code as real weights.

The module shares one catalog, one registered model (versions 1 and 2, ``champion`` -> 1) and
one in-process Ray instance; ``first_backfill`` runs once and later tests build on its output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from conftest import save_tiny_generator

CATEGORIES = ["mug", "laptop", "sunscreen"]
STEPS = 2
# product_id -> (category, expected error code) of the bad rows added to the catalog
BAD_ROWS = {
    "bad-corrupt-image": ("mug", "corrupt_image"),
    "bad-missing-mask": ("laptop", "fetch_error"),
    "bad-mask-size": ("sunscreen", "mask_size_mismatch"),
    "bad-unknown-category": ("spaceship", "unknown_category"),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private BACKDROP_HOME (MLflow store, model cache): the tests never touch ~/.backdrop."""
    path = tmp_path_factory.mktemp("backdrop-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDROP_HOME", str(path))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_generator(tmp_path_factory, CATEGORIES)


@pytest.fixture(scope="module")
def registered(home, model_dir) -> str:
    """``backdrop`` versions 1 and 2 in the private registry, ``champion`` -> 1."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from backdrop import pyfunc, registry
    from backdrop.models.generator import BackdropModel

    model = BackdropModel.from_pretrained(model_dir)
    experiment = registry.ensure_experiment("backdrop-tests")
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment):
            pyfunc.log_generator(model, registered_model_name="backdrop")
    MlflowClient().set_registered_model_alias("backdrop", "champion", "1")
    return "backdrop"


def _write_table(rows: list[dict], path: Path) -> str:
    from backdrop.catalog import GENERATION_COLUMNS

    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in GENERATION_COLUMNS}), path)
    return str(path)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory) -> dict:
    """``good``: 12 products + 3 with a reference ad (PG); ``with_bad``: those + the BAD_ROWS."""
    from backdrop.catalog import read_catalog
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog

    root = tmp_path_factory.mktemp("catalog")
    paths = make_catalog(str(root), SyntheticConfig(num_categories=3, train_per_category=0,
                                                    heldout_per_category=4, pairs_per_category=1))
    good = read_catalog(paths["heldout"]).to_pylist() + read_catalog(paths["pairs"]).to_pylist()
    mug, laptop, sunscreen = (next(r for r in good if r["category"] == c) for c in CATEGORIES)
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "bad" / "small-mask.png").write_bytes(_png(np.full((32, 32), 255, np.uint8)))
    bad = [
        {**mug, "product_id": "bad-corrupt-image", "image_uri": str(root / "bad" / "corrupt.png")},
        {**laptop, "product_id": "bad-missing-mask", "mask_uri": str(root / "bad" / "no-such-mask.png")},
        {**sunscreen, "product_id": "bad-mask-size", "mask_uri": str(root / "bad" / "small-mask.png")},
        {**mug, "product_id": "bad-unknown-category", "category": "spaceship"},
    ]
    assert [r["product_id"] for r in bad] == list(BAD_ROWS)
    return {"good": _write_table(good, root / "good.parquet"), "with_bad": _write_table(good + bad, root / "with_bad.parquet"),
            "rows": good, "bad": bad, "root": root}


@pytest.fixture(scope="module")
def ray_local(s3_server, home):
    """One private local Ray instance for the module (after the S3 and registry environment is set,
    which its workers inherit). ``address="local"`` never joins another cluster on this machine."""
    import ray

    from backdrop import cluster

    cluster.init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


def _config(catalog: str, model: str, output: str, **kw):
    from backdrop.batch.config import BackfillConfig

    return BackfillConfig(catalog=catalog, model=model, output=output, **{"steps": STEPS, "batch_size": 4, **kw})


@pytest.fixture(scope="module")
def first_backfill(ray_local, registered, catalogs, tmp_path_factory):
    from backdrop.batch.run import run_backfill

    config = _config(catalogs["with_bad"], "models:/backdrop@champion", str(tmp_path_factory.mktemp("out")),
                     max_failure_rate=0.5)
    return config, run_backfill(config)


def _manifest(output: str) -> list[dict]:
    from backdrop.batch import manifest

    return manifest.read_records(output).to_pylist()


# --------------------------------------------------------------------------- fast: no Ray


def test_manifest_keeps_the_latest_record_and_classifies_rows():
    import pandas as pd

    from backdrop.batch import manifest
    from backdrop.batch.manifest import DONE, FAILED, MODEL_CHANGED, NEW, PARAMS_CHANGED, Target

    def rec(pid, status, version="1", params="p", t="2026-01-01T00:00:00+00:00"):
        return {"product_id": pid, "category": "mug", "status": status, "model_name": "m",
                "model_version": version, "params_hash": params, "seed": 1, "created_at": t}

    records = pa.Table.from_pylist([
        rec("a", "failed", t="2026-01-01T00:00:00+00:00"), rec("a", "ok", t="2026-01-02T00:00:00+00:00"),
        rec("b", "ok", t="2026-01-02T00:00:00+00:00"), rec("b", "failed", t="2026-01-03T00:00:00+00:00"),
        rec("c", "ok", version="0"), rec("d", "ok", params="q"),
    ], schema=manifest.SCHEMA)
    latest = manifest.latest(records)
    assert latest.num_rows == 4
    assert {r["product_id"]: r["status"] for r in latest.to_pylist()} == {"a": "ok", "b": "failed", "c": "ok", "d": "ok"}

    index = latest.to_pandas().set_index("product_id")
    rows = pd.DataFrame({"product_id": ["a", "b", "c", "d", "e"], "category": ["mug"] * 5})
    reasons = manifest.classify(rows, index, lambda _: Target("m", "1", "p"))
    assert list(reasons) == [DONE, FAILED, MODEL_CHANGED, PARAMS_CHANGED, NEW]


def test_work_items_survive_the_trip_between_stages():
    from backdrop.batch.records import WorkItem
    from backdrop.batch.stages import items_from_table, items_to_table
    from backdrop.errors import Failure
    from backdrop.inputs import Product

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    mask = np.zeros((24, 32), np.float32)
    mask[5:10, 5:10] = 1
    gone = Failure("load", "fetch_error", "gone")
    items = [WorkItem({"product_id": "p1", "category": "mug", "image_uri": "x"}, Product(image, mask, "mug")),
             WorkItem({"product_id": "p2", "category": "mug", "image_uri": "y"}, failure=gone)]
    back = items_from_table(items_to_table(items))
    assert np.array_equal(np.asarray(back[0].product.image), np.asarray(image))
    assert back[0].product.image.size == (32, 24)
    assert back[0].product.mask.dtype == np.float32 and np.array_equal(back[0].product.mask, mask)
    assert back[0].product.reference is None and back[0].failure is None
    assert back[1].failure == gone and back[1].product is None


def test_real_world_oddities_and_malformed_uris_on_ray(ray_local, catalogs, model_dir, tmp_path):
    """The oddity catalog (tests/oddities.py) through the Ray executor, and the nightly planner
    over it: every good row is done, every odd one ok or its typed failure, nothing raises.
    (The in-process executor runs it in test_batch_safety.py.)"""
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.nightly import plan_nightly
    from backdrop.batch.run import run_backfill
    from oddities import oddity_rows

    odd, expected = oddity_rows(tmp_path / "odd", catalogs["rows"][0])
    rows = catalogs["rows"][1:3] + odd
    catalog = str(tmp_path / "catalog.parquet")
    pq.write_table(pa.Table.from_pylist(rows), catalog)
    config = BackfillConfig(catalog=catalog, model=model_dir, output=str(tmp_path / "out"), steps=1, batch_size=4,
                            max_failure_rate=1.0)
    result = run_backfill(config)
    records = {r["product_id"]: r for r in _manifest(config.output)}
    assert len(records) == len(rows) == result.ok + result.failed
    assert {pid: records[pid]["error_code"] for pid in expected} == expected
    assert [records[r["product_id"]]["status"] for r in rows[:2]] == ["ok", "ok"]
    plan = plan_nightly(config)  # fingerprints every row, the malformed ones too: never raises
    assert plan.plan.total == len(rows)


def test_in_process_executor_records_bad_rows_as_failed(catalogs, model_dir, tmp_path):
    """The local executor (no Ray) runs the same stages; rows in = ok + failed."""
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.run import run_backfill

    rows = catalogs["rows"][:3] + catalogs["bad"]
    catalog = str(tmp_path / "catalog.parquet")
    pq.write_table(pa.Table.from_pylist(rows), catalog)
    config = BackfillConfig(catalog=catalog, model=model_dir, output=str(tmp_path / "out"), steps=1,
                            image_format="jpeg", quality=90, batch_size=4, executor="local")
    result = run_backfill(config)
    records = {r["product_id"]: r for r in _manifest(config.output)}
    assert len(records) == len(rows) == result.ok + result.failed  # rows in = ok + failed
    assert [records[r["product_id"]]["status"] for r in rows[:3]] == ["ok"] * 3
    assert {pid: records[pid]["error_code"] for pid in BAD_ROWS} == {k: v[1] for k, v in BAD_ROWS.items()}
    assert {records[pid]["error_stage"] for pid in BAD_ROWS} == {"load"}
    assert all(records[pid]["error"].startswith(records[pid]["error_code"] + ": ") for pid in BAD_ROWS)
    assert all(records[r["product_id"]]["output_uri"].endswith(".jpg") and
               os.path.exists(records[r["product_id"]]["output_uri"]) for r in rows[:3])


def test_plan_follows_categories_and_limit(catalogs, tmp_path):
    from backdrop.batch.config import RowSelection
    from backdrop.batch.plan import plan_rows
    from backdrop.batch.manifest import NEW, Target

    plan = plan_rows(catalogs["good"], str(tmp_path), RowSelection(("Laptop", "mug"), limit=6),
                     lambda _: Target("m", "1", "p"))
    assert plan.total == plan.todo == 6 and plan.skipped == 0
    assert plan.counts == {("mug", NEW): 4, ("laptop", NEW): 2}
    assert plan.scope_ids.to_pylist() == [f"heldout-mug-0000{i}" for i in range(4)] + \
        [f"heldout-laptop-0000{i}" for i in range(2)]


def test_cli_job_and_backdrop_backfill_share_their_flags():
    from backdrop.batch.args import config_from_args
    from backdrop.cli import build_parser, cmd_backfill
    from jobs import catalog_backfill

    argv = ["--catalog", "c.parquet", "--model", "models:/backdrop@champion", "--output", "s3://b/out",
            "--category", "mug", "--category", "lamp", "--steps", "20", "--format", "webp", "--limit", "10"]
    via_cli = build_parser().parse_args(["backfill", *argv])
    assert via_cli.func is cmd_backfill
    assert config_from_args(via_cli) == config_from_args(catalog_backfill.build_parser().parse_args(argv))
    config = config_from_args(via_cli)
    assert (config.categories, config.steps, config.image_format, config.limit) == (("mug", "lamp"), 20, "webp", 10)


# --------------------------------------------------------------------------- backfill on Ray


@pytest.mark.slow
def test_bad_rows_become_failed_records_and_the_job_completes(first_backfill, catalogs, tmp_path_factory):
    import mlflow
    from mlflow.tracking import MlflowClient

    config, result = first_backfill
    good = {r["product_id"] for r in catalogs["rows"]}
    records = _manifest(config.output)
    assert len(records) == len(good) + len(BAD_ROWS)  # rows in = rows ok + rows failed
    assert len({r["product_id"] for r in records}) == len(records)
    by_id = {r["product_id"]: r for r in records}
    assert {pid for pid, r in by_id.items() if r["status"] == "ok"} == good
    assert {pid: by_id[pid]["error_code"] for pid in BAD_ROWS} == {k: v[1] for k, v in BAD_ROWS.items()}
    assert {by_id[pid]["error_stage"] for pid in BAD_ROWS} == {"load"}
    # Ray's own stats, by operator, from its stats API (no text parsing); its progress bars are
    # off in a non-TTY log (pytest's captured stderr), leaving the job's one progress line
    from ray.data import DataContext

    names = [name for name, _ in result.operators]
    assert any("GeneratorActor" in n for n in names) and any("write_batch" in n for n in names), names
    assert not DataContext.get_current().enable_progress_bars
    for pid in good:
        rec = by_id[pid]
        assert (rec["model_name"], rec["model_version"], rec["run_id"]) == ("backdrop", "1", result.run_id)
        with Image.open(rec["output_uri"]) as im:
            assert im.size == (64, 64)

    assert (result.ok, result.failed, result.generated) == (15, 4, 15)
    assert result.tally.failed_in("load") == 4 and result.exit_code() == 0
    assert replace(result, config=replace(config, max_failure_rate=0.1)).exit_code() == 1  # 4/19 > 10%
    assert "already done" in result.summary() and "unknown_category 1" in result.summary()
    summary = json.loads(Path(config.output, "summary.json").read_text())
    assert summary["metrics"]["rows_failed"] == 4 and summary["model_version"] == "1"
    assert not list(Path(config.output, "manifest", "parts").rglob("*.parquet"))  # consolidated

    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["rows_ok"] == 15 and run.data.metrics["rows_failed"] == 4
    assert run.data.params["model_version"] == "1" and run.data.tags["backdrop.model_name"] == "backdrop"
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "gallery")}
    assert artifacts == {f"gallery/{c}.png" for c in CATEGORIES}
    assert mlflow.get_experiment(run.info.experiment_id).name == "backdrop-backfill"
    # the resolved config (what the model filled in too: its scheduler), which --config takes back
    from backdrop import config_files
    from backdrop.batch.config import BackfillConfig

    logged = MlflowClient().download_artifacts(result.run_id, "config.yaml", str(tmp_path_factory.mktemp("cfg")))
    assert config.scheduler is None and config_files.load(BackfillConfig, logged) == replace(config, scheduler="ddim")


@pytest.mark.slow
def test_rerun_does_no_generation_work(first_backfill):
    from backdrop.batch.run import run_backfill

    config, first = first_backfill
    before = {r["product_id"]: r for r in _manifest(config.output)}
    mtimes = {p: p.stat().st_mtime_ns for p in Path(config.output, "images").rglob("*.png")}

    again = run_backfill(config)
    assert again.plan.skipped == 15 and again.generated == 0  # only the 4 failed rows were retried
    assert again.tally.rows == 4 and again.tally.failed_in("load") == 4
    assert "generate          0" in again.summary()
    after = {r["product_id"]: r for r in _manifest(config.output)}
    assert after.keys() == before.keys()
    assert all(after[p] == before[p] for p in after if before[p]["status"] == "ok")  # untouched
    assert {p: p.stat().st_mtime_ns for p in Path(config.output, "images").rglob("*.png")} == mtimes


@pytest.mark.slow
def test_catalog_and_outputs_on_s3(ray_local, catalogs, model_dir, s3_bucket):
    from backdrop import storage
    from backdrop.batch import manifest
    from backdrop.batch.run import run_backfill
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog

    paths = make_catalog(f"{s3_bucket}/catalog", SyntheticConfig(num_categories=2, train_per_category=0,
                                                                 heldout_per_category=3, pairs_per_category=0))
    storage.upload_dir(model_dir, f"{s3_bucket}/models/tiny")
    config = _config(f"{s3_bucket}/catalog/heldout.parquet", f"{s3_bucket}/models/tiny", f"{s3_bucket}/backfill",
                     image_format="webp", quality=80)
    assert paths["heldout"] == config.catalog

    result = run_backfill(config)
    records = manifest.read_records(config.output).to_pylist()
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    assert all(r["output_uri"].startswith(f"{s3_bucket}/backfill/images/") and r["output_uri"].endswith(".webp")
               for r in records)
    with Image.open(io.BytesIO(storage.read_bytes(records[0]["output_uri"]))) as im:
        assert im.format == "WEBP" and im.size == (64, 64)
    assert storage.exists(f"{s3_bucket}/backfill/summary.json")
    assert result.model_version.startswith("path-")

    assert run_backfill(config).generated == 0


# A driver SIGKILLed mid-run and run again: tests/test_batch_safety.py's chaos test (on Ray on local
# disk, and in-process on S3) checks exactly-once, readable images and no debris left.


@pytest.mark.slow
def test_a_killed_generator_actor_is_restarted_and_no_row_is_lost(ray_local, catalogs, model_dir, tmp_path):
    """SIGKILL the generator actor's process while the backfill runs: Ray Data restarts the actor
    and retries its batch; every row still ends up in the manifest exactly once."""
    import psutil

    from backdrop.batch.run import run_backfill
    from backdrop.batch.stages import GeneratorActor

    hold = tmp_path / "hold"
    hold.touch()

    class HeldGeneratorActor(GeneratorActor):
        """Lets its first batch through and holds the next while ``hold`` exists: the actor is
        surely alive, with work left, when the test kills it (pickled by value: a local class)."""

        calls = 0

        def __call__(self, batch):
            self.calls += 1
            while self.calls > 1 and hold.exists():
                time.sleep(0.05)
            return super().__call__(batch)

    output = tmp_path / "out"
    rows = catalogs["rows"][:8]
    killed = []

    def kill_the_generator_after_its_first_batch() -> None:
        """Once the first batch's manifest part is written, the actor is held in its second."""
        deadline = time.monotonic() + 300  # a hang guard
        while not list((output / "manifest" / "parts").rglob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "MapBatches(HeldGeneratorActor)" in " ".join(p.cmdline()):
                    p.kill()
                    killed.append(p.pid)
        hold.unlink()  # the restarted actor runs freely

    killer = threading.Thread(target=kill_the_generator_after_its_first_batch, daemon=True)
    killer.start()
    result = run_backfill(_config(catalogs["good"], model_dir, str(output), limit=8, batch_size=2),
                          generator_cls=HeldGeneratorActor)
    killer.join(timeout=60)
    assert len(killed) == 1, "no generator actor process found"
    records = _manifest(str(output))
    assert sorted(r["product_id"] for r in records) == sorted(r["product_id"] for r in rows)
    assert {r["status"] for r in records} == {"ok"} and result.exit_code() == 0


@pytest.mark.slow
def test_ray_job_submit_to_a_local_head(registered, catalogs, home, tmp_path, shared_ray_head):
    """The README's command against a real `ray start --head`, through the real `ray job submit` CLI."""
    output = tmp_path / "out"
    job = shared_ray_head.submit(
        ["python", "jobs/catalog_backfill.py", "--catalog", catalogs["good"], "--model", "models:/backdrop@champion",
         "--output", str(output), "--category", "mug", "--category", "laptop", "--limit", "6",
         "--steps", str(STEPS), "--batch-size", "2"],
        env_vars={"BACKDROP_HOME": str(home)})
    assert job.returncode == 0, f"ray job submit failed:\n{job.stdout[-6000:]}\n{job.stderr[-3000:]}"
    assert "succeeded" in job.stdout.lower()
    assert "6 rows in scope = 6 ok + 0 failed" in job.stdout

    records = _manifest(str(output))
    assert sorted(r["product_id"] for r in records) == [f"heldout-laptop-0000{i}" for i in range(2)] + \
        [f"heldout-mug-0000{i}" for i in range(4)]
    assert {(r["status"], r["model_name"], r["model_version"]) for r in records} == {("ok", "backdrop", "1")}


# --------------------------------------------------------------------------- nightly (last: moves the alias)


@pytest.mark.slow
def test_nightly_regenerates_new_failed_and_moved_categories_only(first_backfill, catalogs, capsys):
    from mlflow.tracking import MlflowClient

    from backdrop.batch import nightly as regen
    from backdrop.batch.manifest import DONE, FAILED, MODEL_CHANGED, NEW

    config, _ = first_backfill
    mug = next(r for r in catalogs["rows"] if r["category"] == "mug")
    catalog = _write_table(catalogs["rows"] + catalogs["bad"] + [{**mug, "product_id": "new-mug"}],
                           catalogs["root"] / "tonight.parquet")
    tonight = replace(config, catalog=catalog)
    pins = regen.parse_pins(["mug=models:/backdrop/1"])
    MlflowClient().set_registered_model_alias("backdrop", "champion", "2")
    try:
        before = _manifest(config.output)
        from jobs import nightly_regen

        assert nightly_regen.main(["--catalog", catalog, "--output", config.output, "--pin", "mug=models:/backdrop/1",
                                   "--steps", str(STEPS), "--batch-size", "4", "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert "models:/backdrop@champion -> backdrop v2" in printed and "mug=models:/backdrop/1 -> backdrop v1" in printed
        assert _manifest(config.output) == before  # a dry run touches nothing

        plan, results = regen.run_nightly(tonight, pins)
        assert plan.plan.counts == {
            ("mug", DONE): 5, ("mug", NEW): 1, ("mug", FAILED): 1,
            ("laptop", MODEL_CHANGED): 5, ("laptop", FAILED): 1,
            ("sunscreen", MODEL_CHANGED): 5, ("sunscreen", FAILED): 1,
            ("spaceship", FAILED): 1,
        }
        assert [r.model_version for r in results] == ["2", "1"]
        assert [r.generated for r in results] == [10, 1]  # the failed rows fail again while loading
        records = {r["product_id"]: r for r in _manifest(config.output)}
        assert len(records) == len(before) + 1
        assert {r["model_version"] for r in records.values() if r["category"] in ("laptop", "sunscreen")
                and r["status"] == "ok"} == {"2"}
        assert {r["model_version"] for r in records.values() if r["category"] == "mug"} == {"1"}
        assert records["new-mug"]["status"] == "ok"
        assert regen.plan_nightly(tonight, pins).plan.todo == 4  # only the bad rows remain
    finally:
        MlflowClient().set_registered_model_alias("backdrop", "champion", "1")
