"""The HTTP trust boundary against a live app: schemathesis fuzzing of its own OpenAPI schema,
hostile bodies that used to be 500s, leaks from unauthenticated endpoints, offline /docs, the
input scope and the per-key quota. Real Ray Serve, real HTTP on loopback, a real moto S3.

Every answer must be a JSON error with ``code``, ``message`` and ``request_id`` when it is not
a success, never a 5xx, never a stack trace or a server path.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import urljoin, urlparse

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from serve_stack import API_KEY, apps, deploy, png, product_rgba, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = {"X-API-Key": API_KEY}
MAX_BODY = 8 * 2**20  # room for the 6 MB body of [{},...] to reach the parser
INPUTS = f"backdrop-scope-{uuid.uuid4().hex[:8]}"  # the bucket the app may read under in/


@pytest.fixture(scope="module")
def stack(serve_cluster):
    import boto3

    from backdrop.serving.auth import ApiKeys

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=INPUTS)
    home, url = serve_cluster["home"], serve_cluster["url"]
    model_dir = home / "secret-dir" / "generator"
    tiny_model(seed=3).save_pretrained(str(model_dir))
    common = {"model_path": str(model_dir), "api_key_sha256": [ApiKeys.digest(API_KEY)]}
    with apps("fuzz", "limited"):
        main = deploy("fuzz", "/", {**common, "max_body_bytes": MAX_BODY, "max_steps": 8,
                                    "allowed_uri_prefixes": [f"s3://{INPUTS}/in/"]}, url=url)
        limited = deploy("limited", "/limited", {**common, "rate_per_key_per_s": 0.001, "burst_per_key": 2},
                         url=url)
        yield {"url": main, "limited": limited, "model_dir": str(model_dir), "home": str(home)}


def assert_clean(r: requests.Response, secrets: tuple[str, ...] = ()) -> None:
    """No 5xx; an error is JSON with code, message and request id; no trace, no path, anywhere."""
    assert r.status_code < 500, (r.status_code, r.text[:300])
    text = r.text if "image/png" not in r.headers.get("content-type", "") else ""
    assert "Traceback" not in text and 'File "' not in text and "/site-packages/" not in text
    for s in secrets:
        assert s not in text
    if r.status_code >= 400:
        error = r.json()["error"]
        headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in r.headers.items()}  # schemathesis: lists
        assert error["code"] and error["message"] and error["request_id"] == headers["x-request-id"], r.text


# --- schemathesis ---------------------------------------------------------------------------------
# The schema is the live app's own /openapi.json; every operation is fuzzed with positive and
# negative cases (the generate body in both its JSON and its multipart form). Hypothesis runs
# inside the test (schemathesis' lazy pytest loader does not work with this pytest).
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_the_live_schema(stack, mode):
    schema = schemathesis.openapi.from_url(f"{stack['url']}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/generate", "/v1/models", "/readyz"}
    seen = set()

    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.path != "/v1/generate":
            continue  # the others take no input to get wrong (only the key, tested elsewhere)
        examples = 80 if op.path == "/v1/generate" else 10

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(op.as_strategy(generation_mode=mode))
        def call(case):
            r = case.call(base_url=stack["url"], headers=KEY, timeout=60)
            seen.add((op.path, case.media_type, r.status_code))
            assert_clean(r, (stack["model_dir"], stack["home"]))

        call()
    media = {m for path, m, _ in seen if path == "/v1/generate"}
    assert {"application/json", "multipart/form-data"} <= media, seen


# --- hostile bodies that used to be 500s -------------------------------------------------------------
HOSTILE = {
    "deeply nested": b"[" * 50_000 + b"]" * 50_000,
    "4301-digit integer": b'{"category": "mug", "seed": ' + b"9" * 4301 + b"}",
    "lone surrogate escape": b'{"category": "\\ud800", "image": "aGk="}',
    "lone surrogate key": b'{"\\udfff": 1}',
    "6 MB of empty objects": b"[" + b"{}," * 2_000_000 + b"{}]",
    "invalid utf-8": b'{"category": "\xff\xfe"}',
    "NaN": b'{"category": "mug", "guidance": NaN}',
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_json_is_a_422(stack, case):
    r = requests.post(f"{stack['url']}/v1/generate", data=HOSTILE[case],
                      headers={**KEY, "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert_clean(r)


def test_a_lone_surrogate_in_a_form_field_never_reaches_the_tokenizer(stack):
    image = {"image": ("p.png", png(product_rgba()), "image/png")}
    for field in ({"category": "mug", "prompt": "wood \ud800 table"}, {"category": "mug\udfff"}):
        body = "".join(f'--b\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in field.items())
        raw = body.encode("utf-8", "surrogatepass") + b'--b\r\nContent-Disposition: form-data; name="image"; ' \
            b'filename="p.png"\r\nContent-Type: image/png\r\n\r\n' + image["image"][1] + b"\r\n--b--\r\n"
        r = requests.post(f"{stack['url']}/v1/generate", data=raw, timeout=60,
                          headers={**KEY, "Content-Type": "multipart/form-data; boundary=b"})
        # Starlette decodes a form field that is not UTF-8 as latin-1, so no surrogate can come out
        # of it: the answer is an image or a 4xx, never a failed batch or a 500.
        assert r.status_code in (200, 422), r.text[:300]
        assert_clean(r)


# --- no leaks, offline docs ----------------------------------------------------------------------------
def test_unauthenticated_endpoints_and_models_reveal_no_paths(stack):
    url, secrets = stack["url"], (stack["model_dir"], stack["home"], "secret-dir")
    ready = requests.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert set(ready.json()) <= {"status", "code", "model", "version"}
    for path in ("/healthz", "/readyz", "/", "/openapi.json", "/docs", "/nope"):
        assert_clean(requests.get(f"{url}{path}"), secrets)
    models = requests.get(f"{url}/v1/models", headers=KEY)
    assert models.status_code == 200 and models.json()["default"]["reference"] == "path:generator"
    assert_clean(models, secrets)


def test_docs_work_offline_from_same_origin_assets(stack):
    url = stack["url"]
    page = requests.get(f"{url}/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", page.text)
    refs = [a or b for a, b in refs]
    assert any(r.endswith("swagger-ui-bundle.js") for r in refs) and any(r.endswith(".css") for r in refs)
    for ref in refs:
        absolute = urljoin(f"{url}/docs", ref)
        assert urlparse(absolute).netloc == urlparse(url).netloc, ref  # no CDN, no third party
        assert requests.get(absolute).status_code == 200, ref


# --- scoped inputs --------------------------------------------------------------------------------------
def test_remote_inputs_only_inside_the_scope_and_one_answer_for_the_rest(stack):
    from backdrop import storage

    image = png(product_rgba())
    storage.write_bytes(f"s3://{INPUTS}/in/p.png", image)
    storage.write_bytes(f"s3://{INPUTS}/private/p.png", image)
    body = {"category": "mug", "steps": 2, "seed": 1}
    ok = requests.post(f"{stack['url']}/v1/generate", json={**body, "image": f"s3://{INPUTS}/in/p.png"},
                       headers=KEY, timeout=120)
    assert ok.status_code == 200, ok.text
    messages = set()
    for uri in (f"s3://{INPUTS}/private/p.png", f"s3://{INPUTS}/in/missing.png", f"s3://{INPUTS}/in/../private/p.png",
                f"s3://{INPUTS}-other/in/p.png", f"s3://{INPUTS}/in/%2e%2e/private/p.png"):
        r = requests.post(f"{stack['url']}/v1/generate", json={**body, "image": uri}, headers=KEY, timeout=60)
        assert r.status_code == 422, r.text
        assert_clean(r)
        messages.add((r.json()["error"]["code"], r.json()["error"]["message"]))
    assert len(messages) == 1, messages  # refused or missing: the same answer
    for local in ("/etc/hostname", "file:///etc/hostname", stack["model_dir"] + "/backdrop.json"):
        r = requests.post(f"{stack['url']}/v1/generate", json={**body, "image": local}, headers=KEY, timeout=60)
        assert r.status_code == 422 and "fetch_error" != r.json()["error"]["code"], r.text  # never read


# --- per-key quota ----------------------------------------------------------------------------------------
def test_a_key_over_its_rate_gets_429_with_retry_after(stack):
    url = stack["limited"]
    first = [requests.get(f"{url}/v1/models", headers=KEY) for _ in range(2)]  # the burst
    assert [r.status_code for r in first] == [200, 200]
    r = requests.get(f"{url}/v1/models", headers=KEY)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
    assert int(r.headers["Retry-After"]) >= 1
    assert_clean(r)
    assert requests.get(f"{url}/healthz").status_code == 200  # probes are not rationed
