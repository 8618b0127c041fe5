"""Online generation: everything the HTTP service does that is neither HTTP nor Ray.

``serve_apps/app.py`` is glue around these calls:

* in the ingress, :meth:`GenerateParams.from_fields` and :func:`load_job` turn one request
  into a validated :class:`Job` (the same decoding rules and typed errors as the batch jobs,
  :mod:`backdrop.imaging` / :mod:`backdrop.errors`), and :class:`ModelSelector` maps the
  request's choice of model (default alias, another alias, a version) onto one concrete
  registry version; :class:`ApiKeys` checks keys against their SHA-256 digests;
* in the generator, :func:`check_job` rejects a job its model cannot serve before it joins a
  dynamic batch, and :func:`run_jobs` puts a whole batch through one denoising loop per group
  of jobs that can share one (same steps and guidance), so that one failing job never takes
  its batch mates down.

Nothing here imports Ray or a web framework; torch is imported only where the model runs,
so the ingress process stays light.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image

from . import storage
from .errors import FetchError, ImageTooLargeError, InvalidParameterError
from .imaging import DEFAULT_MAX_PIXELS, encode_image, load_product, load_reference

MAX_SEED = 2**31 - 1
RESPONSE_FORMATS = ("png", "json")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may ask for; over a limit is a typed 4xx error, never a crash."""

    max_image_bytes: int = 16 * 2**20  # per image or mask file
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_steps: int = 100
    max_images: int = 4
    max_prompt_chars: int = 500
    max_guidance: float = 30.0


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
    def from_fields(cls, fields: Mapping[str, Any], limits: ServiceLimits = ServiceLimits()) -> "GenerateParams":
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
        prompt = _text(fields.get("prompt"), "prompt") or None
        if prompt and len(prompt) > limits.max_prompt_chars:
            raise InvalidParameterError(
                f"prompt is {len(prompt)} characters, over the limit of {limits.max_prompt_chars}")
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


# --- inputs ---------------------------------------------------------------------------------
@dataclass
class Job:
    """One validated request, as it travels from the ingress to a generator replica."""

    image: Image.Image  # RGB
    mask: np.ndarray  # H x W, 1.0 = product
    params: GenerateParams
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None  # None: the whole reference is background
    cancelled: bool = field(default=False, compare=False)  # set when its caller gives up


class Abandoned(Exception):
    """Every job of a denoising loop was cancelled by its caller: the loop stopped early."""


def load_job(
    params: GenerateParams,
    *,
    image: bytes | None = None,
    mask: bytes | None = None,
    reference: bytes | None = None,
    reference_mask: bytes | None = None,
    limits: ServiceLimits = ServiceLimits(),
) -> Job:
    """Decode and validate a request's files (product mask from ``mask`` or the alpha)."""
    if image is None:
        raise InvalidParameterError("image is required: the product photo (with alpha, or with a mask)")
    if reference is None and reference_mask is not None:
        raise InvalidParameterError("reference_mask was given without a reference image")
    decode = {"max_pixels": limits.max_pixels, "max_bytes": limits.max_image_bytes}
    product, product_mask = load_product(image, mask, **decode)
    ref = ref_mask = None
    if reference is not None:
        ref, ref_mask = load_reference(reference, reference_mask, **decode)
    return Job(product, product_mask, params, ref, ref_mask)


