"""backdrop over HTTP: a Ray Serve application.

    serve run serve_apps/config.yaml          # from the repository root

Two deployments, both thin over the library (:mod:`backdrop.serving` holds the logic, and
:mod:`backdrop.runtime` loads and runs the generator as it does for every other front door):

* ``Backdrop``, the ingress (FastAPI, so ``/docs`` has the OpenAPI page): checks the API key,
  decodes and validates the upload with the same rules as the batch jobs, picks a concrete
  model version (``models:/NAME@champion`` unless a header asks for another alias or
  version), hands the job to the generator and maps every error onto an HTTP status in one
  place (:data:`backdrop.serving.http.STATUS`). It also serves the try-it page at ``/``.

This file keeps the deployments and the routes; their arguments (:mod:`backdrop.serving.config`),
the HTTP edge (errors, body reading, middleware, OpenAPI: :mod:`backdrop.serving.http`) and the
test hooks (:mod:`backdrop.testhooks`) live in the library.
* ``Generator`` holds the models, one per registry version (``@serve.multiplexed``, at most
  ``BACKDROP_MAX_MODELS_PER_REPLICA`` per replica, LRU), and runs concurrent requests
  through shared denoising loops (``@serve.batch``; batch size and wait from ``user_config``).
  Its ``max_ongoing_requests`` / ``max_queued_requests`` bound the work waiting for it; past
  them the ingress answers 503 with ``Retry-After`` instead of queueing without end.
"""

import asyncio
import base64
import dataclasses
import json
import logging
import os
import time
import weakref
from pathlib import Path

import ray
from fastapi import Depends, FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

