"""The HTTP service's trust boundary without HTTP: the JSON parser, the parameter model, the
input scope, the per-key quota and model selection, with hypothesis generating hostile input."""

from __future__ import annotations

import json
import string

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backdrop.errors import InvalidInputError, InvalidParameterError
from backdrop.limits import DEFAULT_GUIDANCE, Limits
from backdrop.serving.models import ModelNotAllowed, ModelSelector, normalise_version
from backdrop.serving.params import MAX_JSON_TOKENS, GenerateParams, body_schema, parse_json_body
from backdrop.serving.quota import KeyQuota, QuotaExceeded
from backdrop.scope import ScopeConfigError, UriScope, canonical

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


# --- the JSON body ------------------------------------------------------------------------------
@pytest.mark.parametrize("body, fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "too many objects"),  # was a RecursionError
    (b"[" + b"{}," * 2_000_000 + b"{}]", "too many objects"),  # 6 MB of [{},...]: refused before parsing
    (b'{"seed": ' + b"9" * 5000 + b"}", "not valid JSON"),  # was ValueError (int over 4300 digits)
    (b'{"category": "\\ud800"}', "not valid JSON"),  # a lone surrogate
    (b'{"category": "\xed\xa0\x80"}', "not valid JSON"),  # an encoded surrogate
    (b'{"category": "\xff"}', "not valid JSON"),  # not UTF-8
    (b'{"guidance": NaN}', "not valid JSON"),
    (b'{"guidance": 1e400}', "not valid JSON"),
    (b'{"category": {"a": 1}}', "must be a string, a number or null"),
    (b"[1, 2]", "must be an object"),
    (b"", "not valid JSON"),
])
def test_hostile_json_bodies_are_readable_422s(body, fragment):
    with pytest.raises(InvalidParameterError, match=fragment):
        parse_json_body(body)


def test_big_integers_never_reach_a_field_as_integers():
    body = parse_json_body(b'{"category": "mug", "seed": 18446744073709551616}')  # 2**64: orjson gives a float
    with pytest.raises(InvalidParameterError, match="seed: input should be a valid integer"):
        GenerateParams.from_fields(body)


@FAST
@given(json_values)
def test_any_json_value_parses_or_is_refused_with_a_typed_error(value):
    body = json.dumps(value).encode()
    try:
        parsed = parse_json_body(body)
    except InvalidParameterError:
        return
    assert isinstance(parsed, dict) and all(not isinstance(v, (dict, list)) for v in parsed.values())
    try:
        GenerateParams.from_fields(parsed)
    except InvalidInputError as e:
        e.message.encode("utf-8")  # the message itself can always be answered


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused_with_a_typed_error(body):
    try:
        parse_json_body(body)
    except InvalidParameterError as e:
        e.message.encode("utf-8")


@FAST
@given(st.dictionaries(st.sampled_from([*GenerateParams.FIELDS, "x"]), st.text(max_size=12) | st.integers()
                       | st.floats() | st.booleans() | st.none(), max_size=8))
def test_params_are_always_in_range_or_refused(fields):
    limits = Limits()
    try:
        p = GenerateParams.from_fields(fields, limits)
    except InvalidParameterError as e:
        e.message.encode("utf-8")
        return
    assert 1 <= p.steps <= limits.max_steps and 0 <= p.guidance <= limits.max_guidance
    assert 1 <= p.num_images <= limits.max_images and 0 <= p.seed < 2**31 and p.format in ("png", "json")
    for text in (p.category, p.prompt or ""):
        text.encode("utf-8")  # no surrogate reaches the tokenizer
        assert not any(ord(c) < 32 and c not in "\t\n\r" for c in text)


def test_the_openapi_body_is_the_model_with_the_configured_limits():
    schema = body_schema(Limits(max_steps=40, max_images=2), binary=True)
    props = schema["properties"]
    assert props["steps"]["maximum"] == 40 and props["num_images"]["maximum"] == 2
    assert props["image"]["format"] == "binary" and set(schema["required"]) == {"image", "category"}
    assert set(GenerateParams.FIELDS) <= set(props) and schema["additionalProperties"] is False


# --- the input scope -------------------------------------------------------------------------------
def test_scheduler_is_chosen_per_request_within_the_configured_ones():
    assert GenerateParams.from_fields({"category": "mug"}).loop_key[2] is None  # the model's own, decided by the generator
    assert GenerateParams.from_fields({"category": "mug", "scheduler": " DPM++ "}).loop_key == (50, DEFAULT_GUIDANCE, "dpm++")
    only = Limits(schedulers=("ddim", "unipc"))
    with pytest.raises(InvalidParameterError, match="scheduler must be one of ddim, unipc, got 'dpm\\+\\+'"):
        GenerateParams.from_fields({"category": "mug", "scheduler": "dpm++"}, only)
    with pytest.raises(InvalidParameterError, match="scheduler must be one of"):
        GenerateParams.from_fields({"category": "mug", "scheduler": "euler; rm -rf /"})
    schema = body_schema(only, binary=False)["properties"]["scheduler"]
    assert schema["anyOf"][0]["enum"] == ["ddim", "unipc"]


