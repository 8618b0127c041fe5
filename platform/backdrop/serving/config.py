"""The Serve application's arguments (``args:`` in serve_apps/config.yaml, ``build_app``): one
pydantic model, validated when a replica starts. No Ray and no HTTP here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..limits import DEFAULT_LIMITS, SCHEDULER_MAX_STEPS, Limits
from ..schedulers import SCHEDULERS


class AppArgs(BaseModel):
    """Application arguments (``args:`` in serve_apps/config.yaml)."""

    model_name: str = Field("backdrop", description="registered model to serve")
    default_alias: str = Field("champion", description="alias a request gets unless it asks otherwise")
    model_path: str | None = Field(None, description="serve this saved generator (dir or s3://) instead "
                                                     "of the registry: local development")
    alias_ttl_s: float = Field(2.0, ge=0, description="how long an alias lookup is reused")
    allowed_aliases: list[str] = Field(default_factory=list, description="aliases callers may ask for, "
                                                                         "besides default_alias")
    allowed_versions: list[str] = Field(default_factory=list, description="versions callers may ask "
                                                                          "for by number; \"*\": any")
    model_cache_size: int = Field(64, ge=1, description="alias/version lookups kept (LRU)")
    api_key_sha256: list[str] = Field(default_factory=list, description="hex SHA-256 of each accepted key")
    api_keys_env: str = Field("BACKDROP_API_KEYS", description="env var with more keys, comma-separated")
    max_body_bytes: int = Field(48 * 2**20, gt=0, description="413 over this request body size")
    # The one set of limits (backdrop.limits): the same defaults as the batch jobs.
    max_image_bytes: int = Field(DEFAULT_LIMITS.max_image_bytes, gt=0, description="413 over this size per file")
    max_pixels: int = Field(DEFAULT_LIMITS.max_pixels, gt=0, description="413 over this many pixels per image")
    max_steps: int = Field(DEFAULT_LIMITS.max_steps, ge=1, le=SCHEDULER_MAX_STEPS)
    max_images: int = Field(DEFAULT_LIMITS.max_images, ge=1, le=16)
    max_candidates: int = Field(DEFAULT_LIMITS.max_candidates, ge=1, le=64, description="best-of-N per image")
    request_timeout_s: float = Field(60.0, gt=0, description="504 when an answer takes longer")
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After on 503 when Serve gives none")
    allowed_uri_prefixes: list[str] = Field(default_factory=list, description="s3://bucket/prefix/ a JSON "
                                            "body may point at (none: remote inputs are off)")
    uri_prefixes_by_key: dict[str, list[str]] = Field(default_factory=dict, description="a key's SHA-256 "
                                                      "-> its own prefixes, instead of allowed_uri_prefixes")
    allowed_styles: list[str] = Field(default_factory=list, description="brand style kits any key may use "
                                      "(\"*\": every kit; none: styles are off)")
    styles_by_key: dict[str, list[str]] = Field(default_factory=dict, description="a key's SHA-256 -> the kits "
                                                "it may use, instead of allowed_styles")
    rate_per_key_per_s: float | None = Field(None, gt=0, description="429 past this average rate per key")
    burst_per_key: int | None = Field(None, ge=1, description="requests a key may send at once before its "
                                                              "rate applies")
    max_concurrent_per_key: int | None = Field(None, ge=1, description="429 past this many requests of one "
                                                                       "key in progress")
    max_request_work: float = Field(DEFAULT_LIMITS.max_request_work, gt=0,
                                    description="422 over this price of one request: output megapixels x "
                                                "candidates x steps (the answer says the figure)")
    work_per_key_per_s: float | None = Field(None, gt=0, description="429 past this average work per key "
                                             "(megapixel-steps/s): a token bucket weighted by each request's price")
    work_burst_per_key: float | None = Field(None, gt=0, description="work a key may spend at once before "
                                             "work_per_key_per_s applies (default: max_request_work)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float | Literal["auto"] = Field("auto", description="per generator replica; auto: 1 if the "
                                                                  "cluster has a GPU, else 0")
    generator_num_cpus: float = Field(0.5, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per generator")
    schedulers: list[str] = Field(list(SCHEDULERS), min_length=1,
                                  description="denoising schedulers a request may ask for (422 otherwise)")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the networks (CUDA graphs on a GPU); auto: on CUDA only. A compiled "
                            "replica loads and warms up its default model at start, off the request path")
    batch_bucket: int | None = Field(None, ge=1, description="rows per denoising loop, padded so a row's pixels "
                                                             "never depend on its batch mates (default 8 on "
                                                             "CUDA, 4 on a CPU)")
    hold_dir: str | None = Field(None, description="tests only (backdrop.testhooks.TestHold): batches wait while "
                                                   "<dir>/hold exists; refused unless BACKDROP_TEST_HOOKS=1")

    @property
    def limits(self) -> Limits:
        return Limits(max_image_bytes=self.max_image_bytes, max_pixels=self.max_pixels,
                      max_steps=self.max_steps, max_images=self.max_images, max_candidates=self.max_candidates,
                      schedulers=tuple(self.schedulers), max_request_work=self.max_request_work)
