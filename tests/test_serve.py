"""The backdrop HTTP service end to end: a real Ray Serve on a local Ray, real HTTP.

Three applications share one Serve instance:

* ``backdrop`` at ``/``: models from a temporary MLflow registry (v1 = champion,
  v2 = challenger), batching with a generous wait so that concurrent requests meet;
* ``tight`` at ``/tight``: one saved generator (``model_path``), one request at a time and a
  queue of one: for overload (503 + Retry-After) and the client's retries;
* ``timeout`` at ``/timeout``: another ingress in front of the ``tight`` generator with a 5 s
  request timeout: for timeouts (504).

No test depends on how fast the machine is: where a request must be running, queued or late,
the test holds the generator (``serve_stack.Hold``, the app's ``TestHold``) and releases it
itself. The request timeouts that are not under test are hang guards (300 s).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from serve_stack import (
    API_KEY,
    OTHER_KEY,
    Hold,
    apps,
    decode,
    deploy,
    deploy_ingress,
    png,
    product_mask,
    product_rgba,
    reference_rgb,
    register_version,
    register_versions,
    serve_log_files,
    tiny_model,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_BODY = 2 * 2**20
KEY = {"X-API-Key": API_KEY}
TIMEOUT_S = 5  # the ``timeout`` app's: a held request always outlasts it; reaching the hold takes far less
INPUTS = "s3://backdrop-serve-inputs"  # the one bucket (under in/) the main app may read


@pytest.fixture(scope="module")
def stack(serve_cluster):
    import boto3

    from backdrop.serving.auth import ApiKeys

    home, url = serve_cluster["home"], serve_cluster["url"]
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=INPUTS[5:])
    versions = register_versions(2)
    model_dir = home / "saved-generator"
    tiny_model(seed=5).save_pretrained(str(model_dir))
    with apps("backdrop", "tight", "timeout"):
        main = deploy("backdrop", "/", {
            "api_key_sha256": [ApiKeys.digest(API_KEY)],
            "alias_ttl_s": 0,
            "max_body_bytes": MAX_BODY,
            "max_image_bytes": MAX_BODY,
            "max_pixels": 1_000_000,
            "max_steps": 400,
            "request_timeout_s": 300,
            "hold_dir": str(home / "hold-main"),
            "allowed_aliases": ["challenger"],  # other aliases and versions are off unless listed
            "allowed_versions": ["*"],
            "allowed_uri_prefixes": [f"{INPUTS}/in/"],  # remote inputs are off unless listed
            "allowed_styles": ["acme", "initech"],  # brand kits are off unless listed
            "styles_by_key": {ApiKeys.digest(OTHER_KEY): []},  # ... and this key may use none
        }, generator={"max_ongoing_requests": 16, "max_queued_requests": 64,
                      "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.25}}, url=url)
        tight_args = {
            "model_path": str(model_dir),
            "api_key_sha256": [ApiKeys.digest(API_KEY)],
            "request_timeout_s": 300,
            "retry_after_s": 1,
            "max_steps": 500,
            "hold_dir": str(home / "hold-tight"),
            "generator_num_cpus": 0.25,
        }
        tight = deploy("tight", "/tight", tight_args,
                       generator={"max_ongoing_requests": 1, "max_queued_requests": 1,
                                  "backpressure_config": {"status_code": 503, "retry_after_s": 1},
                                  "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}, url=url)
        timeout = deploy_ingress("timeout", "/timeout", {**tight_args, "request_timeout_s": TIMEOUT_S},
                                 generator_app="tight", url=url)
        yield {"url": main, "tight": tight, "timeout": timeout, "versions": versions,
               "hold_main": home / "hold-main", "hold_tight": home / "hold-tight"}


def generate(base: str, *, files: dict | None = None, data: dict | None = None, headers: dict | None = None,
             timeout: float = 120) -> requests.Response:
    files = files if files is not None else {"image": ("product.png", png(product_rgba()), "image/png")}
    data = {"category": "mug", "steps": "2", "seed": "7", **(data or {})}
    return requests.post(f"{base}/v1/generate", files=files, data=data, headers={**KEY, **(headers or {})},
                         timeout=timeout)


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()["error"]
    if code:
        assert body["code"] == code, body
    assert body["message"] and "Traceback" not in r.text and 'File "' not in r.text
    assert body["request_id"] == r.headers["X-Request-Id"]
    return body


# --- probes, page, auth -----------------------------------------------------------------------
def test_probes_and_page_need_no_key(stack):
    url = stack["url"]
    assert requests.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{url}/readyz").json()
    assert ready == {"status": "ready", "model": "backdrop", "version": stack["versions"][0]}
    page = requests.get(f"{url}/")
    assert page.status_code == 200 and "backdrop" in page.text and "api-key" in page.text
    assert requests.get(f"{url}/static/app.js").status_code == 200
    assert "/v1/generate" in requests.get(f"{url}/openapi.json").json()["paths"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdA=="}])
def test_requests_without_a_valid_key_get_401(stack, headers):
    r = requests.get(f"{stack['url']}/v1/models", headers=headers)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.post(f"{stack['url']}/v1/generate", headers=headers,
                      files={"image": ("p.png", png(product_rgba()), "image/png")}, data={"category": "mug"})
    assert_error(r, 401, "unauthorized")


def test_keys_from_config_env_header_and_bearer(stack):
    for headers in ({"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": OTHER_KEY}):
        assert requests.get(f"{stack['url']}/v1/models", headers=headers).status_code == 200


def test_models_lists_default_aliases_versions_and_categories(stack):
    info = requests.get(f"{stack['url']}/v1/models", headers=KEY).json()
    v1, v2 = stack["versions"]
    assert info["model"] == "backdrop" and info["source"] == "registry"
    assert info["default"]["version"] == v1 and info["default"]["categories"] == ["mug", "lamp", "watch"]
    assert info["aliases"] == {"challenger": v2, "champion": v1}
    assert info["versions"] == [v2, v1]
    assert v1 in info["loaded"]
    assert info["limits"]["max_request_work"] > 0  # the budget, and best-of-N's memory bound
    assert info["limits"]["candidate_bytes_in_flight"] == 3 * info["limits"]["candidate_pixels_in_flight"] > 0
    assert requests.get(f"{stack['url']}/v1/limits", headers=KEY).json() == info["limits"]
    assert requests.get(f"{stack['url']}/v1/limits").status_code == 401


# --- happy paths -------------------------------------------------------------------------------
def test_generate_without_reference_answers_a_png_with_lineage_headers(stack):
    r = generate(stack["url"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["X-Backdrop-Model"] == "backdrop"
    assert r.headers["X-Backdrop-Model-Version"] == stack["versions"][0]
    assert r.headers["X-Backdrop-Model-Alias"] == "champion"
    assert r.headers["X-Backdrop-Seed"] == "7" and r.headers["X-Backdrop-Scheduler"] == "ddim"
    assert int(r.headers["X-Backdrop-Batch-Size"]) >= 1
    assert r.headers["X-Request-Id"] and "generate;dur=" in r.headers["Server-Timing"]
    out = decode(r.content)
    src = np.asarray(product_rgba())[..., :3]
    keep = product_mask()
    assert out.shape == src.shape
    assert np.array_equal(out[keep], src[keep])  # the product's pixels, bit-identical
    assert not np.array_equal(out[~keep], src[~keep])  # a new background


def test_generate_with_reference_and_masks_as_json(stack):
    image = product_rgba().convert("RGB")
    mask = Image.fromarray(product_mask().astype(np.uint8) * 255)
    ref_mask = np.zeros((64, 64), np.uint8)
    ref_mask[21:43, 21:43] = 255
    files = {"image": ("p.png", png(image), "image/png"), "mask": ("m.png", png(mask), "image/png"),
             "reference": ("r.png", png(reference_rgb()), "image/png"),
             "reference_mask": ("rm.png", png(Image.fromarray(ref_mask)), "image/png")}
    r = generate(stack["url"], files=files, data={"num_images": "2", "format": "json", "prompt": "warm light"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "backdrop", "version": stack["versions"][0], "alias": "champion"}
    assert [i["seed"] for i in body["images"]] == [7, 8]
    a, b = (decode(base64.b64decode(i["data"])) for i in body["images"])
    keep = product_mask()
    assert np.array_equal(a[keep], np.asarray(image)[keep]) and np.array_equal(b[keep], np.asarray(image)[keep])
    assert not np.array_equal(a, b)  # two seeds, two backgrounds
    plain = generate(stack["url"], files={"image": ("p.png", png(image), "image/png"),
                                          "mask": ("m.png", png(mask), "image/png")})
    assert not np.array_equal(decode(plain.content), a)  # the reference changes the background


def test_same_seed_and_version_give_identical_bytes(stack):
    first, second = generate(stack["url"]), generate(stack["url"])
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    other = generate(stack["url"], data={"seed": "8"})
    assert other.content != first.content


def test_json_body_with_base64_and_s3_uris(stack, s3_bucket):
    from backdrop import storage

    uri = f"{INPUTS}/in/product.png"
    storage.write_bytes(uri, png(product_rgba()))
    body = {"image": uri, "reference": base64.b64encode(png(reference_rgb())).decode(), "category": "lamp",
            "steps": 2, "seed": 3, "format": "json"}
    r = requests.post(f"{stack['url']}/v1/generate", json=body, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["seed"] == 3 and len(r.json()["images"]) == 1
    as_png = requests.post(f"{stack['url']}/v1/generate", headers=KEY,
                           json={**body, "format": "png", "image": "data:image/png;base64,"
                                 + base64.b64encode(png(product_rgba())).decode()})
    assert as_png.headers["Content-Type"] == "image/png"
    assert as_png.content == base64.b64decode(r.json()["images"][0]["data"])  # same pixels either way
    assert_error(requests.post(f"{stack['url']}/v1/generate", headers=KEY, json={**body, "image": "/etc/passwd.png"}),
                 422)  # not base64: never read as a server path
    assert_error(requests.post(f"{stack['url']}/v1/generate", headers=KEY, json={**body, "image": "file:///etc/x"}),
                 422, "invalid_parameter")
    assert_error(requests.post(f"{stack['url']}/v1/generate", headers=KEY,
                               json={**body, "image": f"{s3_bucket}/missing.png"}), 422, "fetch_error")


# --- bad input: 413 / 415 / 422, never a 500 ----------------------------------------------------------
def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    product_rgba().convert("RGB").convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _grey16() -> bytes:
    a = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    image = Image.fromarray(a)
    assert image.mode == "I;16"
    return png(image)


def _float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((64, 64), dtype=np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def _mask(shape=(64, 64), value=None) -> bytes:
    m = product_mask(shape[0]).astype(np.uint8) * 255 if value is None else np.full(shape, value, np.uint8)
    return png(Image.fromarray(m))


def _file(data: bytes, name: str = "f.png"):
    return (name, data, "application/octet-stream")


GOOD = png(product_rgba())
OPAQUE = png(product_rgba().convert("RGB"))

BAD_INPUTS = {
    "corrupt bytes": ({"image": _file(b"\x89PNG\r\n\x1a\n not really")}, {}, 415, "corrupt_image"),
    "truncated png": ({"image": _file(GOOD[: len(GOOD) // 2])}, {}, 415, "corrupt_image"),
    "float tiff": ({"image": _file(_float_tiff()), "mask": _file(_mask())}, {}, 415, "unsupported_image"),
    "text file": ({"image": _file(b"hello, I am not an image", "x.txt")}, {}, 415, "corrupt_image"),
    "no mask, no alpha": ({"image": _file(OPAQUE)}, {}, 422, "missing_mask"),
    "mask of the wrong size": ({"image": _file(OPAQUE), "mask": _file(_mask((32, 64), 255))}, {}, 422,
                               "mask_size_mismatch"),
    "empty mask": ({"image": _file(OPAQUE), "mask": _file(_mask(value=0))}, {}, 422, "empty_mask"),
    "full mask": ({"image": _file(OPAQUE), "mask": _file(_mask(value=255))}, {}, 422, "full_mask"),
    "full reference mask": ({"image": _file(GOOD), "reference": _file(png(reference_rgb())),
                             "reference_mask": _file(_mask(value=255))}, {}, 422, "full_mask"),
    "reference mask of the wrong size": ({"image": _file(GOOD), "reference": _file(png(reference_rgb())),
                                          "reference_mask": _file(_mask((48, 48), 0))}, {}, 422,
                                         "mask_size_mismatch"),
    "reference mask without reference": ({"image": _file(GOOD), "reference_mask": _file(_mask())}, {}, 422,
                                         "invalid_parameter"),
    "unknown category": ({}, {"category": "sofa"}, 422, "unknown_category"),
    "missing category": ({}, {"category": ""}, 422, "invalid_parameter"),
    "no image": ({"mask": _file(_mask())}, {}, 422, "invalid_parameter"),
    "steps 0": ({}, {"steps": "0"}, 422, "invalid_parameter"),
    "steps over the limit": ({}, {"steps": "401"}, 422, "invalid_parameter"),
    "steps not a number": ({}, {"steps": "many"}, 422, "invalid_parameter"),
    "guidance negative": ({}, {"guidance": "-1"}, 422, "invalid_parameter"),
    "guidance nan": ({}, {"guidance": "nan"}, 422, "invalid_parameter"),
    "seed negative": ({}, {"seed": "-5"}, 422, "invalid_parameter"),
    "too many images": ({}, {"num_images": "9"}, 422, "invalid_parameter"),
    "png for several images": ({}, {"num_images": "2", "format": "png"}, 422, "invalid_parameter"),
    "unknown format": ({}, {"format": "gif"}, 422, "invalid_parameter"),
    "best-of-N without a QA scorer": ({}, {"candidates": "2"}, 422, "no_qa_scorer"),
    "too many candidates": ({}, {"candidates": "9"}, 422, "invalid_parameter"),
    "bad placement": ({}, {"placements": "16:0"}, 422, "invalid_parameter"),
    "png for two placements": ({}, {"placements": "1:1,16:9", "format": "png"}, 422, "invalid_parameter"),
    "unknown field": ({}, {"step": "3"}, 422, "invalid_parameter"),
    "prompt too long": ({}, {"prompt": "x" * 501}, 422, "invalid_parameter"),
    "too many pixels": ({"image": _file(png(Image.new("RGBA", (1200, 1000))))}, {}, 413, "image_too_large"),
    "body over the limit": ({"image": _file(GOOD + b"\0" * MAX_BODY)}, {}, 413, "payload_too_large"),
}


def test_one_image_per_placement_with_its_size_and_cost(stack):
    r = generate(stack["url"], files={"image": _file(GOOD)},
                 data={"placements": "1:1,9:16", "seed": "4", "steps": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert [(i["placement"], i["seed"]) for i in body["images"]] == [("1:1", 4), ("9:16", 4)]
    for image in body["images"]:
        w, h = Image.open(io.BytesIO(base64.b64decode(image["data"]))).size
        assert (image["width"], image["height"]) == (w, h) and image["device_seconds"] > 0
        assert image["qa_score"] is None and image["qa_passed"] is None  # this model has no QA scorer
    assert body["images"][0]["width"] == body["images"][0]["height"] and body["images"][1]["height"] > \
        body["images"][1]["width"]
    assert body["device_seconds"] == pytest.approx(sum(i["device_seconds"] for i in body["images"]), abs=1e-5)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_readable_4xx(stack, case):
    files, data, status, code = BAD_INPUTS[case]
    files = files or {"image": _file(GOOD)}
    r = generate(stack["url"], files=files, data=data)
    body = assert_error(r, status, code)
    assert len(body["message"]) > 10


def test_unusual_but_valid_images_are_accepted(stack):
    """CMYK JPEG and 16-bit greyscale are converted (see backdrop.imaging), not refused."""
    for image in (_cmyk_jpeg(), _grey16()):
        r = generate(stack["url"], files={"image": _file(image, "p.img"), "mask": _file(_mask())})
        assert r.status_code == 200, r.text
        assert decode(r.content).shape == (64, 64, 3)


def test_malformed_requests(stack):
    url = f"{stack['url']}/v1/generate"
    assert_error(requests.post(url, data="hello", headers={**KEY, "Content-Type": "text/plain"}), 415,
                 "unsupported_media_type")
    assert_error(requests.post(url, data="{not json", headers={**KEY, "Content-Type": "application/json"}), 422)
    assert_error(requests.post(url, json=[1, 2], headers=KEY), 422)
    assert_error(requests.post(url, data=b"--x\r\nbroken", headers={
        **KEY, "Content-Type": "multipart/form-data; boundary=x"}), 422)  # no image in it
    # a chunked body (no Content-Length) is counted as it streams in
    r = requests.post(url, data=iter([b"{" + b" " * (MAX_BODY + 10) + b"}"]),
                      headers={**KEY, "Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert requests.get(f"{stack['url']}/healthz").status_code == 200  # still up


# --- versions ------------------------------------------------------------------------------------
def test_a_header_picks_another_version_through_multiplexing(stack):
    v1, v2 = stack["versions"]
    default = generate(stack["url"])
    by_version = generate(stack["url"], headers={"X-Backdrop-Model-Version": v2})
    by_alias = generate(stack["url"], headers={"X-Backdrop-Model-Alias": "challenger"})
    assert default.headers["X-Backdrop-Model-Version"] == v1
    assert by_version.headers["X-Backdrop-Model-Version"] == v2 and "X-Backdrop-Model-Alias" not in by_version.headers
    assert by_alias.headers["X-Backdrop-Model-Version"] == v2 and by_alias.headers["X-Backdrop-Model-Alias"] == "challenger"
    assert by_version.content == by_alias.content != default.content  # another model, other pixels
    assert_error(generate(stack["url"], headers={"X-Backdrop-Model-Version": "99"}), 404, "unknown_model")
    assert_error(generate(stack["url"], headers={"X-Backdrop-Model-Alias": "nope"}), 403, "model_not_allowed")
    assert_error(generate(stack["url"], headers={"X-Backdrop-Model-Version": "two"}), 422, "invalid_parameter")
    info = requests.get(f"{stack['url']}/v1/models", headers=KEY).json()
    assert set(info["loaded"]) == {v1, v2}


def test_a_version_of_another_model_family_is_served_by_the_same_deployment(stack):
    """The model-family seam over HTTP: an SDXL-shaped generator (two text encoders, added
    conditions) registered as a new version is loaded and run by the same generator deployment
    and runtime; its product pixels are kept like any other version's."""
    from backdrop import registry

    registry.configure()  # the stack's own store
    version = register_version(7, family="sdxl-inpainting")
    r = generate(stack["url"], headers={"X-Backdrop-Model-Version": version})
    assert r.status_code == 200, r.text[:500]
    assert r.headers["X-Backdrop-Model-Version"] == version
    keep = product_mask()
    assert np.array_equal(decode(r.content)[keep], np.asarray(product_rgba().convert("RGB"))[keep])
    assert r.content != generate(stack["url"]).content


def test_a_brand_style_by_name_gives_the_pixels_of_its_reference_sent_inline(stack, tmp_path):
    """A kit is the same reference without the upload: the style's answer is byte-identical to
    the request that sends the kit's pick for that seed inline. A moved kit is seen at once
    (alias_ttl_s is 0 here); kits outside a key's scope are 403, unknown ones 404."""
    from backdrop import brands, registry

    registry.configure()  # the stack's own store
    (tmp_path / "a.png").write_bytes(png(reference_rgb()))
    (tmp_path / "b.png").write_bytes(png(reference_rgb().transpose(Image.FLIP_TOP_BOTTOM)))
    brands.add_kit("acme", [str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    brands.add_kit("globex", [str(tmp_path / "a.png")])

    styled = generate(stack["url"], data={"style": "acme", "seed": "7"})
    assert styled.status_code == 200, styled.text[:500]
    assert styled.headers["X-Backdrop-Style"] == "acme/1"
    reference = brands.load_kit("acme", "1").pick(7)[0]
    inline = generate(stack["url"], files={"image": ("p.png", png(product_rgba()), "image/png"),
                                           "reference": ("r.png", reference, "image/png")}, data={"seed": "7"})
    assert inline.status_code == 200 and "X-Backdrop-Style" not in inline.headers
    assert styled.content == inline.content
    as_json = generate(stack["url"], data={"style": "acme/1", "seed": "7", "format": "json"}).json()
    assert as_json["style"] == "acme/1"

    brands.add_kit("acme", [str(tmp_path / "b.png")])  # current -> 2
    assert generate(stack["url"], data={"style": "acme", "seed": "7"}).headers["X-Backdrop-Style"] == "acme/2"

    assert_error(generate(stack["url"], data={"style": "globex"}), 403, "style_not_allowed")
    assert_error(generate(stack["url"], data={"style": "acme"}, headers={"X-API-Key": OTHER_KEY}), 403,
                 "style_not_allowed")
    assert_error(generate(stack["url"], data={"style": "initech"}), 404, "unknown_style")
    assert_error(generate(stack["url"], data={"style": "acme@autumn"}), 404, "unknown_style")
    for hostile in ("../acme", "acme/../../etc", "ACME", "a" * 200, "acme@x y"):
        assert_error(generate(stack["url"], data={"style": hostile}), 422)
    both = generate(stack["url"], files={"image": ("p.png", png(product_rgba()), "image/png"),
                                         "reference": ("r.png", reference, "image/png")}, data={"style": "acme"})
    assert_error(both, 422, "invalid_parameter")

    listed = requests.get(f"{stack['url']}/v1/styles", headers=KEY).json()["styles"]
    assert [(k["name"], k["aliases"]) for k in listed] == [("acme", {"current": "2"})]
    assert requests.get(f"{stack['url']}/v1/styles", headers={"X-API-Key": OTHER_KEY}).json() == {"styles": []}


def test_champion_moves_mid_run_without_dropping_in_flight_requests(stack):
    from mlflow.tracking import MlflowClient

    from backdrop import registry

    v1, v2 = stack["versions"]
    registry.configure()
    client = MlflowClient()
    with cf.ThreadPoolExecutor(4) as pool, Hold(stack["hold_main"]) as hold:
        in_flight = [pool.submit(generate, stack["url"], data={"steps": "3", "seed": str(s)}) for s in (1, 2)]
        # both were resolved to v1 and are inside the generator, held before their denoising loop
        arrived = hold.wait_for("arrived", 2)
        assert sorted(a["seeds"][0] for a in arrived) == [1, 2] and all(a["model_id"].endswith("/" + v1) for a in arrived)
        client.set_registered_model_alias("backdrop", "champion", v2)
        try:
            late = pool.submit(generate, stack["url"])  # resolved after the move, while they are in flight
            arrived = hold.wait_for("arrived", 3)
            assert arrived[-1]["model_id"].endswith("/" + v2) and arrived[-1]["seeds"] == [7], arrived
            assert not any(f.done() for f in in_flight)
            hold.release()
            after = late.result()
            assert after.status_code == 200 and after.headers["X-Backdrop-Model-Version"] == v2
            for f in in_flight:
                r = f.result()
                assert r.status_code == 200 and r.headers["X-Backdrop-Model-Version"] == v1
            assert requests.get(f"{stack['url']}/readyz").json()["version"] == v2
        finally:
            client.set_registered_model_alias("backdrop", "champion", v1)


# --- batching, overload, timeouts ---------------------------------------------------------------------
def test_concurrent_requests_share_denoising_loops_grouped_by_steps_and_guidance(stack):
    """Arrival is controlled, not timed: one request is held in the generator while seven more
    arrive; released, those seven form the next batch together, one loop per steps value."""
    jobs = [{"steps": "3", "seed": str(i)} for i in range(4)] + [{"steps": "4", "seed": str(i)} for i in range(3)]
    with cf.ThreadPoolExecutor(len(jobs) + 1) as pool, Hold(stack["hold_main"]) as hold:
        first = pool.submit(generate, stack["url"], data={"steps": "2", "seed": "99"})
        hold.wait_for("entered", 1)  # the generator's one batch slot is busy (held)
        futures = [(data, pool.submit(generate, stack["url"], data=data)) for data in jobs]
        hold.wait_for("arrived", 1 + len(jobs))  # all seven wait for the next batch
        hold.release()
        answers = [(data, f.result()) for data, f in futures]
        assert first.result().status_code == 200
    sizes = {}
    for data, r in answers:
        assert r.status_code == 200, r.text
        sizes.setdefault(data["steps"], []).append(int(r.headers["X-Backdrop-Batch-Size"]))
    assert sizes == {"3": [4] * 4, "4": [3] * 3}  # batched across requests, only within a loop's steps
    alone = generate(stack["url"], data={"steps": "3", "seed": "0"})
    batched = next(r for d, r in answers if d == {"steps": "3", "seed": "0"})
    assert np.array_equal(decode(alone.content), decode(batched.content))  # batch mates change no pixel


def _done_when(futures: list, count: int):
    """The futures that are done, once at least ``count`` are (for ``wait_until``)."""
    done = [f for f in futures if f.done()]
    return done if len(done) >= count else None


def test_overload_is_shed_with_503_and_retry_after_then_recovers(stack):
    """One request held in the generator, one in the queue of one: every other gets 503 at once."""
    url, n = stack["tight"], 12
    with cf.ThreadPoolExecutor(n) as pool, Hold(stack["hold_tight"]) as hold:
        first = pool.submit(generate, url, data={"seed": "100"})
        hold.wait_for("entered", 1)  # running (held) in the generator: its one request slot is taken
        rest = [pool.submit(generate, url, data={"seed": str(100 + i)}) for i in range(1, n)]
        shed = wait_until(lambda: _done_when(rest, n - 2), what=f"{n - 2} answers while held")
        assert len(shed) == n - 2 and not first.done()  # the held one and the queued one still wait
        for f in shed:
            assert_error(f.result(), 503, "overloaded")
            assert f.result().headers["Retry-After"] == "1"
        (queued,) = [f for f in rest if f not in shed]
        hold.release()
        admitted = [first.result(), queued.result()]
    assert [r.status_code for r in admitted] == [200, 200]
    assert admitted[0].headers["X-Backdrop-Seed"] == "100"
    assert admitted[1].headers["X-Backdrop-Seed"] == str(100 + 1 + rest.index(queued))
    assert [e["seeds"] for e in hold.markers("entered")] == [[[100]]]  # the one batch that was held
    assert generate(url).status_code == 200  # answers normally afterwards


def test_client_retries_503_after_retry_after(stack):
    """The queue is full (one held, one queued) when the client calls: its first attempt gets 503
    with Retry-After; the hold is released only once the client has seen it; a retry succeeds."""
    import logging

    from backdrop.client import BackdropClient

    url = stack["tight"]
    saw_503 = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "answered 503" in record.getMessage():
                saw_503.set()

    watch, client_log = Watch(), logging.getLogger("backdrop.client")
    level = client_log.level
    client_log.addHandler(watch)
    client_log.setLevel(logging.INFO)
    try:
        with cf.ThreadPoolExecutor(8) as pool, Hold(stack["hold_tight"]) as hold:
            busy = pool.submit(generate, url, data={"seed": "1"})
            hold.wait_for("entered", 1)
            fillers = [pool.submit(generate, url, data={"seed": str(s)}) for s in range(2, 6)]
            shed = wait_until(lambda: _done_when(fillers, 3), what="the queue of one to fill")
            assert all(f.result().status_code == 503 for f in shed)  # so the fourth filler is queued
            (queued,) = [f for f in fillers if f not in shed]
            client = BackdropClient(url, API_KEY, max_retries=100, max_wait_s=600)
            call = pool.submit(client.generate, product_rgba(), category="watch", steps=2, seed=1)
            assert saw_503.wait(timeout=180), "the client never saw a 503"
            assert not call.done()  # it waits Retry-After, then tries again
            hold.release()
            answer = call.result()
            assert busy.result().status_code == 200 and queued.result().status_code == 200
    finally:
        client_log.removeHandler(watch)
        client_log.setLevel(level)
    assert answer.attempts > 1 and len(answer.images) == 1 and answer.seeds == [1]


def test_a_request_over_the_timeout_gets_504_and_its_loop_is_abandoned(stack):
    """Held past the ``timeout`` app's request timeout: 504. Once released, its 500-step loop stops
    before its first step (its caller gave up), and the shared generator answers the next request."""
    with Hold(stack["hold_tight"]) as hold:
        assert_error(generate(stack["timeout"], data={"steps": "500", "seed": "9"}), 504, "timeout")
        (entered,) = hold.markers("entered")  # it was in its batch, held, when it timed out
        assert entered["steps"] == [500] and entered["seeds"] == [[9]]
    (done,) = hold.wait_for("done", 1)
    assert len(done["results"]) == 1 and done["results"][0].startswith("cancelled: "), done
    assert done["results"][0].endswith("gave up at step 1/500")  # one step, not 500
    r = generate(stack["tight"])  # the same generator replica, free again
    assert r.status_code == 200


# --- client, CLI, logs, metrics --------------------------------------------------------------------
def test_python_client_and_cli(stack, tmp_path):
    from backdrop.cli import main
    from backdrop.client import BackdropClient, ServiceError

    client = BackdropClient(stack["url"], API_KEY)
    answer = client.generate(product_rgba(), category="lamp", reference=png(reference_rgb()), steps=2, seed=11,
                             num_images=2)
    assert answer.version == stack["versions"][0] and answer.seeds == [11, 12] and len(answer.images) == 2
    assert client.models()["default"]["categories"] == ["mug", "lamp", "watch"]
    with pytest.raises(ServiceError) as e:
        client.generate(product_rgba(), category="sofa", steps=2)
    assert e.value.status == 422 and e.value.code == "unknown_category" and e.value.request_id
    (tmp_path / "p.png").write_bytes(png(product_rgba()))
    out = tmp_path / "out.png"
    assert main(["call", "--url", stack["url"], "--api-key", API_KEY, "--image", str(tmp_path / "p.png"),
                 "--category", "mug", "--steps", "2", "--seed", "7", "--output", str(out)]) == 0
    assert out.read_bytes() == generate(stack["url"]).content
    assert main(["call", "--url", stack["url"], "--api-key", "bad", "--image", str(tmp_path / "p.png"),
                 "--category", "mug"]) == 1

    # every option through the client and the CLI (tests/test_front_doors.py walks the table)
    answer = client.generate(product_rgba(), category="mug", steps=2, guidance=1.5, scheduler="dpm++", seed=3,
                             placements=["1:1", "16:9"], candidates=1, image_format="webp", quality=90)
    assert answer.placements == ["1:1", "16:9"] and answer.media_type == "image/webp"
    assert [Image.open(io.BytesIO(i)).format for i in answer.images] == ["WEBP", "WEBP"]
    assert [Image.open(io.BytesIO(i)).size[0] / Image.open(io.BytesIO(i)).size[1] for i in answer.images] == \
        pytest.approx([1.0, 16 / 9], rel=0.05)
    out = tmp_path / "ad.jpg"
    assert main(["call", "--url", stack["url"], "--api-key", API_KEY, "--image", str(tmp_path / "p.png"),
                 "--category", "mug", "--steps", "2", "--scheduler", "unipc", "--placements", "1:1",
                 "--candidates", "1", "--image-format", "jpeg", "--quality", "80", "--output", str(out)]) == 0
    assert Image.open(out).format == "JPEG"


def test_one_log_line_per_request_with_its_id_and_never_the_key(stack):
    r = generate(stack["url"], data={"category": "sofa"})
    request_id = r.headers["X-Request-Id"]

    def request_lines():  # Serve writes its log files asynchronously: poll until the line is there
        return [line for f in serve_log_files() if f.parent.name == "serve"
                for line in f.read_text(errors="replace").splitlines()
                if '"event":"request"' in line and request_id in line]

    lines = wait_until(request_lines, what=f"the log line of request {request_id}")
    assert len(lines) == 1, lines
    record = json.loads(lines[0][lines[0].index("{"):])
    assert record["request_id"] == request_id and record["path"] == "/v1/generate"
    assert record["status"] == 422 and record["error"] == "unknown_category" and record["key_id"]
    for f in serve_log_files():  # the Serve logs and every worker's stdout/stderr
        text = f.read_text(errors="replace")
        assert API_KEY not in text and OTHER_KEY not in text, f


def test_metrics_reach_rays_prometheus_endpoint(stack):
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    wanted = ("backdrop_requests", "backdrop_request_latency_ms", "backdrop_batch_size",
              "backdrop_generator_queue_depth")

    assert generate(stack["url"]).status_code == 200 and generate(stack["url"], data={"category": "sofa"}).status_code == 422

    def requests_by_status(text: str) -> set[str]:
        return {s for line in text.splitlines() if "backdrop_requests" in line and not line.startswith("#")
                for s in ("200", "422") if f'status="{s}"' in line}

    def complete():  # exported periodically: poll until every metric (and both statuses) has appeared
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        return text if all(w in text for w in wanted) and requests_by_status(text) == {"200", "422"} else None

    text = wait_until(complete, what=f"all of {wanted} on the metrics endpoint")
    assert 'status="422"' in text and 'status="200"' in text


# --- last: this test deletes a registry version ---------------------------------------------------
def test_deleting_the_champions_version_keeps_serving_it_and_readyz_says_degraded(stack):
    """Deleting the champion's version deletes the alias with it: the service keeps serving the
    version the alias last resolved to (the replica still holds it), and says so on /readyz."""
    from mlflow.tracking import MlflowClient

    from backdrop import registry

    ready = requests.get(f"{stack['url']}/readyz").json()
    assert ready["status"] == "ready"
    champion = ready["version"]
    assert generate(stack["url"]).headers["X-Backdrop-Model-Version"] == champion  # loaded, and resolved once

    registry.configure()  # the stack's own store (its BACKDROP_HOME is this process's while it runs)
    MlflowClient().delete_model_version("backdrop", champion)
    with pytest.raises(Exception):
        MlflowClient().get_model_version_by_alias("backdrop", "champion")  # the alias went with it

    degraded = requests.get(f"{stack['url']}/readyz")  # alias_ttl_s is 0: every call resolves again
    assert degraded.status_code == 200
    assert degraded.json() == {"status": "degraded", "code": "alias_unresolved", "model": "backdrop",
                               "version": champion}
    r = generate(stack["url"])
    assert r.status_code == 200 and r.headers["X-Backdrop-Model-Version"] == champion