def test_scope_matches_whole_segments_and_only_canonical_uris():
    scope = UriScope(["s3://brand", "s3://shared/in/"])
    assert scope.admit("s3://brand/a/b.png") == "s3://brand/a/b.png"
    assert scope.admit("s3://shared/in/x.png")
    for uri in ["s3://brand-other/a.png", "s3://brandx/a.png", "s3://shared/inx/a.png", "s3://shared/in",
                "s3://shared/in/../out/a.png", "s3://shared/in/./a.png", "s3://shared/in//a.png",
                "s3://shared/in/%2e%2e/a.png", "s3://shared/in/a.png?versionId=1", "s3://shared/in/a.png#x",
                "s3://shared/in\\..\\out/a.png", "S3://brand/a.png", "s3://Brand/a.png", "s3://brand/a b.png",
                "file:///etc/passwd", "/etc/passwd", "s3:/brand/a.png", "s3://brand/", "s3://brand"]:
        assert scope.admit(uri) is None, uri
    assert not UriScope() and UriScope().admit("s3://brand/a.png") is None  # nothing unless configured
    for bad in ["s3://", "s3://brand/../x", "http://brand/", "s3://b//x"]:
        with pytest.raises(ScopeConfigError):
            UriScope([bad])


def test_a_key_bound_to_its_own_prefixes():
    scope = UriScope(["s3://shared/in"], per_key={"sha256:" + "AB" * 32: ["s3://brand-a/"]})
    assert scope.admit("s3://brand-a/p.png", "ab" * 32) and not scope.admit("s3://shared/in/p.png", "ab" * 32)
    assert scope.admit("s3://shared/in/p.png", "cd" * 32) and not scope.admit("s3://brand-a/p.png", "cd" * 32)


segment = st.text(string.ascii_letters + string.digits + "._-%/\\?#~+@ ", min_size=0, max_size=12)


@FAST
@given(st.sampled_from(["s3://brand", "s3://brand/in", "s3://brand-other", "s3://brand.x"]),
       st.lists(segment, min_size=1, max_size=5))
def test_whatever_is_admitted_is_canonical_and_under_a_prefix(bucket, parts):
    scope = UriScope(["s3://brand/in/"])
    uri = "/".join([bucket, *parts])
    admitted = scope.admit(uri)
    if admitted is None:
        return
    assert admitted == uri and admitted.startswith("s3://brand/in/")
    segments = admitted.removeprefix("s3://").split("/")
    assert all(s and s not in (".", "..") for s in segments)
    assert not any(c in admitted for c in "%\\?# ")
    assert canonical(admitted) == admitted


# --- the per-key quota --------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refuses_past_the_burst_and_says_when_to_come_back():
    clock = Clock()
    quota = KeyQuota(rate_per_s=2, burst=3, clock=clock)
    for _ in range(3):
        quota.acquire("a")
        quota.release("a")
    with pytest.raises(QuotaExceeded) as e:
        quota.acquire("a")
    assert e.value.retry_after_s == pytest.approx(0.5)
    quota.acquire("b")  # another key has its own bucket
    clock.now += 0.5
    quota.acquire("a")  # one token back after 1/rate seconds


def test_a_work_weighted_bucket_charges_each_request_its_price():
    """Megapixel-steps, not requests: one big request spends what many small ones would, and
    the key's small requests pass again once the bucket refills; other keys are untouched."""
    clock = Clock()
    work = KeyQuota(rate_per_s=100, burst=1000, clock=clock, unit="megapixel-steps")
    work.acquire("a", cost=950, hold=False)
    with pytest.raises(QuotaExceeded, match="100 megapixel-steps/s") as e:
        work.acquire("a", cost=100, hold=False)
    assert e.value.retry_after_s == pytest.approx(0.5)
    work.acquire("b", cost=100, hold=False)
    clock.now += 0.5
    work.acquire("a", cost=100, hold=False)
    assert work.active("a") == 0  # a charge holds no concurrency slot
    clock.now += 100
    work.acquire("a", cost=5000, hold=False)  # over the whole burst: needs (and empties) a full bucket
    with pytest.raises(QuotaExceeded):
        work.acquire("a", cost=1, hold=False)


def test_concurrency_per_key_is_released_when_a_request_ends():
    quota = KeyQuota(max_concurrent=2, clock=Clock())
    quota.acquire("a")
    quota.acquire("a")
    with pytest.raises(QuotaExceeded, match="2 requests in progress"):
        quota.acquire("a")
    quota.release("a")
    quota.acquire("a")
    assert quota.active("a") == 2


def test_quota_table_is_bounded():
    quota = KeyQuota(rate_per_s=1, clock=Clock(), max_keys=10)
    for k in range(100):
        quota.acquire(str(k))
        quota.release(str(k))
    assert len(quota._keys) <= 10


# --- model selection ------------------------------------------------------------------------------------
@pytest.mark.parametrize("given_, expected", [("1", "1"), ("0001", "1"), ("00001", "1"), ("12", "12")])
def test_versions_are_normalised(given_, expected):
    assert normalise_version(given_) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "1.0", "0x1", "१", "²", "1e3", " 1 2", "9" * 20])
def test_non_decimal_versions_are_refused(bad):
    with pytest.raises(InvalidParameterError):
        normalise_version(bad)


def test_only_offered_aliases_and_versions_may_be_asked_for():
    selector = ModelSelector(aliases=["challenger"], versions=["0002"])
    assert selector.check(alias="challenger") == (None, "challenger")
    assert selector.check(version="002") == ("2", None)
    with pytest.raises(ModelNotAllowed):
        selector.check(alias="staging")
    with pytest.raises(ModelNotAllowed):
        selector.check(version="3")
    assert ModelSelector(versions=["*"]).check(version="0003") == ("3", None)
    with pytest.raises(ModelNotAllowed):
        ModelSelector().check(version="1")  # versions are off unless configured
