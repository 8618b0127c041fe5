"""A Python client for the backdrop HTTP service (``backdrop call`` is a command over it).

    from backdrop.client import BackdropClient

    client = BackdropClient("http://127.0.0.1:8000", api_key="backdrop-dev-key")
    answer = client.generate("mug.png", category="mug", reference="ad.png", steps=20)
    open("out.png", "wb").write(answer.images[0])
    print(answer.model, answer.version, answer.seeds)

Images are paths, bytes or PIL images (sent as a multipart upload) or ``s3://`` URIs (then the
request is a JSON body and the service reads the objects). A 503 (the service sheds load) or a
429 (this key is over its rate or concurrency quota) is retried by urllib3's ``Retry`` on the session's adapter, after the ``Retry-After`` the service
sends (a junk value, negative, NaN or not a number, falls back to exponential backoff), at most
``max_retries`` times and never waiting more than ``max_wait_s`` in all; every other error is
raised at once as :class:`ServiceError`. The API key never follows a redirect to another origin.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from .errors import BackdropError

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, "Image.Image"]  # noqa: F821 - PIL is optional here
RETRY_STATUSES = (429, 503)  # a key over its quota, and a service shedding load
API_KEY_HEADER = "X-API-Key"


class ServiceError(BackdropError):
    """An error answer from the service: its status, code, readable message and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.code, self.message = status, code, message
        self.request_id, self.retry_after_s = request_id, retry_after_s


@dataclass
class GenerateResult:
    images: list[bytes]  # image files, encoded as media_type
    seeds: list[int]
    model: str
    version: str
    alias: str | None
    batch_size: int  # requests that shared the denoising loop
    timing_ms: dict = field(default_factory=dict)
    request_id: str | None = None
    attempts: int = 1  # 1 + the retries after a 503
    placements: list[str] = field(default_factory=list)  # each image's placement ("photo": as uploaded)
    media_type: str = "image/png"  # the images' encoding (the request's image_format)
    style: str | None = None  # the brand kit version used (name/version), when the request named a style


class BackdropClient:
    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 120.0, max_retries: int = 4,
                 max_wait_s: float = 60.0, backoff_s: float = 0.5, session: requests.Session | None = None) -> None:
        """``max_retries`` retries of a 503, waiting ``Retry-After`` (else ``backoff_s`` x 2^n, at most
        10 s) each time and at most ``max_wait_s`` in all. A given ``session`` gets the retrying
        adapter mounted for ``url`` and keeps the key from other origins too."""
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("BACKDROP_API_KEY")
        self.timeout_s, self.max_retries, self.max_wait_s = timeout_s, max_retries, max_wait_s
        self.session = session or requests.Session()
        retry = ServiceRetry(total=max_retries, connect=0, read=0, other=0, status=max_retries,
                             status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False,
                             respect_retry_after_header=True, backoff_factor=backoff_s, backoff_max=10.0,
                             max_wait_s=max_wait_s)
        self.session.mount(self.url + "/", HTTPAdapter(max_retries=retry))
        drop_key_across_origins(self.session)

    # --- the API ------------------------------------------------------------------------
    def generate(
        self,
        image: ImageInput,
        *,
        category: str,
        mask: ImageInput | None = None,
        reference: ImageInput | None = None,
        reference_mask: ImageInput | None = None,
        prompt: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        placements: str | list[str] | None = None,
        candidates: int | None = None,
        image_format: str | None = None,
        quality: int | None = None,
        style: str | None = None,
        model_version: str | int | None = None,
        model_alias: str | None = None,
    ) -> GenerateResult:
        """Backgrounds for one product (optionally in the reference's style, or a brand kit's:
        ``style="acme"``), on each of ``placements`` (``"1:1,16:9"`` or a list), best of
        ``candidates``, encoded as ``image_format``."""
        if isinstance(placements, (list, tuple)):
            placements = ",".join(placements)
        fields = {"category": category, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                  "num_images": num_images, "scheduler": scheduler, "placements": placements,
                  "candidates": candidates, "image_format": image_format, "quality": quality, "style": style,
                  "format": "json"}
        fields = {k: v for k, v in fields.items() if v is not None}
        images = {"image": image, "mask": mask, "reference": reference, "reference_mask": reference_mask}
        images = {k: v for k, v in images.items() if v is not None}
        headers = {}
        if model_version is not None:
            headers["X-Backdrop-Model-Version"] = str(model_version)
        if model_alias is not None:
            headers["X-Backdrop-Model-Alias"] = model_alias
        if any(_is_uri(v) for v in images.values()):  # JSON body: URIs as they are, the rest base64
            body = {**fields, **{k: v if _is_uri(v) else base64.b64encode(_read(v)).decode()
                                 for k, v in images.items()}}
            response, attempts = self._request("POST", "/v1/generate", json=body, headers=headers)
        else:
            files = {k: (f"{k}.png", _read(v), "application/octet-stream") for k, v in images.items()}
            data = {k: str(v) for k, v in fields.items()}
            response, attempts = self._request("POST", "/v1/generate", files=files, data=data, headers=headers)
        answer = response.json()
        return GenerateResult(
            images=[base64.b64decode(i["data"]) for i in answer["images"]],
            seeds=[i["seed"] for i in answer["images"]],
            placements=[i.get("placement", "photo") for i in answer["images"]],
            media_type=answer["images"][0].get("media_type", "image/png") if answer["images"] else "image/png",
            model=answer["model"]["name"],
            version=str(answer["model"]["version"]),
            alias=answer["model"].get("alias"),
            style=answer.get("style"),
            batch_size=int(answer.get("batch_size", 1)),
            timing_ms=answer.get("timing_ms", {}),
            request_id=answer.get("request_id") or response.headers.get("X-Request-Id"),
            attempts=attempts,
        )

    def models(self) -> dict:
        """The served model: default version, categories, aliases, versions, what is loaded."""
        return self._request("GET", "/v1/models")[0].json()

    def ready(self) -> bool:
        try:
            return self.session.get(f"{self.url}/readyz", timeout=self.timeout_s).status_code == 200
        except requests.RequestException:
            return False

    # --- plumbing -----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> tuple[requests.Response, int]:
        """One call; the adapter's ``ServiceRetry`` retries 503s. Returns the answer and the attempts."""
        headers = kwargs.pop("headers", {}) or {}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        response = self.session.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
        retries = getattr(response.raw, "retries", None)
        attempts = 1 + sum(1 for h in getattr(retries, "history", ()) if h.status in RETRY_STATUSES)
        if not response.ok:
            raise _service_error(response)
        return response, attempts


