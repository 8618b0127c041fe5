"""A Python client for the backdrop HTTP service (``backdrop call`` is a command over it).

    from backdrop.client import BackdropClient

    client = BackdropClient("http://127.0.0.1:8000", api_key="backdrop-dev-key")
    answer = client.generate("mug.png", category="mug", reference="ad.png", steps=20)
    open("out.png", "wb").write(answer.images[0])
    print(answer.model, answer.version, answer.seeds)

Images are paths, bytes or PIL images (sent as a multipart upload) or ``s3://`` URIs (then the
request is a JSON body and the service reads the objects). A 503 (the service sheds load) is
retried after the ``Retry-After`` the service sends, a bounded number of times and never past
``max_wait_s`` in all; every other error is raised at once as :class:`ServiceError`.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Union

import requests

from .errors import BackdropError

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, "Image.Image"]  # noqa: F821 - PIL is optional here
RETRY_STATUSES = (503,)


class ServiceError(BackdropError):
    """An error answer from the service: its status, code, readable message and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.status, self.code, self.message = status, code, message
        self.request_id, self.retry_after_s = request_id, retry_after_s


@dataclass
class GenerateResult:
    images: list[bytes]  # PNG files
    seeds: list[int]
    model: str
    version: str
    alias: str | None
    batch_size: int  # requests that shared the denoising loop
    timing_ms: dict = field(default_factory=dict)
    request_id: str | None = None
    attempts: int = 1  # 1 + the retries after a 503


class BackdropClient:
    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 120.0, max_retries: int = 4,
                 max_wait_s: float = 60.0, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("BACKDROP_API_KEY")
        self.timeout_s, self.max_retries, self.max_wait_s = timeout_s, max_retries, max_wait_s
        self.session = session or requests.Session()

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
        model_version: str | int | None = None,
        model_alias: str | None = None,
    ) -> GenerateResult:
        """Backgrounds for one product (optionally in the reference's style)."""
        fields = {"category": category, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                  "num_images": num_images, "format": "json"}
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
            model=answer["model"]["name"],
            version=str(answer["model"]["version"]),
            alias=answer["model"].get("alias"),
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
        headers = kwargs.pop("headers", {}) or {}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        deadline = time.monotonic() + self.max_wait_s
        for attempt in range(1, self.max_retries + 2):
            response = self.session.request(method, self.url + path, headers=headers, timeout=self.timeout_s,
                                            **kwargs)
            if response.ok:
                return response, attempt
            error = _service_error(response)
            wait = error.retry_after_s if error.retry_after_s is not None else min(2.0 ** (attempt - 1), 10.0)
            if (response.status_code not in RETRY_STATUSES or attempt > self.max_retries
                    or time.monotonic() + wait > deadline):
                raise error
            log.info("%s; retrying in %.1f s (attempt %d of %d)", error, wait, attempt + 1, self.max_retries + 1)
            time.sleep(wait)
        raise AssertionError("unreachable")


def _service_error(response: requests.Response) -> ServiceError:
    code, message, request_id = "http_error", response.reason or "error", response.headers.get("X-Request-Id")
    try:
        error = response.json()["error"]
        code, message, request_id = error["code"], error["message"], error.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        pass
    retry_after = response.headers.get("Retry-After")
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date: not sent by this service; fall back to backoff
        retry_after_s = None
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
