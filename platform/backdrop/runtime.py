"""The generation runtime: the one way every front door loads a generator and makes images.

The Ray Data actor, the Serve replica, the MLflow pyfunc, ``backdrop generate`` and the
evaluation all go through the same three steps:

    gen = load("models:/backdrop@champion", device="auto")   # any reference, onto a device, once
    requests = product.requests(seeds)                        # backdrop.inputs.Product -> pipeline
    results = generate(gen, requests, inference(50, 2.0))     # Image | Failure per request

:func:`generate` isolates failures: the whole batch runs as one denoising loop, and when that
fails it is retried request by request so only the culprit fails; the results say which, as
:class:`~backdrop.errors.Failure` data (stage, code, message), never as strings to parse.
Importing this module does not import torch; :func:`load` and :func:`generate` do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from PIL import Image

from . import registry, storage
from .categories import CategoryMap
from .errors import GENERATE, BackdropError, Failure
from .limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from .pipeline import BackdropPipeline, GenerationRequest, InferenceConfig

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class Cancelled(BackdropError):
    """Every caller of a denoising loop gave up: the loop stopped early (never retried)."""

    code = "cancelled"


@dataclass
class LoadedGenerator:
    """A generator on its device, with the lineage every output records."""

    pipe: BackdropPipeline
    name: str
    version: str
    reference: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def model(self):
        return self.pipe.model

    @property
    def categories(self) -> CategoryMap:
        return self.model.categories

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


def display_name(reference: str) -> str:
    """What outputs call a model served from a path: its last component, not the server's path."""
    return reference.rstrip("/").rsplit("/", 1)[-1] or reference


def load(reference: str, device: str = "auto", threads: int | None = None) -> LoadedGenerator:
    """Resolve any model reference (path, ``s3://``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)
    and load it onto ``device`` once.

    ``device="auto"`` picks CUDA in half precision when there is a GPU, else the CPU in float32.
    ``threads`` sets torch's intra-op threads for CPU inference.
    """
    import torch

    from .models.generator import BackdropModel
    from .pipeline import BackdropPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads and str(device) == "cpu":
        torch.set_num_threads(threads)
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    resolved = registry.resolve(reference)
    model = BackdropModel.from_pretrained(resolved.path, device=device, torch_dtype=dtype)
    name = resolved.name if reference.startswith("models:/") else display_name(reference)
    log.info("loaded %s v%s on %s", name, resolved.version, device)
    return LoadedGenerator(BackdropPipeline(model), name, resolved.version, reference)


def wrap(model, name: str = "in-memory", version: str = "local") -> LoadedGenerator:
    """A generator already in memory (training, evaluation, tests) under the same runtime."""
    from .pipeline import BackdropPipeline

    return LoadedGenerator(BackdropPipeline(model), name, version, reference=name)


def generate_all(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
                 batch_size: int = 32) -> list[Image.Image]:
    """Every request's image, ``batch_size`` at a time; a failed request raises (evaluations and
    galleries must not skip an image silently)."""
    out: list[Image.Image] = []
    for i in range(0, len(requests), batch_size):
        for result in generate(gen, requests[i:i + batch_size], config):
            if isinstance(result, Failure):
                raise RuntimeError(f"generation failed at {result.stage}: {result.line}")
            out.append(result)
    return out


def inference(steps: int = 50, guidance: float = 2.0, limits: Limits = DEFAULT_LIMITS) -> InferenceConfig:
    """A denoising configuration checked against the one set of limits."""
    from .pipeline import InferenceConfig

    return InferenceConfig(num_inference_steps=limits.check_steps(steps),
                           guidance_scale=limits.check_guidance(guidance))


def row_seed(base_seed: int, product_id: str) -> int:
    """A stable per-product seed: reruns and resumes regenerate the same pixels."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{product_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def generate(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
             progress: Progress | None = None) -> list[Image.Image | Failure]:
    """One image or one :class:`Failure` per request, in order.

    The batch runs as one denoising loop (the pipeline groups prompts and applies PG only to
    rows with a reference). If it fails as a whole it is retried request by request, so only
    the culprit fails. :class:`Cancelled` (raised by ``progress``) ends the call at once.
    """
    if not requests:
        return []
    try:
        return list(gen.pipe(requests, config, progress=progress))
    except Cancelled:
        raise
    except Exception as batch_error:  # noqa: BLE001 - isolate the culprit below
        if len(requests) == 1:
            return [Failure.of(GENERATE, batch_error)]
        log.warning("batch of %d failed (%s); retrying one by one", len(requests), batch_error)
    results: list[Image.Image | Failure] = []
    for request in requests:
        try:
            results.extend(gen.pipe([request], config, progress=progress))
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - this request's failure
            results.append(Failure.of(GENERATE, e))
    return results


@dataclass(frozen=True)
class ModelInfo:
    """What a job's driver needs to know about a generator without loading its networks."""

    resolution: int
    categories: CategoryMap


def read_model_info(model_path: str) -> ModelInfo:
    """Resolution and category map from a saved generator's ``backdrop.json``."""
    from .models.generator import CONFIG_NAME  # a constant; torch is already imported by then

    meta = json.loads(storage.read_bytes(storage.join(model_path, CONFIG_NAME)))
    return ModelInfo(int(meta["config"]["resolution"]), CategoryMap.from_json(json.dumps(meta["categories"])))