# --- retries and redirects --------------------------------------------------------------------
class ServiceRetry(Retry):
    """urllib3's ``Retry`` for the service's 503s, robust to any ``Retry-After``.

    A number of seconds (fractions too) or an HTTP date is honoured; a negative value means
    now; NaN, junk or an unparsable date fall back to exponential backoff (never an error).
    Retrying stops, and the last 503 is answered, once the waits would pass ``max_wait_s`` in
    all (so a huge ``Retry-After`` ends retrying at once instead of sleeping for hours).
    """

    def __init__(self, *args, max_wait_s: float = 60.0, waited_s: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_wait_s, self.waited_s = max_wait_s, waited_s

    def new(self, **kw) -> "ServiceRetry":
        return super().new(**{"max_wait_s": self.max_wait_s, "waited_s": self.waited_s, **kw})

    def get_retry_after(self, response) -> float | None:
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value.strip())
        except ValueError:
            try:
                seconds = super().parse_retry_after(value)  # an HTTP date
            except Exception:  # noqa: BLE001 - junk: back off instead
                return None
        if math.isnan(seconds):
            return None
        return min(max(seconds, 0.0), float(self.retry_after_max))

    def planned_wait_s(self, response) -> float:
        """What :meth:`sleep` will wait before the next attempt."""
        retry_after = self.get_retry_after(response) if (self.respect_retry_after_header and response) else None
        return retry_after if retry_after else self.get_backoff_time()

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        wait = new.planned_wait_s(response)
        if self.waited_s + wait > self.max_wait_s:
            reason = ResponseError(f"the next retry would wait {wait:g} s, past the {self.max_wait_s:g} s budget")
            raise MaxRetryError(_pool, url, reason) from reason
        new.waited_s = self.waited_s + wait
        status = getattr(response, "status", None)
        log.info("%s answered %s; retrying in %.1f s (retry %d)", url, status, wait, len(new.history))
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def drop_key_across_origins(session: requests.Session) -> None:
    """Never send the API key to another origin on a redirect (requests strips ``Authorization``
    on a host change, but not a custom header like ``X-API-Key``)."""
    if getattr(session, "_backdrop_drops_key", False):
        return
    rebuild_auth = session.rebuild_auth

    def rebuild_auth_without_key(prepared_request, response):
        if _origin(prepared_request.url) != _origin(response.request.url):
            prepared_request.headers.pop(API_KEY_HEADER, None)
        rebuild_auth(prepared_request, response)

    session.rebuild_auth = rebuild_auth_without_key
    session._backdrop_drops_key = True


def _service_error(response: requests.Response) -> ServiceError:
    code, message, request_id = "http_error", response.reason or "error", response.headers.get("X-Request-Id")
    try:
        error = response.json()["error"]
        code, message, request_id = error["code"], error["message"], error.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        pass
    retry_after_s = ServiceRetry(max_wait_s=0).get_retry_after(response)
    return ServiceError(response.status_code, code, message, request_id, retry_after_s)


def _is_uri(value) -> bool:
    return isinstance(value, str) and "://" in value[:16]


def _read(value: ImageInput) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    buf = io.BytesIO()  # a PIL image: PNG keeps its pixels (and alpha) exactly
    value.save(buf, format="PNG")
    return buf.getvalue()
