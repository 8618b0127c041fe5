"""The parameters of one generation request (everything but the images), and how a JSON or form
field becomes one: typed, range-checked against the one :class:`~backdrop.limits.Limits`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from .. import storage
from ..errors import FetchError, ImageTooLargeError, InvalidParameterError
from ..limits import DEFAULT_LIMITS, Limits

MAX_SEED = 2**31 - 1
RESPONSE_FORMATS = ("png", "json")


# --- parameters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateParams:
    """The generation parameters of one request (everything but the images)."""

    category: str
    prompt: str | None = None
    seed: int = 0
    steps: int = 50
    guidance: float = 2.0
    num_images: int = 1
    format: str = "png"  # the answer: one PNG, or a JSON envelope of base64 PNGs

    FIELDS = ("category", "prompt", "seed", "steps", "guidance", "num_images", "format")

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> "GenerateParams":
        """Parse and range-check form fields (strings) or JSON values.

        A missing seed is drawn at random (and reported back, so the answer can be reproduced);
        a missing format is ``png`` for one image and ``json`` for several.
        """
        unknown = sorted(set(fields) - set(cls.FIELDS))
        if unknown:
            raise InvalidParameterError(
                f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(cls.FIELDS)}")
        category = _text(fields.get("category"), "category")
        if not category:
            raise InvalidParameterError("category is required (see GET /v1/models for the categories)")
        prompt = limits.check_prompt(_text(fields.get("prompt"), "prompt") or None)
        seed = _integer(fields.get("seed"), "seed", 0, MAX_SEED)
        num_images = _integer(fields.get("num_images"), "num_images", 1, limits.max_images, default=1)
        fmt = (_text(fields.get("format"), "format") or ("png" if num_images == 1 else "json")).lower()
        if fmt not in RESPONSE_FORMATS:
            raise InvalidParameterError(f"format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}")
        if fmt == "png" and num_images > 1:
            raise InvalidParameterError(
                f"format=png answers one image; use format=json for num_images={num_images}")
        return cls(
            category=category,
            prompt=prompt,
            seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
            steps=_integer(fields.get("steps"), "steps", 1, limits.max_steps, default=cls.steps),
            guidance=_number(fields.get("guidance"), "guidance", 0.0, limits.max_guidance, default=cls.guidance),
            num_images=num_images,
            format=fmt,
        )

    @property
    def loop_key(self) -> tuple[int, float]:
        """Jobs with equal keys can share one denoising loop."""
        return self.steps, self.guidance

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + k) % (MAX_SEED + 1) for k in range(self.num_images)]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, name: str) -> str:
    if _blank(value):
        return ""
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a string, got {type(value).__name__}")
    return value.strip()


def _integer(value: Any, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    if _blank(value):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise InvalidParameterError(f"{name} must be in {lo}..{hi}, got {number}")
    return number


def _number(value: Any, name: str, lo: float, hi: float, default: float) -> float:
    if _blank(value):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidParameterError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and lo <= number <= hi):
        raise InvalidParameterError(f"{name} must be in {lo:g}..{hi:g}, got {value!r}")
    return number


def read_input(value: Any, name: str, *, limits: Limits = DEFAULT_LIMITS,
               allowed_prefixes: tuple[str, ...] = ("s3://",)) -> bytes | None:
    """The bytes behind a JSON field: base64 (a ``data:`` URL too) or a remote URI.

    Only URIs under ``allowed_prefixes`` are read (never a local path of the server), and an
    object over ``limits.max_image_bytes`` is refused before it is downloaded.
    """
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a base64 string or a URI, got {type(value).__name__}")
    value = value.strip()
    if "://" in value[:16]:
        if not any(value.startswith(p) for p in allowed_prefixes):
            raise InvalidParameterError(
                f"{name}: {value.split('://')[0]}:// URIs are not accepted here "
                f"(allowed: {', '.join(allowed_prefixes) or 'none'})")
        try:
            return storage.read_bytes(value, max_bytes=limits.max_image_bytes)
        except (ImageTooLargeError, FetchError):
            raise
        except Exception as e:  # noqa: BLE001 - missing object, no permission, bad bucket name, ...
            raise FetchError(f"cannot read {name} at {value}: {type(e).__name__}: {e}") from None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) * 3 // 4 > limits.max_image_bytes:
        raise ImageTooLargeError(f"{name} is over the limit of {limits.max_image_bytes:,} bytes")
    try:
        return base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterError(f"{name} is neither base64 nor an s3:// URI") from None
