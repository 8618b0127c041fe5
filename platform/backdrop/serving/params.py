"""The parameters of one generation request (everything but the images), and how a request body
becomes them: the JSON parsed within explicit limits, then one pydantic model, range-checked
against the one :class:`~backdrop.limits.Limits`, which also gives the API's OpenAPI schema.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from typing import Annotated, Any, ClassVar, Literal, Mapping

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .. import storage
from ..brands import parse_style
from ..errors import FetchError, ImageTooLargeError, InvalidParameterError
from ..limits import DEFAULT_GUIDANCE, DEFAULT_LIMITS, SCHEDULER_MAX_STEPS, Limits
from ..placements import Placement, parse_placements
from ..scope import SCHEME, UriScope

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
DEFAULT_STEPS = 50
MAX_TEXT_CHARS = 1000  # any text field but the files; the prompt has its own (smaller) limit
# '{', '[' and ',' anywhere in a JSON body, counted before it is parsed: a real request has
# about a dozen, and a body of nothing but "[{},{},...]" would otherwise cost ~25x its size.
MAX_JSON_TOKENS = 1024
FILE_FIELDS = ("image", "mask", "reference", "reference_mask")
FILE_DOCS = {
    "image": "the product photo; its alpha channel is the product mask unless `mask` is given",
    "mask": "product mask, same size as the image (white = product)",
    "reference": "optional reference ad: the new background takes its style",
    "reference_mask": "the reference's product mask (else its alpha; else all of it is background)",
}
# Surrogates cannot be encoded (the answer, the log, the tokenizer); control characters have no
# place in a category or a prompt. Tab and newline are allowed in a prompt.
_BAD_TEXT = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?")


def _text(value: Any) -> Any:
    if isinstance(value, str):
        if _BAD_TEXT.search(value):
            raise PydanticCustomError("bad_text", "must be text without control characters or surrogates")
        return value.strip()
    return value  # anything else fails the strict str check


def _int_text(value: Any) -> Any:
    """A form field is text: a decimal integer of at most 18 digits becomes an int (never int() on
    an unbounded string)."""
    if isinstance(value, str):
        if not _INT.fullmatch(value.strip()):
            raise PydanticCustomError("int_parsing", "must be an integer")
        return int(value)
    return value


def _float_text(value: Any) -> Any:
    if isinstance(value, str):
        if not _FLOAT.fullmatch(value.strip()):
            raise PydanticCustomError("float_parsing", "must be a finite decimal number")
        return float(value)
    return value


Text = Annotated[str, BeforeValidator(_text)]
Int = Annotated[int, BeforeValidator(_int_text)]
Float = Annotated[float, BeforeValidator(_float_text)]


def _limits(info: ValidationInfo) -> Limits:
    return (info.context or {}).get("limits", DEFAULT_LIMITS)


# --- parameters -----------------------------------------------------------------------------
class GenerateParams(BaseModel):
    """The generation parameters of one request (everything but the images).

    Strict types (a JSON ``true`` is not a step count, ``2.5`` is not a seed); text from a form
    is converted only through the bounded patterns above. The static bounds here are the
    widest any configuration may allow; the configured :class:`Limits` narrow them (validation
    context ``limits``) and :func:`body_schema` publishes the narrowed ones.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    category: Text = Field(min_length=1, max_length=100,
                           description="product category (GET /v1/models lists them)")
    prompt: Text | None = Field(None, max_length=MAX_TEXT_CHARS,
                                description="optional free text describing the background")
    seed: Int = Field(default_factory=lambda: secrets.randbelow(MAX_SEED + 1), ge=0, le=MAX_SEED,
                      description="random seed; drawn at random (and returned) when omitted")
    steps: Int = Field(DEFAULT_STEPS, ge=1, le=SCHEDULER_MAX_STEPS, description="denoising steps")
    guidance: Float = Field(DEFAULT_GUIDANCE, ge=0.0, le=1000.0, allow_inf_nan=False, description="classifier-free guidance")
    scheduler: Text | None = Field(None, max_length=20,
                                   description="denoising scheduler: ddim, dpm++ or unipc (default: the model's own, ddim unless saved otherwise; the "
                                               "last two need fewer steps for the same quality)")
    num_images: Int = Field(1, ge=1, le=16, description="how many images (seeds seed, seed+1, ...) per placement")
    placements: Text | None = Field(
        None, max_length=MAX_TEXT_CHARS,
        description="comma-separated ad placements, e.g. `1:1,4:5,16:9,9:16` (ratios) or `300x250` (pixel "
                    "slots): one image per placement, the product's pixels copied unresampled onto each "
                    "canvas. Omitted: the photo as uploaded")
    candidates: Int = Field(1, ge=1, le=64, description="best-of-N: candidates generated per image, the one "
                            "the model's QA scorer rates best is kept (N > 1 needs a model with a scorer)")
    format: Literal["png", "json"] = Field(
        default_factory=lambda data: "png" if data.get("num_images", 1) == 1 and _count(data.get("placements")) <= 1
        else "json",
        description="the answer's envelope: png (the one image itself, encoded as image_format; the default for "
                    "one) or json (the images base64-encoded with their placement, cost and QA scores)")
    image_format: Literal["png", "webp", "jpeg"] = Field(
        "png", description="how each image is encoded: png (lossless, the default: the product's pixels stay "
                           "bit-identical), webp or jpeg (smaller; lossy below quality 100 for webp, always for "
                           "jpeg, so the product's pixels are approximated)")
    quality: Int = Field(95, ge=1, le=100, description="webp and jpeg quality (1..100)")
    style: Text | None = Field(None, max_length=120,
                               description="a brand style kit instead of a reference image: `acme` (its current "
                                           "version), `acme@ALIAS` or `acme/VERSION` (GET /v1/styles lists the "
                                           "kits this key may use); one of its references is picked by seed")

    FIELDS: ClassVar[tuple[str, ...]] = ("category", "prompt", "seed", "steps", "guidance", "scheduler", "num_images",
                                         "placements", "candidates", "format", "image_format", "quality", "style")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Blank fields are missing (a form sends empty inputs): a missing seed is drawn at random
        (and reported back, so the answer can be reproduced); a missing format is png for one
        image and json for several."""
        if not isinstance(data, Mapping):
            return data
        data = {k: v for k, v in data.items() if not (v is None or (isinstance(v, str) and not v.strip()))}
        for name in ("format", "scheduler"):
            if isinstance(data.get(name), str):
                data[name] = data[name].strip().lower()
        if "steps" not in data:  # a deployment whose max_steps is under the default still answers
            data["steps"] = min(DEFAULT_STEPS, _limits(info).max_steps)
        return data

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> "GenerateParams":
        limits = _limits(info)
        limits.check_steps(self.steps)
        limits.check_guidance(self.guidance)
        limits.check_scheduler(self.scheduler)
        limits.check_prompt(self.prompt)
        if self.num_images > limits.max_images:
            raise InvalidParameterError(f"num_images must be in 1..{limits.max_images}, got {self.num_images}")
        limits.check_candidates(self.candidates)
        if self.style is not None:
            parse_style(self.style)  # a malformed name is a 422 before any lookup
        n_placements = max(1, len(self.placement_list(limits)))
        if self.format == "png" and self.num_images * n_placements > 1:
            raise InvalidParameterError(
                f"format=png answers one image; use format=json for num_images={self.num_images} "
                f"x {n_placements} placements")
        return self

    def placement_list(self, limits: Limits = DEFAULT_LIMITS) -> list[Placement]:
        """The placements asked for (none: the photo as uploaded)."""
        return parse_placements(self.placements, limits) if self.placements else []

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> "GenerateParams":
        """Parse and range-check form fields (strings) or JSON values; any problem is one
        :class:`InvalidParameterError` naming each bad field."""
        try:
            return cls.model_validate(dict(fields), context={"limits": limits})
        except ValidationError as e:
            raise InvalidParameterError(_describe(e)) from None

    @property
    def loop_key(self) -> tuple[int, float, str | None]:
        """Jobs with equal keys can share one denoising loop: (steps, guidance, scheduler; None:
        the model's own)."""
        return self.steps, self.guidance, self.scheduler

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + k) % (MAX_SEED + 1) for k in range(self.num_images)]