def read_input(value: Any, name: str, *, limits: ServiceLimits = ServiceLimits(),
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
            fs, path = storage.filesystem(value)
            size = fs.size(path)
            if size is not None and size > limits.max_image_bytes:
                raise ImageTooLargeError(
                    f"{name} at {value} is {size:,} bytes, over the limit of {limits.max_image_bytes:,} bytes")
            return storage.read_bytes(value)
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


# --- API keys -------------------------------------------------------------------------------
class ApiKeys:
    """Accepted API keys, held only as SHA-256 digests; a key is never stored or logged.

    ``check`` answers a short key id (a digest prefix, for logs and per-client accounting)
    for a valid key and ``None`` otherwise, comparing against every digest in constant time.
    """

    def __init__(self, digests: list[str] | tuple[str, ...] = ()) -> None:
        self._digests = []
        for d in digests:
            d = d.strip().lower().removeprefix("sha256:")
            if not re.fullmatch(r"[0-9a-f]{64}", d):
                raise ValueError("api_key_sha256 entries must be hex SHA-256 digests (64 hex digits)")
            self._digests.append(bytes.fromhex(d))

    @staticmethod
    def digest(key: str) -> str:
        """The hex SHA-256 of a key: what the configuration holds."""
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def from_config(cls, digests: list[str] | tuple[str, ...] = (), plain: str = "") -> "ApiKeys":
        """Digests from the configuration plus plain keys (comma-separated, e.g. from an env var)."""
        return cls([*digests, *(cls.digest(k.strip()) for k in plain.split(",") if k.strip())])

    def check(self, key: str | None) -> str | None:
        if not key:
            return None
        presented = hashlib.sha256(key.encode()).digest()
        valid = False
        for d in self._digests:
            valid |= hmac.compare_digest(presented, d)
        return presented.hex()[:8] if valid else None

    def __len__(self) -> int:
        return len(self._digests)


# --- model choice ---------------------------------------------------------------------------
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ModelChoice:
    model_id: str  # what a generator loads: models:/NAME/VERSION, or a path
    name: str
    version: str
    alias: str | None = None


class ModelSelector:
    """Maps a request's choice (nothing, an alias or a version) onto one concrete version.

    Aliases are looked up in the registry at most every ``alias_ttl_s`` seconds, so when
    ``champion`` moves, requests that arrive afterwards get the new version while those
    already under way finish on the version they were given. With ``model_path`` set (local
    development) the service serves that one saved generator and nothing else.
    """

    def __init__(self, model_name: str = "backdrop", default_alias: str = "champion",
                 model_path: str | None = None, alias_ttl_s: float = 2.0) -> None:
        self.model_name, self.default_alias = model_name, default_alias
        self.model_path, self.alias_ttl_s = model_path, alias_ttl_s
        self._cache: dict[str, tuple[float, ModelChoice]] = {}
        self._lock = threading.Lock()

    @property
    def default_reference(self) -> str:
        return self.model_path or f"models:/{self.model_name}@{self.default_alias}"

    def select(self, version: str | None = None, alias: str | None = None) -> ModelChoice:
        from .registry import RegistryError, resolve_version

        version, alias = (version or "").strip() or None, (alias or "").strip() or None
        if version and alias:
            raise InvalidParameterError("ask for a model version or an alias, not both")
        if version and not version.isdigit():
            raise InvalidParameterError(f"model version must be a positive integer, got {version!r}")
        if alias and not _ALIAS.match(alias):
            raise InvalidParameterError(f"model alias must be a word ([A-Za-z0-9_-]), got {alias!r}")
        if self.model_path:
            if version or alias:
                raise RegistryError(
                    f"this service runs the single model at {self.model_path}; "
                    "versions and aliases need the registry (set model_name instead of model_path)")
            key = self.model_path
        else:
            key = f"models:/{self.model_name}/{version}" if version else \
                f"models:/{self.model_name}@{alias or self.default_alias}"
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]
        name, resolved = resolve_version(key)
        if self.model_path:
            name = display_name(self.model_path)
        choice = ModelChoice(self.model_path or f"models:/{name}/{resolved}", name, resolved,
                             alias=None if version or self.model_path else (alias or self.default_alias))
        ttl = self.alias_ttl_s if choice.alias else 3600.0  # a version number never moves
        with self._lock:
            self._cache[key] = (time.monotonic() + ttl, choice)
        return choice