from backdrop import runtime
from backdrop.errors import Failure, InvalidInputError, RegistryError, RegistryUnavailableError
from backdrop.runtime import LoadedGenerator
from backdrop.scope import StyleScope, UriScope
from backdrop.serving.auth import ApiKeys
from backdrop.serving.config import AppArgs
from backdrop.serving.http import (
    STATUS,
    GenerationFailed,
    ModelUnavailable,
    ObserveRequests,
    Overloaded,
    RequestTimeout,
    Unauthorized,
    error_response,
    install_openapi,
    read_body,
    request_id,
)
from backdrop.serving.jobs import Generated, Job, check_job, load_job, run_jobs
from backdrop.serving.models import ModelSelector
from backdrop.serving.params import GenerateParams
from backdrop.serving.quota import KeyQuota
from backdrop.serving.styles import Styles
from backdrop.testhooks import TestHold

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"
MAX_MODELS_PER_REPLICA = int(os.environ.get("BACKDROP_MAX_MODELS_PER_REPLICA", "2"))
LATENCY_BUCKETS_MS = [25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


# --- errors: the table is backdrop.serving.http.STATUS; Ray's wrappers come off first ---------
def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (an error raised in the generator)."""
    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def _ingress():
    """The ``Backdrop`` replica serving this request (for code outside its methods)."""
    return serve.get_replica_context().servable_object


# --- the generator ------------------------------------------------------------------------
@serve.deployment(
    max_ongoing_requests=16,  # >= max_batch_size, so that a full batch can form
    max_queued_requests=8,  # beyond this the caller gets BackPressureError -> 503
    backpressure_config={"status_code": 503, "retry_after_s": 2},
    user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10,
)
class Generator:
    """Holds models (one per registry version) and runs batched denoising loops."""

    def __init__(self, device: str = "auto", torch_threads: int | None = None, hold_dir: str | None = None,
                 compile: str = "auto", batch_bucket: int | None = None, preload: str | None = None) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.device, self.compile, self.batch_bucket = device, compile, batch_bucket
        self.hold = TestHold(hold_dir) if hold_dir else None
        self.warm: dict[str, LoadedGenerator] = {}
        if preload and runtime.compiles(compile, runtime.resolve_device(device)):
            self._preload(preload)
        self.loaded: weakref.WeakValueDictionary[str, LoadedGenerator] = weakref.WeakValueDictionary()
        self.waiting = 0
        self.queue_depth = Gauge("backdrop_generator_queue_depth",
                                 description="Requests inside the generator replica (waiting or running).")
        self.batch_size = Histogram("backdrop_batch_size", boundaries=BATCH_BUCKETS,
                                    description="Requests that shared one denoising loop.")
        self.batch_images = Histogram("backdrop_batch_images", boundaries=BATCH_BUCKETS,
                                      description="Images made by one denoising loop.")

    def reconfigure(self, config: dict) -> None:
        """``user_config``: batch size and wait can change without restarting the replica."""
        self.generate_batch.set_max_batch_size(int(config.get("max_batch_size", 8)))
        self.generate_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.05)))

    def _preload(self, reference: str) -> None:
        """Load, compile and warm up the default model before the replica takes requests (a
        compile takes minutes on SD-size networks: no request may wait for it). A reference
        that does not resolve yet (no champion) is left to the first request."""
        try:
            gen = runtime.load(reference, self.device, compile=self.compile, batch_bucket=self.batch_bucket)
        except Exception as e:  # noqa: BLE001 - the service starts anyway; requests load lazily
            logger.warning("could not preload %s: %s", reference, e)
            return
        model_id = reference if not reference.startswith("models:/") else f"models:/{gen.name}/{gen.version}"
        self.warm[model_id] = gen

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> LoadedGenerator:
        model = self.warm.pop(model_id, None) or await asyncio.to_thread(
            runtime.load, model_id, self.device, compile=self.compile, batch_bucket=self.batch_bucket)
        self.loaded[model_id] = model
        return model

    async def describe(self) -> dict:
        """The requested model (loading it if needed) and every model this replica holds."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {**model.describe(), "replica_models": sorted(m.version for m in self.loaded.values())}

    async def generate(self, job: Job) -> Generated | InvalidInputError:
        """One request's images; a client error (e.g. unknown category) is answered, not raised;
        a generation failure is raised as :class:`GenerationFailed` (a 500 without its details)."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        try:
            check_job(model, job)  # an unknown category fails here, never inside a batch
        except InvalidInputError as e:
            return e
        if self.hold:
            self.hold.arrived(job, serve.get_multiplexed_model_id())
        self._queue(+1)
        try:
            result = await self.generate_batch(job)
        except asyncio.CancelledError:  # the caller gave up (timeout, disconnect)
            job.cancelled = True  # its denoising loop stops once every job in it has
            raise
        finally:
            self._queue(-1)
        if isinstance(result, Failure):
            raise GenerationFailed(result)
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, jobs: list[Job]) -> list[Generated | Failure]:
        # Serve splits batches by multiplexed model id: every job here wants the same version.
        model = await self.get_model(serve.get_multiplexed_model_id())
        marker = await self.hold.wait(jobs) if self.hold else None
        results = await asyncio.to_thread(run_jobs, model, jobs)
        if marker:
            self.hold.done(marker, results)
        for loop in {r.loop: r for r in results if isinstance(r, Generated)}.values():
            self.batch_size.observe(loop.batch_requests)
            self.batch_images.observe(loop.batch_images)
        return results

    def _queue(self, delta: int) -> None:
        self.waiting += delta
        self.queue_depth.set(self.waiting)


# --- the ingress --------------------------------------------------------------------------
api = FastAPI(
    docs_url=None,  # /docs below: Swagger UI from this service, never from a CDN
    redoc_url=None,
    title="backdrop",
    version="1",
    summary="Product backgrounds in a category's style, or in the style of your reference ad.",
    description=(
        "Upload a product photo (with its mask, or with transparency) and optionally a reference "
        "ad image; get new backgrounds with the product's pixels unchanged. Every `/v1` call needs "
        "an API key: `X-API-Key: KEY` or `Authorization: Bearer KEY`. The try-it page is at `/`."
    ),
)
api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")  # before the class routes
api.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="docs-static")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="your API key")
bearer_scheme = HTTPBearer(auto_error=False, description="your API key as a bearer token")


async def require_api_key(
    request: Request,
    api_key: str | None = Security(api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
) -> None:
    key_id = _ingress().api_keys.check(api_key or (bearer.credentials if bearer else None))
    if key_id is None:
        raise Unauthorized("a valid API key is required: send X-API-Key: KEY or Authorization: Bearer KEY"
                           if (api_key or bearer) is None else "this API key is not valid")
    request.state.key_id = key_id
    request.state.key_digest = ApiKeys.digest(api_key or bearer.credentials)


async def admit_key(request: Request, _=Depends(require_api_key)):
    """The caller's key within its rate and concurrency (429 otherwise), for the request's life."""
    quota, key = _ingress().quota, request.state.key_id
    quota.acquire(key)
    try:
        yield
    finally:
        quota.release(key)


install_openapi(api, lambda: _ingress().limits)


async def _error_response(request: Request, exc: BaseException) -> JSONResponse:
    return error_response(request, _cause(exc), _ingress().settings.retry_after_s)



for _exc in (Exception, HTTPException, RequestValidationError, *{cls for cls, _, _ in STATUS}):
    api.add_exception_handler(_exc, _error_response)


api.add_middleware(ObserveRequests, service=_ingress)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Backdrop:
    def __init__(self, generator: DeploymentHandle, settings: AppArgs | dict | None = None) -> None:
        self.generator = generator
        self.settings = AppArgs.model_validate(settings or {})
        self.limits = self.settings.limits
        self.api_keys = ApiKeys.from_config(self.settings.api_key_sha256,
                                            os.environ.get(self.settings.api_keys_env, ""))
        self.models = ModelSelector(self.settings.model_name, self.settings.default_alias,
                                    self.settings.model_path, self.settings.alias_ttl_s,
                                    aliases=self.settings.allowed_aliases, versions=self.settings.allowed_versions,
                                    max_cached=self.settings.model_cache_size)
        self.scope = UriScope(self.settings.allowed_uri_prefixes, self.settings.uri_prefixes_by_key)
        self.styles = Styles(StyleScope(self.settings.allowed_styles, self.settings.styles_by_key),
                             ttl_s=self.settings.alias_ttl_s, max_cached=self.settings.model_cache_size)
        self.quota = KeyQuota(self.settings.rate_per_key_per_s, self.settings.burst_per_key,
                              self.settings.max_concurrent_per_key)
        self.work_quota = KeyQuota(self.settings.work_per_key_per_s,
                                   self.settings.work_burst_per_key or self.settings.max_request_work,
                                   unit="megapixel-steps")
        self.requests = Counter("backdrop_requests", description="HTTP requests by route and status.",
                                tag_keys=("route", "status"))
        self.latency = Histogram("backdrop_request_latency_ms", boundaries=LATENCY_BUCKETS_MS,
                                 description="HTTP request latency.", tag_keys=("route",))
        self._readiness: asyncio.Future | None = None  # the one readiness check in flight
        self._ready: tuple[float, int, dict] | None = None  # (when, status, body) of the last one
        if not self.api_keys:
            logger.warning("no API keys configured: every /v1 request will get 401 (set api_key_sha256 "
                           "in the config or %s in the environment)", self.settings.api_keys_env)

    # --- pages and probes ------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Swagger UI from assets this service serves: it works offline, and no third-party script
        runs on the origin whose sessionStorage holds the try-it page's API key."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="backdrop API",
                                   swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/static/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/static/favicon-32x32.png")

    @api.get("/healthz", summary="Liveness: the service answers (no key needed)")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: the default model resolves and is loaded (no key needed)")
    async def readyz(self) -> JSONResponse:
        """``ready``; ``degraded`` (still 200: the replica serves the default alias's last known
        version, so a load balancer should keep it); or 503 with a code. Never a path or an
        exception's text: no key is needed here (the reason goes to the log).

        Probes share one check: concurrent probes wait for the check in flight, and its answer
        is reused for ``alias_ttl_s`` (what a moved alias may take to be seen anyway), so a
        flood of unauthenticated probes costs the generator's queue one call, not one each."""
        if self._ready and time.monotonic() - self._ready[0] < self.settings.alias_ttl_s:
            _, status, body = self._ready
        else:
            if self._readiness is None or self._readiness.done():
                self._readiness = asyncio.ensure_future(self._check_readiness())
            status, body = await asyncio.shield(self._readiness)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def _check_readiness(self) -> tuple[int, dict]:
        try:
            choice = await self._choose(None, None)
            info = await asyncio.wait_for(
                self.generator.options(multiplexed_model_id=choice.model_id).describe.remote(), 10)
        except asyncio.TimeoutError:
            answer = 503, {"status": "loading", "code": "model_loading"}
        except Exception as e:  # noqa: BLE001 - not ready: a code for the caller, the reason for the log
            code = "no_model" if isinstance(_cause(e), ModelUnavailable) else "model_error"
            logger.warning("not ready (%s): %s: %s", code, type(_cause(e)).__name__, _cause(e))
            answer = 503, {"status": "not_ready", "code": code}
        else:
            if choice.stale:
                answer = 200, {"status": "degraded", "code": "alias_unresolved", "model": info["name"],
                               "version": info["version"]}
            else:
                answer = 200, {"status": "ready", "model": info["name"], "version": info["version"]}
        self._ready = (time.monotonic(), *answer)
        return answer

    # --- the API ---------------------------------------------------------------------------
    @api.get("/v1/models", summary="What is served: the default model, its categories, aliases, "
                                   "versions and the versions loaded", dependencies=[Depends(admit_key)])
    async def list_models(self) -> dict:
        choice = await self._choose(None, None)
        default = await self._call(self.generator.options(multiplexed_model_id=choice.model_id).describe.remote())
        loaded = default.pop("replica_models")
        if self.settings.model_path:
            registry = {"name": default["name"], "aliases": {}, "versions": [default["version"]]}
        else:
            from backdrop.registry import describe_registered  # MLflow only where the registry is used

            registry = await asyncio.to_thread(describe_registered, self.settings.model_name)
            offered = self.models  # only what callers may ask for
            registry["aliases"] = {a: v for a, v in registry["aliases"].items() if a in offered.aliases}
            registry["versions"] = [v for v in registry["versions"] if offered.any_version or v in offered.versions]
        return {
            "model": choice.name,
            "source": "path" if self.settings.model_path else "registry",
            "default": {"reference": self.models.public_reference, **default},
            "aliases": registry["aliases"],
            "versions": registry["versions"],
            "loaded": loaded,
            "limits": self._limits(),
        }

    def _limits(self) -> dict:
        return {**dataclasses.asdict(self.limits),
                # best-of-N's memory bound: full-size candidates held at once (RGB, 3 bytes/px)
                "candidate_pixels_in_flight": runtime.CANDIDATE_PIXELS_IN_FLIGHT,
                "candidate_bytes_in_flight": 3 * runtime.CANDIDATE_PIXELS_IN_FLIGHT}

    @api.get("/v1/limits", summary="What one request may ask (sizes, steps, candidates, its work budget) "
                                   "and best-of-N's memory bound", dependencies=[Depends(admit_key)])
    async def list_limits(self) -> dict:
        return self._limits()

    @api.get("/v1/styles", summary="The brand style kits this API key may use (the `style` field of "
                                   "/v1/generate), with their versions and aliases", dependencies=[Depends(admit_key)])
    async def list_styles(self, request: Request) -> dict:
        return {"styles": await asyncio.to_thread(self.styles.allowed, request.state.key_digest)}

    @api.post(
        "/v1/generate",
        summary="Generate backgrounds for a product, optionally in a reference's style",
        dependencies=[Depends(admit_key)],
        openapi_extra={"requestBody": {"required": True, "content": {  # schemas: install_openapi
            "multipart/form-data": {"schema": {}}, "application/json": {"schema": {}}}}},
        responses={
            200: {"description": "One PNG (`format=png`) or a JSON envelope of base64 PNGs (`format=json`), "
                                 "each with its placement, size, device-seconds and QA scores",
                  "content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}, "application/json": {}}},
            401: {"description": "missing or invalid API key"},
            403: {"description": "the model version or alias, or the brand style, is not offered to this key"},
            404: {"description": "the model version or alias, or the brand style, does not exist"},
            413: {"description": "upload over the size or pixel limit"},
            415: {"description": "not an image we can decode, or not multipart/JSON"},
            422: {"description": "wrong mask size, empty or full mask, unknown category, parameter out of range"},
            429: {"description": "this API key is over its rate or concurrency: retry after `Retry-After` s"},
            503: {"description": "overloaded or no model ready: retry after `Retry-After` seconds"},
            504: {"description": "the answer took longer than the request timeout"},
        },
    )
    async def generate(
        self,
        request: Request,
        x_backdrop_model_version: str | None = Header(None, description="serve this registry version"),
        x_backdrop_model_alias: str | None = Header(None, description="serve the version this alias points to"),
    ) -> Response:
        started = time.perf_counter()
        fields, files = await read_body(request, self.limits, self.scope)
        params = GenerateParams.from_fields(fields, self.limits)
        request.state.seed = params.seed
        style = None
        if params.style is not None:  # the kit's reference for this seed, as if it were uploaded
            style = await asyncio.to_thread(self.styles.reference, params.style, params.seed,
                                            request.state.key_digest, files)
        job = await asyncio.to_thread(load_job, params, limits=self.limits, **files)
        self.work_quota.acquire(request.state.key_id, cost=job.work, hold=False)  # 429: over its work rate
        choice = await self._choose(x_backdrop_model_version, x_backdrop_model_alias)
        request.state.model_version = choice.version
        handle = self.generator.options(multiplexed_model_id=choice.model_id)
        result = await self._call(handle.generate.remote(job))
        if isinstance(result, Exception):
            raise result
        request.state.batch_size = result.batch_requests
        total_ms = (time.perf_counter() - started) * 1000
        headers = {
            "X-Backdrop-Model": result.model_name,
            "X-Backdrop-Model-Version": result.model_version,
            "X-Backdrop-Seed": str(params.seed),
            "X-Backdrop-Scheduler": result.scheduler,
            **({"X-Backdrop-Style": style} if style else {}),
            "X-Backdrop-Batch-Size": str(result.batch_requests),
            "X-Backdrop-Work": f"{job.work:.1f}",  # the request's price in megapixel-steps
            "Server-Timing": f"generate;dur={result.generate_s * 1000:.1f}, total;dur={total_ms:.1f}",
            "Cache-Control": "no-store",
        }
        if choice.alias:
            headers["X-Backdrop-Model-Alias"] = choice.alias
        headers["X-Backdrop-Device-Seconds"] = f"{result.device_seconds:.6f}"
        media_type = f"image/{params.image_format}"
        if params.format == "png":
            return Response(result.images[0], media_type=media_type, headers=headers)
        return JSONResponse({
            "model": {"name": result.model_name, "version": result.model_version, "alias": choice.alias},
            "images": [{**out, "media_type": media_type, "data": base64.b64encode(data).decode()}
                       for out, data in zip(result.outputs, result.images)],
            "candidates": params.candidates,
            "device_seconds": round(result.device_seconds, 6),
            "seed": params.seed,
            "steps": params.steps,
            "guidance": params.guidance,
            "scheduler": result.scheduler,
            "style": style,
            "batch_size": result.batch_requests,
            "timing_ms": {"generate": round(result.generate_s * 1000, 1), "total": round(total_ms, 1)},
            "request_id": request_id(request),
        }, headers=headers)

    # --- helpers -----------------------------------------------------------------------------
    async def _choose(self, version: str | None, alias: str | None):
        try:
            return await asyncio.to_thread(self.models.select, version, alias)
        except RegistryUnavailableError as e:
            logger.warning("registry unavailable: %s", e.detail)  # the detail (URLs, errors) stays in the log
            raise
        except RegistryError as e:
            if version or alias:
                raise
            raise ModelUnavailable(f"no model to serve: {e}", self.settings.retry_after_s) from None

    async def _call(self, response):
        """Await a generator call within the request timeout; overload and loss become 503."""
        try:
            return await asyncio.wait_for(response, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeout(f"no answer within {self.settings.request_timeout_s:g} s") from None
        except BackPressureError as e:
            raise Overloaded("the generator's queue is full; retry later", e.retry_after_s) from None
        except (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError, RequestCancelledError) as e:
            raise Overloaded(f"the generator is unavailable ({type(e).__name__}); retry later") from None

    def observe(self, scope, status: int, seconds: float, state: dict) -> None:
        """Metrics and one structured log line per request (never the API key itself)."""
        route = scope.get("route")
        route = getattr(route, "path", None) or "other"
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(seconds * 1000, tags={"route": route})
        if route in ("/healthz", "/readyz") and status == 200:
            return  # probes would drown the log
        headers = dict(scope["headers"])
        record = {
            "event": "request",
            "request_id": headers.get(b"x-request-id", b"").decode(),
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "latency_ms": round(seconds * 1000, 1),
            "key_id": state.get("key_id"),
            "model_version": state.get("model_version"),
            "seed": state.get("seed"),
            "batch_size": state.get("batch_size"),
            "error": state.get("error"),
        }
        logger.info(json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":")))



# --- the application ---------------------------------------------------------------------
def build_app(args: AppArgs) -> serve.Application:
    """The application for ``serve run``/``serve deploy``: ``import_path: serve_apps.app:build_app``."""
    num_gpus = args.num_gpus
    if num_gpus == "auto":
        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    generator = Generator.options(
        ray_actor_options={"num_cpus": args.generator_num_cpus, "num_gpus": num_gpus},
    ).bind(device=args.device, torch_threads=args.torch_threads, hold_dir=args.hold_dir, compile=args.compile,
           batch_bucket=args.batch_bucket, preload=args.model_path or f"models:/{args.model_name}@{args.default_alias}")
    return Backdrop.bind(generator, args.model_dump())