def _count(placements: Any) -> int:
    """How many placements a raw field names (for the default format, before it is parsed)."""
    return len([p for p in placements.split(",") if p.strip()]) if isinstance(placements, str) else 0


def _describe(error: ValidationError) -> str:
    """One readable line per problem; the caller's value is echoed short and escaped."""
    parts = []
    for e in error.errors(include_url=False):
        field = ".".join(map(str, e["loc"])) or "body"
        if e["type"] == "default_factory_not_called":
            continue  # format's default waits for num_images, which has its own error
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {ascii(field)}; expected {', '.join(GenerateParams.FIELDS)}")
        elif e["type"] == "missing" and field == "category":
            parts.append("category is required (see GET /v1/models for the categories)")
        elif e["type"] == "value_error":  # a limit (InvalidParameterError) says it all
            cause = e.get("ctx", {}).get("error")
            parts.append(cause.message if isinstance(cause, InvalidParameterError) else f"{field}: {e['msg']}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, Mapping) else f" (got {ascii(got)[:40]})"
            parts.append(f"{field}: {e['msg'][0].lower()}{e['msg'][1:]}{shown}")
    return "; ".join(parts)


def body_schema(limits: Limits = DEFAULT_LIMITS, *, binary: bool) -> dict:
    """The OpenAPI schema of the generate body (multipart or JSON): :class:`GenerateParams`'
    own JSON schema with the configured limits, plus the file fields."""
    schema = GenerateParams.model_json_schema()
    props = schema["properties"]
    props["steps"]["maximum"] = limits.max_steps
    props["steps"]["default"] = min(DEFAULT_STEPS, limits.max_steps)
    props["guidance"]["maximum"] = limits.max_guidance
    props["num_images"]["maximum"] = limits.max_images
    props["candidates"]["maximum"] = limits.max_candidates
    props["scheduler"] = {"anyOf": [{"type": "string", "enum": list(limits.schedulers)}, {"type": "null"}],
                          "default": None, "description": props["scheduler"]["description"]}
    for option in props["prompt"].get("anyOf", [props["prompt"]]):
        if option.get("type") == "string":
            option["maxLength"] = limits.max_prompt_chars
    files = {name: {"type": "string", "format": "binary", "description": doc} if binary else
             {"type": "string", "description": f"{doc}: base64, a data: URL or an allowed s3:// URI"}
             for name, doc in FILE_DOCS.items()}
    return {"type": "object", "title": "GenerateRequest", "required": ["image", "category"],
            "properties": {**files, **props}, "additionalProperties": False}


# --- the JSON body ----------------------------------------------------------------------------
def parse_json_body(body: bytes) -> dict[str, Any]:
    """A JSON object of scalars, parsed by orjson within explicit limits.

    The structure is counted before parsing (a few dozen bytes of ``[{},...]`` may not cost
    kilobytes); orjson refuses invalid UTF-8, lone surrogates, NaN/Infinity and integers
    beyond 64 bits (they become floats, which no integer field accepts); nested values are
    refused after parsing.
    """
    tokens = body.count(b"{") + body.count(b"[") + body.count(b",")
    if tokens > MAX_JSON_TOKENS:
        raise InvalidParameterError(f"the JSON body has too many objects, arrays or items "
                                    f"(over {MAX_JSON_TOKENS}); send one object of fields")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidParameterError(f"the body is not valid JSON: {ascii(str(e))[1:-1][:200]}") from None
    if not isinstance(value, dict):
        raise InvalidParameterError("the JSON body must be an object")
    for key, item in value.items():
        if isinstance(item, (dict, list)):
            raise InvalidParameterError(f"{ascii(key)[1:-1][:40]} must be a string, a number or null, "
                                        f"not {'an object' if isinstance(item, dict) else 'an array'}")
    return value


# --- files named in a JSON body ----------------------------------------------------------------
def _unreadable(name: str) -> FetchError:
    # One answer whatever the reason (outside the scope, missing, no permission): nothing
    # about an object the caller may not read leaks through it.
    return FetchError(f"{name}: this URI cannot be read: it is outside this API key's input scope "
                      "or there is no such object")


def read_input(value: Any, name: str, *, limits: Limits = DEFAULT_LIMITS, scope: UriScope | None = None,
               key_digest: str | None = None) -> bytes | None:
    """The bytes behind a JSON field: base64 (a ``data:`` URL too) or an ``s3://`` URI.

    A URI is read only when ``scope`` admits it for this key (no scope: remote inputs are
    off), an object over ``limits.max_image_bytes`` is refused before it is downloaded, and
    a local path of the server is never read.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a base64 string or a URI, got {type(value).__name__}")
    value = value.strip()
    if "://" in value[:16] or value[:3].lower() == "s3:":
        if not value.startswith(SCHEME):
            raise InvalidParameterError(f"{name}: only {SCHEME} URIs (or base64 data) are accepted")
        scope = scope or UriScope()
        if not scope.prefixes_for(key_digest):
            raise InvalidParameterError(f"{name}: remote URIs are not enabled for this API key; "
                                        "send the file itself (base64 or multipart)")
        uri = scope.admit(value, key_digest)
        if uri is None:
            raise _unreadable(name)
        try:
            return storage.read_bytes(uri, max_bytes=limits.max_image_bytes)
        except ImageTooLargeError:
            raise  # an object in the caller's own scope: its size is theirs to know
        except Exception as e:  # noqa: BLE001 - missing object, no permission, bad bucket, ...
            logger.info("input %s at %s unreadable: %s: %s", name, uri, type(e).__name__, e)
            raise _unreadable(name) from None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) * 3 // 4 > limits.max_image_bytes:
        raise ImageTooLargeError(f"{name} is over the limit of {limits.max_image_bytes:,} bytes")
    try:
        return base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterError(f"{name} is neither base64 nor an s3:// URI") from None
