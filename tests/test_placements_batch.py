"""Placements, best-of-N and cost through the batch front door (the in-process executor: the
same plan, stages and manifest as the Ray backfill), on a tiny model with a fitted QA scorer."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

PLACEMENTS = ("1:1", "16:9", "9:16")
QA_COLUMNS = ("placement", "device_seconds", "qa_score", "qa_passed", "candidates_json")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog

    cfg = SyntheticConfig(num_categories=3, train_per_category=6, heldout_per_category=1, pairs_per_category=0)
    return make_catalog(str(tmp_path_factory.mktemp("catalog")), cfg)


@pytest.fixture(scope="module")
def tiny(catalog):
    """A tiny-preset generator for the catalog's categories (conftest's ``tiny_model`` knows others)."""
    import torch

    from backdrop.demo.synthetic import category_names
    from backdrop.models.generator import BackdropModel

    torch.manual_seed(0)
    return BackdropModel.tiny(category_names(3))


@pytest.fixture(scope="module")
def model_with_scorer(tiny, catalog, tmp_path_factory):
    """The tiny model saved, then its scorer fitted through the CLI (``backdrop qa-fit``)."""
    from backdrop import cli

    path = str(tmp_path_factory.mktemp("model") / "tiny")
    tiny.save_pretrained(path)
    assert cli.main(["qa-fit", "--model", path, "--catalog", catalog["train"]]) == 0
    assert os.path.isfile(os.path.join(path, "qa", "scorer.json"))
    return path


def _catalog_with_a_bad_row(catalog, path) -> tuple[str, list[dict]]:
    from backdrop.catalog import GENERATION_COLUMNS, read_catalog

    rows = read_catalog(catalog["heldout"]).to_pylist()
    rows.append({**rows[0], "product_id": "broken", "image_uri": str(path.parent / "no-such.png")})
    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in GENERATION_COLUMNS}),
                   str(path))
    return str(path), rows


def _config(catalog, model, output, **kw):
    from backdrop.batch.config import BackfillConfig

    return BackfillConfig(catalog=catalog, model=model, output=output,
                          **{"steps": 1, "batch_size": 4, "executor": "local", "max_failure_rate": 1.0, **kw})


def test_every_product_in_every_placement_once_with_qa_and_cost(home, catalog, model_with_scorer, tmp_path):
    from backdrop.batch import manifest
    from backdrop.batch.run import run_backfill
    from backdrop.inputs import fetch_product
    from backdrop.placements import parse_placement

    catalog_uri, rows = _catalog_with_a_bad_row(catalog, tmp_path / "catalog.parquet")
    output = str(tmp_path / "out")
    # a threshold no score reaches (qa_score <= 1): every output is flagged, so the review page is full
    config = _config(catalog_uri, model_with_scorer, output, placements=PLACEMENTS, candidates=2,
                     price_per_device_hour=3.6, qa_threshold=1.01)
    first = run_backfill(config)

    # rows x placements = ok + failed, everywhere; the bad row fails once per placement
    records_in = len(rows) * len(PLACEMENTS)
    assert first.plan.total == records_in == first.ok + first.failed
    assert first.failed == len(PLACEMENTS) and first.missing == 0
    assert first.metrics()["rows_ok"] + first.metrics()["rows_failed"] == records_in
    assert f"{records_in} rows in scope = {first.ok} ok + {first.failed} failed" in first.summary()

    final = manifest.read_records(output)
    assert set(QA_COLUMNS) <= set(final.column_names)
    latest = manifest.latest(final).to_pylist()
    assert len(latest) == records_in
    assert {(r["product_id"], r["placement"]) for r in latest} == \
        {(row["product_id"], p) for row in rows for p in PLACEMENTS}
    broken = [r for r in latest if r["product_id"] == "broken"]
    assert {r["error_stage"] for r in broken} == {"load"} and len(broken) == len(PLACEMENTS)

    ok = [r for r in latest if r["status"] == "ok"]
    assert len({r["output_uri"] for r in ok}) == len(ok)  # one file per product and placement
    by_row = {r["product_id"]: r for r in rows}
    for rec in ok:
        assert rec["output_uri"].startswith(output) and os.path.isfile(rec["output_uri"])
        assert rec["device_seconds"] > 0
        candidates = json.loads(rec["candidates_json"])
        assert len(candidates) == 2 and sum(c["kept"] for c in candidates) == 1
        kept = next(c for c in candidates if c["kept"])
        assert kept["scores"]["qa_score"] == pytest.approx(rec["qa_score"])
        assert rec["qa_passed"] is False
        assert rec["device_seconds"] == pytest.approx(sum(c["device_seconds"] for c in candidates))
        # the product is bit-identical in each placement's output file
        placed = fetch_product(by_row[rec["product_id"]]).placed(parse_placement(rec["placement"]))
        out = np.asarray(Image.open(rec["output_uri"]).convert("RGB"))
        assert out.shape[:2] == np.asarray(placed.image).shape[:2]
        w, h = out.shape[1], out.shape[0]
        ratio = parse_placement(rec["placement"]).ratio
        assert abs(w / h - ratio[0] / ratio[1]) < 0.05
        product = placed.mask > 0.5
        assert np.array_equal(out[product], np.asarray(placed.image)[product])

    # cost: per category and per run, in the summary and the metrics
    assert first.device_seconds == pytest.approx(sum(r["device_seconds"] for r in ok))
    metrics = first.metrics()
    assert metrics["cost"] == pytest.approx(first.device_seconds / 3600 * 3.6)
    assert metrics["qa_scored"] == len(ok) and 0 <= metrics["qa_flagged"] <= len(ok)
    for category in {r["category"] for r in ok}:
        assert metrics[f"device_s.{category}"] > 0
    assert "device-s" in first.summary() and "/device-hour" in first.summary()

    # the review gallery: every flagged output, with its candidates, under the output and in MLflow
    flagged = [r for r in ok if r["qa_passed"] is False]
    assert metrics["qa_flagged"] == len(flagged) == len(ok)
    import mlflow

    page = open(os.path.join(output, "review", "index.html"), encoding="utf-8").read()
    assert f"{len(flagged)} of {len(ok)} scored outputs" in page
    for r in flagged:
        assert f"<b>{r['product_id']}</b>" in page
    assert page.count("<figure>") == len(flagged) and page.count("class=kept") == len(flagged)
    pngs = sorted(f for f in os.listdir(os.path.join(output, "review")) if f.endswith(".png"))
    assert len(pngs) == len(flagged)
    logged = mlflow.MlflowClient().list_artifacts(first.run_id, "review")
    assert {os.path.basename(a.path) for a in logged} == set(pngs) | {"index.html"}

    # a rerun regenerates nothing: same files, same bytes; only the bad row is tried again
    before = {r["output_uri"]: open(r["output_uri"], "rb").read() for r in ok}
    mtimes = {u: os.stat(u).st_mtime_ns for u in before}
    again = run_backfill(config)
    assert again.plan.skipped == len(ok) and again.generated == 0
    assert again.plan.total == again.ok + again.failed == records_in
    assert {u: os.stat(u).st_mtime_ns for u in before} == mtimes
    assert all(open(u, "rb").read() == b for u, b in before.items())

    # one more placement: only its records are new
    more = run_backfill(_config(catalog_uri, model_with_scorer, output, placements=PLACEMENTS + ("4:5",),
                                candidates=2, price_per_device_hour=3.6, qa_threshold=1.01))
    assert more.plan.skipped == len(ok) and more.generated == len(rows) - 1


def test_best_of_n_without_a_scorer_fails_early_and_says_how_to_fit_one(home, catalog, tiny, tmp_path):
    from backdrop.batch import manifest
    from backdrop.batch.run import run_backfill
    from backdrop.errors import NoScorerError

    bare = str(tmp_path / "bare")
    tiny.save_pretrained(bare)
    output = str(tmp_path / "out")
    with pytest.raises(NoScorerError, match="backdrop qa-fit --model"):
        run_backfill(_config(catalog["heldout"], bare, output, candidates=3))
    assert manifest.read_records(output).num_rows == 0


def test_placement_flags_reach_the_config_and_bad_ones_are_refused():
    import argparse

    from backdrop.batch.args import add_generation_arguments, config_from_args
    from backdrop.errors import InvalidParameterError

    p = argparse.ArgumentParser()
    add_generation_arguments(p)
    base = ["--model", "m", "--catalog", "c", "--output", "o"]
    config = config_from_args(p.parse_args(base + ["--placements", "1:1, 4:5,16:9,9:16,16:9", "--candidates", "4",
                                                   "--qa-threshold", "0.6", "--price-per-device-hour", "2.5"]))
    assert config.placements == ("1:1", "4:5", "16:9", "9:16") and config.candidates == 4
    assert config.qa_threshold == 0.6 and config.price_per_device_hour == 2.5
    assert config_from_args(p.parse_args(base)).placement_names == ("photo",)
    for bad in (["--placements", "1:0"], ["--placements", "wide"], ["--candidates", "0"], ["--candidates", "99"],
                ["--price-per-device-hour", "-1"]):
        with pytest.raises(InvalidParameterError):
            config_from_args(p.parse_args(base + bad))


def test_a_placement_key_never_meets_another_products_key():
    from backdrop.batch import keys
    from backdrop.batch.manifest import record_key

    assert keys.output_key("mug", "a", "png") == "images/mug/a.png"
    assert keys.output_key("mug", "a", "png", "photo") == "images/mug/a.png"
    assert keys.output_key("mug", "a", "png", "16:9") == "images/mug/a@16-9.png"
    assert keys.output_key("mug", "a", "png", "300x250") == "images/mug/a@300x250.png"
    # an id that spells a placement key is encoded, never equal
    assert keys.output_key("mug", "a@16-9", "png") != keys.output_key("mug", "a", "png", "16:9")
    with pytest.raises(ValueError):
        keys.output_key("mug", "a", "png", "../x")
    assert record_key("a") == "a" and record_key("a", "16:9") != record_key("a\x1f16:9")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab\x1f:9 ", min_size=1, max_size=6),
                          st.sampled_from([None, "", "photo", "16:9", "a\x1f"])), min_size=1, max_size=8))
def test_record_keys_over_columns_equal_record_key_row_by_row(rows):
    from backdrop.batch.manifest import record_key, record_keys

    ids, placements = [r[0] for r in rows], [r[1] for r in rows]
    assert list(record_keys(ids, placements)) == [record_key(i, p) for i, p in zip(ids, placements)]


def test_the_pipeline_skips_exactly_the_records_the_plan_found_done():
    """select_rows builds the record key in Arrow; it must agree with manifest.record_key."""
    from backdrop.batch.config import RowSelection
    from backdrop.batch.manifest import record_key
    from backdrop.batch.stages import select_rows
    from backdrop.catalog import GENERATION_COLUMNS

    ids = ["a", "a\x1f16:9", "b"]
    table = pa.table({c: pa.array([pid if c == "product_id" else "mug" if c == "category" else "x"
                                   for pid in ids], pa.string()) for c in GENERATION_COLUMNS})
    done = [record_key("a", "16:9"), record_key("b"), record_key("a\x1f16:9")]
    left = select_rows(table, selection=RowSelection(), done_keys=pa.array(done), scope_ids=None,
                       placements=("photo", "16:9"))
    assert sorted(zip(left["product_id"].to_pylist(), left["placement"].to_pylist())) == \
        [("a", "photo"), ("a\x1f16:9", "16:9"), ("b", "16:9")]
