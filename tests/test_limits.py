"""One set of limits: the backfill, `backdrop generate` and the HTTP service accept and refuse alike."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backdrop import cli
from backdrop.batch.config import BackfillConfig
from backdrop.errors import ImageTooLargeError, InvalidParameterError
from backdrop.inputs import fetch_product
from backdrop.limits import DEFAULT_LIMITS, Limits
from backdrop.serving.jobs import load_job
from backdrop.serving.params import GenerateParams


def test_batch_and_http_share_the_default_limits():
    from serve_apps.app import AppArgs

    assert BackfillConfig("c", "m", "o").limits == DEFAULT_LIMITS
    http = AppArgs().limits
    assert (http.max_image_bytes, http.max_pixels, http.max_steps, http.max_images) == (
        DEFAULT_LIMITS.max_image_bytes, DEFAULT_LIMITS.max_pixels, DEFAULT_LIMITS.max_steps, DEFAULT_LIMITS.max_images)
    assert Limits(max_steps=20).check_steps(20) == 20  # configuration overrides a field
    with pytest.raises(ValueError):
        Limits(max_steps=501)  # never past what the scheduler can do


def _product_png(width: int, height: int) -> bytes:
    """A flat product photo with an alpha cut-out (compresses to a few KiB at any size)."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = (180, 60, 40)
    rgba[height // 3: 2 * height // 3, width // 3: 2 * width // 3, 3] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize("width, height, accepted", [(5000, 4000, True), (6000, 4400, False)])
def test_a_20_megapixel_product_is_accepted_and_26_refused_by_batch_and_http(tmp_path, width, height, accepted):
    data = _product_png(width, height)
    path = tmp_path / "p.png"
    path.write_bytes(data)
    row = {"product_id": "p", "category": "mug", "image_uri": str(path), "mask_uri": None}
    params = GenerateParams.from_fields({"category": "mug"})
    if accepted:
        assert fetch_product(row).image.size == (width, height)  # the backfill's and generate's way in
        assert load_job(params, image=data).product.image.size == (width, height)  # HTTP's way in
    else:
        with pytest.raises(ImageTooLargeError):
            fetch_product(row)
        with pytest.raises(ImageTooLargeError):
            load_job(params, image=data)


def test_a_150_step_request_is_refused_by_generate_the_backfill_and_http(tmp_path, capsys):
    catalog = str(tmp_path / "c.parquet")
    pq.write_table(pa.table({"product_id": ["p"], "category": ["mug"], "image_uri": ["x.png"],
                             "mask_uri": [None]}, schema=pa.schema([(c, pa.string()) for c in
                                                                    ("product_id", "category", "image_uri", "mask_uri")])),
                   catalog)
    code = cli.main(["generate", "--model", str(tmp_path / "nowhere"), "--catalog", catalog,
                     "--output", str(tmp_path / "out"), "--steps", "150"])
    assert code == 2 and "steps must be an integer in 1..100, got 150" in capsys.readouterr().err
    with pytest.raises(InvalidParameterError):
        BackfillConfig(catalog, "m", str(tmp_path / "out"), steps=150)  # the Ray backfill's check
    with pytest.raises(InvalidParameterError, match="steps"):
        GenerateParams.from_fields({"category": "mug", "steps": 150})
    assert GenerateParams.from_fields({"category": "mug", "steps": 100}).steps == 100


def test_work_is_output_megapixels_times_candidates_times_steps():
    from backdrop.errors import RequestTooLargeError

    assert Limits().check_work(12.0, 1, 50) == 600.0  # a camera photo, plain generation
    with pytest.raises(RequestTooLargeError, match="1,600 megapixel-steps .* over the limit of 1,000"):
        Limits(max_request_work=1000).check_work(8.0, 4, 50)
