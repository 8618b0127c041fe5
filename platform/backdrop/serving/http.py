"""The HTTP edge of the service, apart from its routes: the one table from exception to status
(:data:`STATUS`, :func:`error_response`), reading a request body (:func:`read_body`), the
per-request middleware (:class:`ObserveRequests`: the body limit, one log line, metrics) and
the OpenAPI document (:func:`install_openapi`). ``serve_apps/app.py`` keeps the deployments
and routes and calls these; no Ray here (the app unwraps Ray's error wrappers first)."""

from __future__ import annotations

import asyncio
import math
import time
from http import HTTPStatus
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    CorruptImageError,
    Failure,
    ImageTooLargeError,
    InvalidInputError,
    InvalidParameterError,
    RegistryError,
    RegistryUnavailableError,
    StyleNotAllowedError,
    UnknownStyleError,
    UnsupportedImageError,
)
from ..limits import Limits
from ..scope import UriScope
from .models import ModelNotAllowed
from .params import FILE_FIELDS, body_schema, parse_json_body, read_input
from .quota import QuotaExceeded


class PayloadTooLarge(Exception):
    """The request body is over ``max_body_bytes``."""


class UnsupportedMediaType(Exception):
    """Neither multipart/form-data nor application/json."""


class Unauthorized(Exception):
    """No API key, or not one of the configured keys."""


class Overloaded(Exception):
    """The generator's queue is full (or its replica went away): come back later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelUnavailable(Overloaded):
    """No model answers to the default reference yet (nothing registered, or loading)."""


class RequestTimeout(Exception):
    """The answer did not come within ``request_timeout_s``."""


class GenerationFailed(Exception):
    """The generator could not make this request's image (the failure is logged, not answered)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.line)
        self.failure = failure


# First match wins: subclasses before their bases.
STATUS: list[tuple[type[BaseException], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (ModelNotAllowed, 403, ModelNotAllowed.code),
    (StyleNotAllowedError, 403, StyleNotAllowedError.code),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ImageTooLargeError, 413, ImageTooLargeError.code),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (CorruptImageError, 415, CorruptImageError.code),
    (UnsupportedImageError, 415, UnsupportedImageError.code),
    (RegistryUnavailableError, 503, RegistryUnavailableError.code),  # never 404: it says nothing of the model
    (RegistryError, 404, "unknown_model"),
    (UnknownStyleError, 404, UnknownStyleError.code),
    (InvalidInputError, 422, InvalidInputError.code),  # masks, category, parameters, URIs
    (RequestValidationError, 422, "invalid_request"),
    (QuotaExceeded, 429, "too_many_requests"),
    (ModelUnavailable, 503, "model_unavailable"),
    (Overloaded, 503, "overloaded"),
    (RequestTimeout, 504, "timeout"),
]


def error_response(request: Request, exc: BaseException, retry_after_s: float) -> JSONResponse:
    """The JSON error answer for ``exc``: a status, a code and a readable message; no trace.
    ``retry_after_s``: the Retry-After of a 429/503 whose exception carries none."""
    status, code = next(((s, c) for cls, s, c in STATUS if isinstance(exc, cls)), (500, "internal_error"))
    if isinstance(exc, InvalidInputError):
        code, message = exc.code, exc.message
    elif isinstance(exc, RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
    elif isinstance(exc, HTTPException):  # an unknown route, a malformed multipart body, ...
        status, message = exc.status_code, str(exc.detail)
        code = HTTPStatus(status).phrase.lower().replace(" ", "_")
    elif status == 500:
        message = "internal error; the request id identifies it in the service's logs"
    else:
        message = str(exc)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="backdrop"'
    if status in (429, 503):
        retry = getattr(exc, "retry_after_s", None) or retry_after_s
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    request.state.error = code
    # A message may quote the caller's input: escape what UTF-8 cannot carry (a lone surrogate).
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"code": code, "message": message, "request_id": request_id(request)}}
    return JSONResponse(body, status_code=status, headers=headers)




def request_id(request: Request) -> str:
    return request.headers.get("x-request-id", "")  # set by Serve's proxy on every request


async def read_body(request: Request, limits: Limits, scope: UriScope) -> tuple[dict, dict[str, bytes | None]]:
    """Form fields and file bytes, from a multipart upload or a JSON body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: dict[str, bytes | None] = {}
    if content_type == "multipart/form-data":
        form = await request.form(max_files=len(FILE_FIELDS), max_fields=16, max_part_size=64 * 1024)
        fields = {}
        for key, value in form.multi_items():
            if key in FILE_FIELDS:
                if isinstance(value, str):
                    raise InvalidParameterError(f"{key} must be a file upload")
                data = await value.read()
                files[key] = data if data or value.filename else None  # a form's empty file input
            elif isinstance(value, str):
                fields[key] = value
            else:
                raise InvalidParameterError(f"{key} must be a text field, not a file")
        return fields, files
    if content_type == "application/json":
        body = parse_json_body(await request.body())
        for key in FILE_FIELDS:
            value = body.pop(key, None)
            files[key] = await asyncio.to_thread(read_input, value, key, limits=limits, scope=scope,
                                                 key_digest=request.state.key_digest)
        return body, files
    raise UnsupportedMediaType(
        f"send multipart/form-data (file uploads) or application/json (base64 or s3:// URIs), "
        f"not {content_type or 'no content type'}")


class ObserveRequests:
    """Per request: the body limit, then one log line and the metrics (ASGI middleware)."""

    def __init__(self, app, service: Callable[[], object]) -> None:
        self.app, self.service = app, service  # service(): the replica (its settings and observe())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service = self.service()
        limit = service.settings.max_body_bytes
        started, status = time.perf_counter(), [500]
        state = scope.setdefault("state", {})
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit:,} bytes")
            return message

        async def capture_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length", b"0")
        try:
            if declared.isdigit() and int(declared) > limit:  # refused before reading the body
                too_large = PayloadTooLarge(f"request body is {int(declared):,} bytes, over the limit of {limit:,} bytes")
                response = error_response(Request(scope), too_large, service.settings.retry_after_s)
                await response(scope, receive, capture_send)
            else:
                await self.app(scope, limited_receive, capture_send)
        finally:
            service.observe(scope, status[0], time.perf_counter() - started, state)


def install_openapi(api: FastAPI, limits: Callable[[], Limits]) -> None:
    """FastAPI's schema, with the generate body from :class:`~.params.GenerateParams` and the
    serving replica's ``limits()``, built once."""
    def openapi() -> dict:
        if api.openapi_schema is None:
            schema = FastAPI.openapi(api)
            content = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
            content["multipart/form-data"]["schema"] = body_schema(limits(), binary=True)
            content["application/json"]["schema"] = body_schema(limits(), binary=False)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi
