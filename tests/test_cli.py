"""The single-process CLI over the library: `backdrop generate` writes the backfill's manifest."""

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from backdrop import cli
from backdrop.batch import manifest
from backdrop.demo.synthetic import SyntheticConfig, category_names, make_catalog


def test_generate_records_every_row_and_keeps_going_after_bad_ones(tmp_path, tiny_model):
    paths = make_catalog(str(tmp_path / "catalog"), SyntheticConfig(
        num_categories=2, train_per_category=1, heldout_per_category=2, pairs_per_category=1))
    good = pq.read_table(paths["heldout"]).to_pylist()
    bad = [{**good[0], "product_id": "no-mask", "mask_uri": str(tmp_path / "missing.png")},
           {**good[0], "product_id": "unknown-category", "category": "spaceship"}]
    catalog = str(tmp_path / "catalog.parquet")
    pq.write_table(pa.Table.from_pylist(good + bad), catalog)
    model_dir = str(tmp_path / "model")
    tiny_model.categories.extend(category_names(2))
    tiny_model.save_pretrained(model_dir)

    out = tmp_path / "out"
    code = cli.main(["generate", "--model", model_dir, "--catalog", catalog, "--output", str(out),
                     "--steps", "2", "--batch-size", "2"])

    records = {r["product_id"]: r for r in manifest.read_records(str(out)).to_pylist()}
    assert code == 1  # some rows failed
    assert len(records) == len(good) + len(bad)  # rows in = ok + failed
    assert {records[r["product_id"]]["status"] for r in good} == {"ok"}
    assert records["no-mask"]["error"].startswith("fetch_error: cannot read") and "missing.png" in records["no-mask"]["error"]
    assert "spaceship" in records["unknown-category"]["error"]
    assert not (out / "manifest" / "parts").exists() or not list((out / "manifest" / "parts").iterdir())
    with Image.open(records[good[0]["product_id"]]["output_uri"]) as im:
        assert im.size == (64, 64)