# --- the model side -------------------------------------------------------------------------
@dataclass
class Generated:
    """One job's answer."""

    images: list[bytes]  # PNG files (lossless: the product's pixels stay bit-identical)
    seeds: list[int]
    model_name: str
    model_version: str
    batch_requests: int  # requests that shared this job's denoising loop
    batch_images: int  # images made by that loop
    generate_s: float  # wall time of that loop
    loop: int = 0  # which of its batch's denoising loops made it


@dataclass
class LoadedModel:
    """A generator loaded for serving, with what the answers report about it."""

    pipe: Any  # backdrop.pipeline.BackdropPipeline
    name: str
    version: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def model(self):
        return self.pipe.model

    def describe(self) -> dict:
        m = self.model
        return {
            "name": self.name,
            "version": self.version,
            "categories": m.categories.names,
            "resolution": m.config.resolution,
            "personalized": m.pg is not None,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "loaded_at": self.loaded_at,
        }


def load_model(reference: str, device: str = "auto") -> LoadedModel:
    """Resolve a model reference (registry or path) and load it for inference.

    ``device="auto"`` picks CUDA (half precision) when there is a GPU, else the CPU (float32).
    """
    import torch

    from .pipeline import BackdropPipeline
    from .registry import resolve

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    resolved = resolve(reference)
    model = resolved.load(device=device, torch_dtype=dtype)
    name = resolved.name if reference.startswith("models:/") else display_name(reference)
    return LoadedModel(BackdropPipeline(model), name, resolved.version)


def display_name(path: str) -> str:
    """What answers call a model served from a path: its last component, not the server's path."""
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def check_job(model: LoadedModel, job: Job) -> None:
    """Reject what this model cannot serve (unknown category) before the job joins a batch."""
    model.model.categories.id_of(job.params.category)


def run_jobs(model: LoadedModel, jobs: list[Job]) -> list[Generated | Exception]:
    """Generate every job of a dynamic batch, one denoising loop per (steps, guidance) group.

    Returns one entry per job, in order: its :class:`Generated`, or the exception that
    failed it. When a group's loop fails as a whole, its jobs are retried one by one so only
    the culprit fails.
    """
    from .pipeline import GenerationRequest, InferenceConfig

    groups: dict[tuple[int, float], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[job.params.loop_key].append(i)

    def rows(job: Job) -> list[GenerationRequest]:
        p = job.params
        return [GenerationRequest(image=job.image, mask=job.mask, category=p.category, reference=job.reference,
                                  reference_mask=job.reference_mask, prompt=p.prompt, seed=s) for s in p.seeds]

    def loop(members: list[int], number: int) -> list[Generated]:
        steps, guidance = jobs[members[0]].params.loop_key
        batch = [r for i in members for r in rows(jobs[i])]

        def stop_if_abandoned(step: int, total: int) -> None:
            if all(jobs[i].cancelled for i in members):
                raise Abandoned(f"all {len(members)} caller(s) gave up at step {step}/{total}")

        t = time.perf_counter()
        images = model.pipe(batch, InferenceConfig(num_inference_steps=steps, guidance_scale=guidance),
                            progress=stop_if_abandoned)
        seconds = time.perf_counter() - t
        out, k = [], 0
        for i in members:
            n = jobs[i].params.num_images
            out.append(Generated([encode_image(im) for im in images[k:k + n]], jobs[i].params.seeds, model.name,
                                 model.version, len(members), len(batch), seconds, number))
            k += n
        return out

    results: list[Generated | Exception] = [None] * len(jobs)  # type: ignore[list-item]
    loops = 0
    for members in groups.values():
        try:
            loops += 1
            for i, r in zip(members, loop(members, loops)):
                results[i] = r
        except Exception as group_error:  # noqa: BLE001 - isolate the culprit below
            if len(members) == 1 or isinstance(group_error, Abandoned):
                for i in members:
                    results[i] = group_error
                continue
            for i in members:
                try:
                    loops += 1
                    results[i] = loop([i], loops)[0]
                except Exception as e:  # noqa: BLE001
                    results[i] = e
    return results
