"""backdrop.serving without Ray or HTTP: parameters, keys, inputs and batched generation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from backdrop.errors import (
    RequestTooLargeError,
    CorruptImageError,
    FullMaskError,
    ImageTooLargeError,
    InvalidParameterError,
    MaskSizeError,
    MissingMaskError,
    UnknownCategoryError,
)
from backdrop.imaging import load_reference
from backdrop import runtime
from backdrop.errors import Failure
from backdrop.limits import Limits
from backdrop.serving.auth import ApiKeys
from backdrop.serving.jobs import Generated, check_job, load_job, run_jobs
from backdrop.serving.models import ModelSelector
from backdrop.serving.params import GenerateParams, read_input


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def product(size: int = 64) -> Image.Image:
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (200, 40, 30, 255)
    return Image.fromarray(rgba, "RGBA")


# --- parameters ---------------------------------------------------------------------------------
def test_params_parse_form_strings_and_json_values_alike():
    a = GenerateParams.from_fields({"category": " Mug ", "steps": "20", "guidance": "2.5", "seed": "3",
                                    "num_images": "2"})
    b = GenerateParams.from_fields({"category": "Mug", "steps": 20, "guidance": 2.5, "seed": 3, "num_images": 2})
    assert a == b and a.format == "json" and a.seeds == [3, 4] and a.loop_key == (20, 2.5, None)
    one = GenerateParams.from_fields({"category": "mug", "prompt": "  "})
    assert one.format == "png" and one.prompt is None and one.steps == 50 and 0 <= one.seed < 2**31


@pytest.mark.parametrize("fields, fragment", [
    ({}, "category is required"),
    ({"category": "mug", "steps": "0"}, "steps: input should be greater than or equal to 1"),
    ({"category": "mug", "steps": "101"}, "steps must be an integer in 1..100"),
    ({"category": "mug", "steps": "2.5"}, "steps: must be an integer"),
    ({"category": "mug", "steps": True}, "steps: input should be a valid integer"),
    ({"category": "mug", "guidance": "inf"}, "guidance: must be a finite decimal number"),
    ({"category": "mug", "seed": -1}, "seed: input should be greater than or equal to 0"),
    ({"category": "mug", "seed": "9" * 5000}, "seed: must be an integer"),  # never int() on it
    ({"category": "mug", "num_images": 5}, "num_images must be in 1..4"),
    ({"category": "mug", "num_images": 2, "format": "png"}, "use format=json"),
    ({"category": "mug", "format": "tiff"}, "format: input should be 'png' or 'json'"),
    ({"category": "mug", "colour": "red"}, "unknown field 'colour'"),
    ({"category": ["mug"]}, "category: input should be a valid string"),
    ({"category": "mug", "prompt": "a \ud800 b"}, "prompt: must be text without control characters"),
])
def test_params_out_of_range_are_readable_errors(fields, fragment):
    with pytest.raises(InvalidParameterError) as e:
        GenerateParams.from_fields(fields, Limits())
    assert fragment in str(e.value)


# --- keys ------------------------------------------------------------------------------------------
def test_api_keys_are_held_as_digests_and_checked():
    keys = ApiKeys.from_config([ApiKeys.digest("alpha")], plain="beta, gamma")
    assert len(keys) == 3
    assert keys.check("alpha") == ApiKeys.digest("alpha")[:8]
    assert keys.check("gamma") and not keys.check("delta") and not keys.check("") and not keys.check(None)
    assert "alpha" not in repr(vars(keys)) and "beta" not in repr(vars(keys))
    with pytest.raises(ValueError):
        ApiKeys(["not-a-digest"])
    assert not ApiKeys()  # no keys: nothing is accepted


# --- inputs ----------------------------------------------------------------------------------------
def test_read_input_base64_data_url_and_refusals():
    data = png(product())
    assert read_input(base64.b64encode(data).decode(), "image") == data
    assert read_input("data:image/png;base64," + base64.b64encode(data).decode(), "image") == data
    assert read_input(None, "mask") is None and read_input("", "mask") is None
    with pytest.raises(InvalidParameterError, match="neither base64 nor"):
        read_input("/etc/passwd", "image")
    with pytest.raises(InvalidParameterError, match="only s3:// URIs"):
        read_input("file:///etc/passwd", "image")
    with pytest.raises(InvalidParameterError, match="remote URIs are not enabled"):
        read_input("s3://bucket/p.png", "image")  # no scope configured: remote inputs are off
    with pytest.raises(ImageTooLargeError):
        read_input(base64.b64encode(b"x" * 2000).decode(), "image", limits=Limits(max_image_bytes=1000))


def test_read_input_from_s3(s3_bucket):
    from backdrop import storage
    from backdrop.errors import FetchError

    from backdrop.scope import UriScope

    data = png(product())
    storage.write_bytes(f"{s3_bucket}/in/p.png", data)
    storage.write_bytes(f"{s3_bucket}/private/p.png", data)
    scope = UriScope([f"{s3_bucket}/in"])
    assert read_input(f"{s3_bucket}/in/p.png", "image", scope=scope) == data
    with pytest.raises(ImageTooLargeError):
        read_input(f"{s3_bucket}/in/p.png", "image", limits=Limits(max_image_bytes=10), scope=scope)
    # outside the scope, missing, or a spelling that would escape it: one and the same answer
    answers = set()
    for uri in (f"{s3_bucket}/private/p.png", f"{s3_bucket}/in/nothing.png", f"{s3_bucket}/in/../private/p.png",
                f"{s3_bucket}/in//p.png", f"{s3_bucket}/in/%2e%2e/private/p.png", f"{s3_bucket}-other/in/p.png"):
        with pytest.raises(FetchError) as e:
            read_input(uri, "image", scope=scope)
        answers.add(str(e.value))
    assert len(answers) == 1 and "private" not in answers.pop()
    # a key bound to its own prefixes sees those instead of the shared ones
    bound = UriScope([f"{s3_bucket}/in"], per_key={"ab" * 32: [f"{s3_bucket}/private/"]})
    assert read_input(f"{s3_bucket}/private/p.png", "image", scope=bound, key_digest="ab" * 32) == data
    with pytest.raises(FetchError):
        read_input(f"{s3_bucket}/in/p.png", "image", scope=bound, key_digest="ab" * 32)


def test_load_job_takes_the_mask_from_alpha_and_checks_the_reference():
    params = GenerateParams.from_fields({"category": "mug"})
    job = load_job(params, image=png(product()))
    assert job.product.image.mode == "RGB" and job.product.mask.sum() == 32 * 32 and job.product.reference is None
    with pytest.raises(MissingMaskError):
        load_job(params, image=png(product().convert("RGB")))
    with pytest.raises(CorruptImageError):
        load_job(params, image=b"nope")
    with pytest.raises(InvalidParameterError, match="required"):
        load_job(params, mask=png(product()))
    ref = Image.new("RGB", (48, 40), (10, 200, 10))
    with pytest.raises(MaskSizeError, match="reference mask"):
        load_job(params, image=png(product()), reference=png(ref), reference_mask=png(Image.new("L", (40, 40))))
    with pytest.raises(FullMaskError, match="reference"):
        load_job(params, image=png(product()), reference=png(ref), reference_mask=png(Image.new("L", (48, 40), 255)))


def test_a_request_over_its_work_budget_is_refused_with_the_figure():
    """Issue #22: a 37 KB PNG of 2800x2800 with 8 placements x 4 images x 8 candidates is about
    100,000 megapixel-steps; it is refused before anything is generated, saying so, and the
    same product in a small request passes."""
    big = Image.new("RGBA", (2800, 2800), (0, 0, 0, 0))
    big.paste((200, 40, 30, 255), (1000, 1000, 1800, 1800))
    data = png(big)
    assert len(data) < 64 * 1024
    eight = "1:1,4:5,16:9,9:16,3:2,2:3,1:2,2:1"
    params = GenerateParams.from_fields({"category": "mug", "num_images": "4", "placements": eight,
                                         "candidates": "8", "format": "json"})
    with pytest.raises(RequestTooLargeError) as err:
        load_job(params, image=data)
    message = err.value.message
    assert "megapixel-steps of work" in message and "x 8 candidates x 50 steps" in message
    assert "over the limit of 20,000" in message
    small = load_job(GenerateParams.from_fields({"category": "mug", "steps": "20"}), image=data)
    assert small.work == pytest.approx(2800 * 2800 / 1e6 * 20)


def test_reference_masks_from_file_alpha_or_none():
    ref = Image.new("RGB", (32, 32), (10, 200, 10))
    assert load_reference(png(ref))[1] is None  # no mask, no alpha: all background
    assert load_reference(png(ref.convert("RGBA")))[1] is None  # opaque alpha: no cut-out, all background
    cut = product(32)
    image, mask = load_reference(png(cut))
    assert image.mode == "RGB" and mask.sum() == 16 * 16
    empty = load_reference(png(ref), png(Image.new("L", (32, 32), 0)))[1]
    assert empty is not None and not empty.any()  # no product in the reference: fine


# --- models ----------------------------------------------------------------------------------------
def test_model_selector_with_a_path_serves_that_model_only(tmp_path, tiny_model):
    from backdrop.registry import RegistryError

    tiny_model.save_pretrained(str(tmp_path / "g"))
    selector = ModelSelector(model_path=str(tmp_path / "g"))
    choice = selector.select()
    assert choice.model_id == str(tmp_path / "g") and choice.version.startswith("path-") and choice.alias is None
    assert choice.name == "g"  # not the server's path
    with pytest.raises(RegistryError, match="versions and aliases need the registry"):
        selector.select(version="2")
    with pytest.raises(InvalidParameterError):
        selector.select(version="two")
    with pytest.raises(InvalidParameterError):
        selector.select(alias="bad alias!")


def test_run_jobs_one_loop_per_steps_and_guidance_and_isolated_failures(tiny_model):
    model = runtime.wrap(tiny_model, "tiny", "1")
    image = png(product())

    def job(**fields):
        return load_job(GenerateParams.from_fields({"category": "mug", "seed": 1, **fields}), image=image)

    jobs = [job(steps=2), job(steps=3), job(steps=2, num_images=2), job(steps=2, guidance=1.0)]
    results = run_jobs(model, jobs)
    assert all(isinstance(r, Generated) for r in results)
    assert [(r.batch_requests, r.batch_images) for r in results] == [(2, 3), (1, 1), (2, 3), (1, 1)]
    assert len({r.loop for r in results}) == 3
    assert len(results[2].images) == 2 and results[2].seeds == [1, 2]
    # same seed in the same loop: the same image up to float rounding. Rows at different batch
    # positions may take different BLAS code paths on CPU, so identical rows can differ by a
    # rounding step after uint8 conversion; identical *requests* answered alone are byte-equal
    # (test_serve checks that), and the product pixels are pasted back exactly in both.
    a, b = (np.asarray(Image.open(io.BytesIO(r.images[0])), np.int16) for r in (results[0], results[2]))
    assert np.abs(a - b).max() <= 2

    bad = job(steps=2)
    bad.product.mask = np.ones((3, 3), np.float32)  # slipped past validation: fails its loop
    results = run_jobs(model, [job(steps=2), bad])
    assert isinstance(results[0], Generated) and isinstance(results[1], Failure)
    assert (results[1].stage, results[1].code) == ("generate", MaskSizeError.code)

    with pytest.raises(UnknownCategoryError):
        check_job(model, load_job(GenerateParams.from_fields({"category": "sofa"}), image=image))


def test_run_jobs_stops_a_loop_whose_callers_all_gave_up(tiny_model):
    model = runtime.wrap(tiny_model, "tiny", "1")
    job = load_job(GenerateParams.from_fields({"category": "mug", "steps": 50}), image=png(product()))
    job.cancelled = True
    result = run_jobs(model, [job])[0]
    assert isinstance(result, Failure) and result.code == runtime.Cancelled.code


# --- placements and best-of-N -------------------------------------------------------------------
@pytest.fixture(scope="module")
def scored_model(tiny_model, tmp_path_factory):
    """A copy of the tiny model carrying a QA scorer fitted on a small synthetic train split."""
    import copy

    from backdrop.demo.synthetic import SyntheticConfig, make_catalog
    from backdrop.quality import qa

    paths = make_catalog(str(tmp_path_factory.mktemp("qa-catalog")),
                         SyntheticConfig(num_categories=3, train_per_category=6, heldout_per_category=0,
                                         pairs_per_category=0))
    model = copy.deepcopy(tiny_model)
    qa.fit_scorer(paths["train"]).attach(model)
    return runtime.wrap(model, "tiny-qa", "1")


def test_run_jobs_answers_each_placement_with_cost_and_qa(scored_model, tiny_model):
    from backdrop.errors import NoScorerError

    image = png(product())
    params = GenerateParams.from_fields({"category": "mug", "seed": 3, "steps": "2", "placements": "1:1, 16:9",
                                         "candidates": "2"})
    assert params.format == "json"  # two images: the envelope
    best, plain = load_job(params, image=image), load_job(GenerateParams.from_fields(
        {"category": "mug", "seed": 3, "steps": 2}), image=image)
    results = run_jobs(scored_model, [best, plain])
    assert len({r.loop for r in results}) == 1  # one (steps, guidance) group, whatever the candidates
    out = results[0]
    assert [o["placement"] for o in out.outputs] == ["1:1", "16:9"] and len(out.images) == 2
    for o, data, (name, placed) in zip(out.outputs, out.images, best.placed):
        got = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert (o["width"], o["height"]) == placed.image.size == (got.shape[1], got.shape[0])
        keep = placed.mask > 0.5
        assert np.array_equal(got[keep], np.asarray(placed.image)[keep])  # the product, bit-identical
        assert o["seed"] == 3 and o["device_seconds"] > 0 and o["qa_passed"] in (True, False)
        assert len(o["candidates"]) == 2 and sum(c["kept"] for c in o["candidates"]) == 1
        assert o["qa_score"] == max(c["scores"]["qa_score"] for c in o["candidates"])
    assert out.outputs[1]["width"] > out.outputs[1]["height"]
    assert results[1].outputs[0]["placement"] == "photo" and len(results[1].outputs[0]["candidates"]) == 1

    bare = runtime.wrap(tiny_model, "tiny", "1")
    with pytest.raises(NoScorerError, match="QA scorer"):
        check_job(bare, best)
    check_job(scored_model, best)


@pytest.mark.parametrize("fields, fragment", [
    ({"placements": "2:0"}, "zero side"),
    ({"placements": "wide"}, "neither a ratio"),
    ({"placements": ",".join(f"{i}:1" for i in range(1, 5)) + ",1:2,1:3,1:4,3:2,2:3"}, "over the limit"),
    ({"candidates": "9"}, "candidates must be"),
    ({"candidates": "0"}, "candidates"),
    ({"placements": "1:1,16:9", "format": "png"}, "format=png answers one image"),
])
def test_placement_and_candidate_fields_are_checked(fields, fragment):
    with pytest.raises(InvalidParameterError, match=fragment):
        GenerateParams.from_fields({"category": "mug", **fields})
