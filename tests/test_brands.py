"""Brand style kits (backdrop.brands): added once to the registry, validated, versioned with
aliases, and used by name from a catalog's brand_style column, with the nightly run redoing a
brand's rows when its kit moves. HTTP and the page are in test_serve.py and test_page.py."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backdrop import brands
from backdrop.errors import (CorruptImageError, FetchError, ImageTooLargeError, InvalidParameterError,
                             MaskSizeError, UnknownStyleError)
from backdrop.limits import Limits
from conftest import save_tiny_generator, small_catalog


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _ad(seed: int, size=(64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def ads(tmp_path):
    """Two reference ads (the second with a product mask) and some hostile files."""
    d = tmp_path / "ads"
    d.mkdir()
    (d / "a.png").write_bytes(_png(_ad(1)))
    (d / "b.png").write_bytes(_png(_ad(2)))
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    (d / "b-mask.png").write_bytes(_png(mask))
    (d / "small-mask.png").write_bytes(_png(mask[:32, :32]))
    (d / "text.png").write_bytes(b"not an image at all")
    (d / "big.png").write_bytes(_png(_ad(3, (300, 300))))
    return d


def _kit_models():
    from mlflow.tracking import MlflowClient

    from backdrop import registry

    registry.configure()
    return [m.name for m in MlflowClient().search_registered_models() if m.name.startswith(brands.KIT_PREFIX)]


def test_a_kit_is_validated_versioned_and_aliased(home, ads):
    kit = brands.add_kit("acme", [str(ads / "a.png"), str(ads / "b.png")])
    assert kit["aliases"] == {"current": "1"} and kit["versions"][0]["references"] == 2
    again = brands.add_kit("acme", [str(ads / "b.png")], [str(ads / "b-mask.png")])
    assert again["aliases"] == {"current": "2"} and [v["version"] for v in again["versions"]] == ["2", "1"]
    spring = brands.add_kit("acme", [str(ads / "a.png")], alias="spring")
    assert spring["aliases"] == {"current": "2", "spring": "3"}
    assert [k["name"] for k in brands.list_kits()] == ["acme"]

    assert brands.resolve_style("acme") == ("acme", "2")
    assert brands.resolve_style("acme@spring") == ("acme", "3")
    assert brands.resolve_style("acme/1") == ("acme", "1")
    for missing in ("acme/9", "acme@autumn", "globex"):
        with pytest.raises(UnknownStyleError):
            brands.resolve_style(missing)

    kit = brands.load_kit("acme", "2")  # the bytes as they were sent, mask included
    assert kit.references == ((_png(_ad(2)), (ads / "b-mask.png").read_bytes()),)
    one = brands.load_kit("acme", "1")
    assert [one.pick(s)[0] for s in (0, 1, 2)] == [_png(_ad(1)), _png(_ad(2)), _png(_ad(1))]

    brands.remove_kit("acme", "1")
    assert [v["version"] for v in brands.describe_kit("acme")["versions"]] == ["3", "2"]
    brands.remove_kit("acme")
    assert brands.list_kits() == [] and _kit_models() == []
    with pytest.raises(UnknownStyleError):
        brands.describe_kit("acme")


@pytest.mark.parametrize("name, refs, masks, error", [
    ("../etc", ["a.png"], None, InvalidParameterError),
    ("ACME", ["a.png"], None, InvalidParameterError),
    ("a" * 49, ["a.png"], None, InvalidParameterError),
    ("acme/2", ["a.png"], None, InvalidParameterError),
    ("acme", [], None, InvalidParameterError),
    ("acme", ["a.png", "b.png"], ["b-mask.png"], InvalidParameterError),  # masks pair one to one
    ("acme", ["a.png", "missing.png"], None, FetchError),
    ("acme", ["a.png", "text.png"], None, CorruptImageError),
    ("acme", ["b.png"], ["small-mask.png"], MaskSizeError),
    ("acme", ["big.png"], None, ImageTooLargeError),  # over the limits' pixels
    ("acme", ["/dev/zero"], None, FetchError),  # not a regular file
])
def test_a_bad_kit_is_refused_with_its_reason_and_nothing_is_written(home, ads, name, refs, masks, error):
    def where(f):
        return f if f.startswith("/") else str(ads / f)

    with pytest.raises(error) as e:
        brands.add_kit(name, [where(r) for r in refs], [where(m) for m in masks] if masks else None,
                       limits=Limits(max_pixels=200 * 200))
    assert e.value.message and "Traceback" not in e.value.message
    assert brands.list_kits() == [] and _kit_models() == []


def test_a_registry_failure_after_the_checks_leaves_no_half_written_kit(home, ads, monkeypatch):
    from mlflow.tracking import MlflowClient

    def broken(*args, **kwargs):
        raise RuntimeError("the registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RuntimeError):
        brands.add_kit("acme", [str(ads / "a.png")])
    monkeypatch.undo()
    assert _kit_models() == []
    from backdrop import registry

    experiment = registry.ensure_experiment(brands.KIT_EXPERIMENT)
    assert MlflowClient().search_runs([experiment]) == []  # the run was deleted too


@pytest.mark.parametrize("text", ["", " ", "acme@", "acme/x", "acme/1/2", "ac me", "acme@a b", 7, None])
def test_hostile_style_names_are_refused(text):
    with pytest.raises(InvalidParameterError):
        brands.parse_style(text)


# --------------------------------------------------------------------------- catalogs
@pytest.fixture
def styled(home, tmp_path_factory, ads):
    """A catalog whose rows name a kit, another kit, nothing, an unknown kit, and a kit plus a
    reference; the kits acme (2 references) and globex (1)."""
    catalog = small_catalog(tmp_path_factory, 2, 1, 3)
    rows = pq.read_table(catalog["heldout"]).to_pylist()[:5]
    styles = ["acme", "globex@current", None, "initech", "acme"]
    for row, style in zip(rows, styles):
        row["brand_style"] = style
        row["reference_uri"] = None
        row["reference_mask_uri"] = None
    rows[4]["reference_uri"] = str(ads / "a.png")
    path = tmp_path_factory.mktemp("styled") / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    brands.add_kit("acme", [str(ads / "a.png"), str(ads / "b.png")])
    brands.add_kit("globex", [str(ads / "b.png")], [str(ads / "b-mask.png")])
    categories = sorted({r["category"] for r in rows})
    return {"catalog": str(path), "rows": rows, "model": save_tiny_generator(tmp_path_factory, categories),
            "allow": str(ads)}


def _records(output):
    from backdrop.batch.manifest import read_records

    return {r["product_id"]: r for r in read_records(output).to_pylist()}


def test_a_catalog_names_kits_and_each_row_uses_the_runs_pinned_version(styled, tmp_path):
    from backdrop import runtime
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.run import run_backfill

    config = BackfillConfig(catalog=styled["catalog"], model=styled["model"], output=str(tmp_path / "out"), steps=2,
                            batch_size=2, executor="local", max_failure_rate=1.0, allow_inputs=(styled["allow"],))
    result = run_backfill(config)
    rows = styled["rows"]
    assert result.ok + result.failed == len(rows) and (result.ok, result.failed) == (3, 2)
    records = _records(config.output)
    by = [records[r["product_id"]] for r in rows]
    assert [(r["brand_kit"], r["brand_kit_version"]) for r in by] == [
        ("acme", "1"), ("globex", "1"), (None, None), ("initech", None), ("acme", "1")]
    assert [r["error_code"] for r in by] == [None, None, None, "unknown_style", "invalid_parameter"]
    assert "both a reference_uri and a brand_style" in by[4]["error_message"]

    # the same reference sent inline (the kit's pick for that row's seed) gives the same pixels
    kit = brands.load_kit("acme", "1")
    pick = kit.pick(runtime.row_seed(0, rows[0]["product_id"]))
    inline = tmp_path / "inline.png"
    inline.write_bytes(pick[0])
    row = {**rows[0], "brand_style": None, "reference_uri": str(inline)}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "inline.parquet")
    same = BackfillConfig(catalog=str(tmp_path / "inline.parquet"), model=styled["model"],
                          output=str(tmp_path / "out-inline"), steps=2, batch_size=2, executor="local",
                          allow_inputs=(styled["allow"],))
    assert run_backfill(same).ok == 1
    a = np.asarray(Image.open(by[0]["output_uri"]))
    b = np.asarray(Image.open(_records(same.output)[rows[0]["product_id"]]["output_uri"]))
    assert np.array_equal(a, b)


def test_the_nightly_run_redoes_a_brands_rows_when_its_kit_moves(styled, tmp_path, ads):
    from backdrop.batch.config import BackfillConfig
    from backdrop.batch.nightly import plan_nightly, run_nightly
    from backdrop.batch.run import run_backfill

    config = BackfillConfig(catalog=styled["catalog"], model=styled["model"], output=str(tmp_path / "out"), steps=2,
                            batch_size=2, executor="local", max_failure_rate=1.0, allow_inputs=(styled["allow"],))
    run_backfill(config)
    quiet = plan_nightly(config).plan
    assert quiet.todo == 2  # only the two failed rows are redone; the kit rows are done

    brands.add_kit("acme", [str(ads / "b.png")])  # acme moves to version 2
    moved = plan_nightly(config).plan
    assert moved.counts[(styled["rows"][0]["category"], "input_changed")] >= 1
    assert moved.todo == 3  # the acme row (input_changed) + the two failed ones; globex is left alone
    run_nightly(config)
    records = _records(config.output)
    assert records[styled["rows"][0]["product_id"]]["brand_kit_version"] == "2"
    assert records[styled["rows"][1]["product_id"]]["brand_kit_version"] == "1"
