"""The generation runtime: the one way every front door loads a generator and makes images.

The Ray Data actor, the Serve replica, the MLflow pyfunc, ``backdrop generate`` and the
evaluation all go through the same three steps:

    gen = load("models:/backdrop@champion", device="auto")   # any reference, onto a device, once
    requests = product.requests(seeds)                        # backdrop.inputs.Product -> pipeline
    results = generate(gen, requests, inference(50))          # Image | Failure per request

Placements are requests too (``product.placed(placement).requests(seeds)``); requests of
different aspects run as one loop per generation size. :func:`generate_measured` returns
:class:`Generated` (image + device-seconds) and :func:`generate_best` keeps the best of N
candidates under a QA scorer (``backdrop.quality.qa``).

:func:`generate` isolates failures: the whole batch runs as one denoising loop, and when that
fails it is retried request by request so only the culprit fails; the results say which, as
:class:`~backdrop.errors.Failure` data (stage, code, message), never as strings to parse.
Importing this module does not import torch; :func:`load` and :func:`generate` do. Nor does it
import the tracking library: only a ``models:/`` reference needs MLflow, so an inference-only
image that serves a saved path does not carry it.

Speed (``compile``): on a GPU the networks are compiled with CUDA graphs for the pipeline's
fixed shapes (``batch_bucket`` rows x the generation sizes) and warmed up inside :func:`load`,
off the request path, with inductor's cache on local disk (``$BACKDROP_HOME/compile-cache``),
so a replica or actor restart reuses the kernels. The CPU default stays eager.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from PIL import Image

from . import storage
from .categories import CategoryMap
from .errors import GENERATE, QA, BackdropError, Failure
from .limits import DEFAULT_GUIDANCE, DEFAULT_LIMITS, Limits
from .schedulers import DEFAULT_SCHEDULER

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
    compiled: bool = False
    warmup_s: float = 0.0  # compile + warm-up time spent in load()

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
            "qa_scorer": m.qa_state is not None,
            "device": str(m.device),
            "dtype": str(m.dtype).replace("torch.", ""),
            "batch_bucket": self.pipe.batch_bucket,
            "compiled": self.compiled,
            "loaded_at": self.loaded_at,
        }


def display_name(reference: str) -> str:
    """What outputs call a model served from a path: its last component, not the server's path."""
    return reference.rstrip("/").rsplit("/", 1)[-1] or reference


COMPILE_MODES = ("auto", "on", "off")


def resolve_device(device: str = "auto") -> str:
    """``auto``: CUDA when there is a GPU, else the CPU; any other name as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compiles(compile: str, device: str) -> bool:
    """Whether a generator on ``device`` is compiled: ``auto`` on CUDA only, ``on`` everywhere."""
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
    return compile == "on" or (compile == "auto" and str(device).startswith("cuda"))


def load(reference: str, device: str = "auto", threads: int | None = None, *, compile: str = "auto",
         batch_bucket: int | None = None) -> LoadedGenerator:
    """Resolve any model reference (path, ``s3://``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)
    and load it onto ``device`` once.

    ``device="auto"`` picks CUDA in half precision when there is a GPU, else the CPU in float32.
    ``threads`` sets torch's intra-op threads for CPU inference. ``compile``: ``auto`` compiles
    on CUDA only, ``on`` everywhere, ``off`` never; a compiled generator is warmed up here on
    every generation size the model can meet, with and without a reference (:func:`warm_up`).
    ``batch_bucket``: rows per denoising loop (default: 8 on CUDA, 4 on a CPU).
    """
    import torch

    from .models.generator import BackdropModel
    from .pipeline import BackdropPipeline

    device = resolve_device(device)
    if threads and str(device) == "cpu":
        torch.set_num_threads(threads)
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    path, name, version = resolve(reference)
    model = BackdropModel.from_pretrained(path, device=device, torch_dtype=dtype)
    gen = LoadedGenerator(BackdropPipeline(model, batch_bucket), name, version, reference)
    if compiles(compile, device):
        warm_up(gen)
    log.info("loaded %s v%s on %s (batch bucket %d%s)", name, version, device, gen.pipe.batch_bucket,
             f", compiled and warmed up in {gen.warmup_s:.1f} s" if gen.compiled else "")
    return gen


def resolve(reference: str) -> tuple[str, str, str]:
    """(local or s3:// path, display name, version) of a model reference. The registry (and
    so MLflow) is imported for ``models:/`` references only."""
    if reference.startswith("models:/"):
        from . import registry

        resolved = registry.resolve(reference)
        return resolved.path, resolved.name, resolved.version
    return reference, display_name(reference), storage.saved_generator_version(reference)


def warm_up(gen: LoadedGenerator, sizes: list[tuple[int, int]] | None = None,
            config: InferenceConfig | None = None, backend: str = "inductor") -> None:
    """Compile the networks and run every shape a request can meet once, so no request pays
    for a compile: ``batch_bucket`` rows at each generation size, CG alone and CG+PG."""
    import numpy as np
    from PIL import Image

    from . import settings
    from .pipeline import GenerationRequest, InferenceConfig

    settings.use_compile_cache()
    start = time.perf_counter()
    if not gen.compiled:  # compiled once; each new shape below compiles its own graphs
        gen.pipe.compile(backend)
        gen.compiled = True
    config = config or InferenceConfig(num_inference_steps=2)
    for w, h in (sizes or gen.pipe.generation_sizes()) if gen.categories.names else ():
        image = Image.new("RGB", (w, h), (128, 128, 128))
        mask = np.zeros((h, w), np.float32)
        mask[h // 4:h // 2, w // 4:w // 2] = 1
        for reference in (None, image):
            gen.pipe([GenerationRequest(image, mask, gen.categories.names[0], reference=reference)], config)
    gen.warmup_s = time.perf_counter() - start


def wrap(model, name: str = "in-memory", version: str = "local", batch_bucket: int | None = None) -> LoadedGenerator:
    """A generator already in memory (training, evaluation, tests) under the same runtime."""
    from .pipeline import BackdropPipeline

    return LoadedGenerator(BackdropPipeline(model, batch_bucket), name, version, reference=name)


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


def inference(steps: int = 50, guidance: float = DEFAULT_GUIDANCE, limits: Limits = DEFAULT_LIMITS,
              scheduler: str | None = None) -> InferenceConfig:
    """A denoising configuration checked against the one set of limits (``scheduler`` None: the
    one saved with the model)."""
    from .pipeline import InferenceConfig

    return InferenceConfig(num_inference_steps=limits.check_steps(steps),
                           guidance_scale=limits.check_guidance(guidance),
                           scheduler=limits.check_scheduler(scheduler))


def row_seed(base_seed: int, product_id: str) -> int:
    """A stable per-product seed: reruns and resumes regenerate the same pixels."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{product_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def generate(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
             progress: Progress | None = None) -> list[Image.Image | Failure]:
    """One image or one :class:`Failure` per request, in order (:func:`generate_measured`
    without the measurements, for callers that only want pixels)."""
    return [r.image if isinstance(r, Generated) else r for r in generate_measured(gen, requests, config, progress)]


@dataclass
class Generated:
    """One generated image with what it cost and, for best-of-N, how it was chosen.

    ``device_seconds``: the device time of the denoising loop that made it, shared equally by
    the images of that loop (for best-of-N: the sum over the output's candidates). On a CPU it
    is ``time.process_time()`` of the generating process, so it counts every torch thread (and
    any other thread of that process running meanwhile: a Serve replica's HTTP threads); on
    CUDA it is wall time between two ``torch.cuda.synchronize()``.
    """

    image: Image.Image
    seed: int
    device_seconds: float
    generation_size: tuple[int, int]  # (width, height) at model scale, before the upscale
    scores: dict | None = None  # the kept candidate's QA scores
    candidates: list[dict] | None = None  # every candidate: seed, scores, device_seconds, kept
    qa_passed: bool | None = None  # None when no QA ran


class _DeviceClock:
    """Device-seconds of a block of work on ``device`` (see :class:`Generated`)."""

    def __init__(self, device) -> None:
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self.seconds = 0.0

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def __enter__(self) -> "_DeviceClock":
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = self._now() - self._start


def generate_measured(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
                      progress: Progress | None = None) -> list[Generated | Failure]:
    """One :class:`Generated` or one :class:`Failure` per request, in order.

    Requests are grouped as the pipeline's loops are (one generation size, at most
    ``batch_bucket`` rows, padded to exactly that: a row's pixels are the same whichever
    requests share its loop), so device-seconds are measured per loop. A loop that fails as a
    whole is retried request by request, so only the culprit fails. :class:`Cancelled` (raised by ``progress``) ends the
    call at once.
    """
    results: list[Generated | Failure] = [None] * len(requests)  # type: ignore[list-item]
    for members in gen.pipe.loops(requests):
        size = gen.pipe.generation_size(requests[members[0]].image.size)
        for i, result in zip(members, _generate_group(gen, [requests[i] for i in members], config, progress, size)):
            results[i] = result
    return results


def _generate_group(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
                    progress: Progress | None, size: tuple[int, int]) -> list[Generated | Failure]:
    def run(batch: list[GenerationRequest]) -> list[Generated]:
        with _DeviceClock(gen.model.device) as clock:
            images = gen.pipe(batch, config, progress=progress)
        share = clock.seconds / len(batch)
        return [Generated(im, int(r.seed), share, size) for im, r in zip(images, batch)]

    try:
        return list(run(requests))
    except Cancelled:
        raise
    except Exception as batch_error:  # noqa: BLE001 - isolate the culprit below
        if len(requests) == 1:
            return [Failure.of(GENERATE, batch_error)]
        log.warning("batch of %d failed (%s); retrying one by one", len(requests), batch_error)
    results: list[Generated | Failure] = []
    for request in requests:
        try:
            results.extend(run([request]))
        except Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - this request's failure
            results.append(Failure.of(GENERATE, e))
    return results


Scorer = Callable[["GenerationRequest", Image.Image], dict]
"""QA scores of one output for its request; must include ``qa_score`` (higher is better).
``backdrop.quality.qa.QAScorer`` is the one the platform ships."""

DEFAULT_QA_THRESHOLD = 0.5


def candidate_seed(seed: int, k: int) -> int:
    """Candidate ``k`` of an output: candidate 0 is the output's own seed (best-of-1 is plain
    generation), the others are derived from it, stable across reruns."""
    if k == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{seed}:candidate:{k}".encode()).digest()[:4], "big") & 0x7FFFFFFF


# Best-of-N generates candidates a slice at a time, each slice scored and folded into the best
# so far before the next is made: full-size candidates in memory stay under this many pixels
# (at least one full denoising loop's worth), not requests x candidates of them.
CANDIDATE_PIXELS_IN_FLIGHT = 64_000_000


@dataclass
class _Picking:
    """One request's candidates so far: what each was, the best one, the failures."""

    candidates: list = field(default_factory=list)
    best: tuple[int, Generated] | None = None
    failures: list = field(default_factory=list)

    def add(self, request: GenerationRequest, cand: "Generated | Failure", scorer: "Scorer") -> None:
        if isinstance(cand, Failure):
            self.failures.append(cand)
            self.candidates.append({"seed": None, "error": cand.line, "device_seconds": 0.0, "kept": False})
            return
        try:
            cand.scores = scorer(request, cand.image)
        except Exception as e:  # noqa: BLE001 - this candidate's failure, never its batch mates'
            self.failures.append(Failure.of(QA, e))
            self.candidates.append({"seed": cand.seed, "error": self.failures[-1].line,
                                    "device_seconds": cand.device_seconds, "kept": False})
            return
        self.candidates.append({"seed": cand.seed, "scores": cand.scores, "device_seconds": cand.device_seconds,
                                "kept": False})
        if self.best is None or cand.scores["qa_score"] > self.best[1].scores["qa_score"]:
            self.best = (len(self.candidates) - 1, cand)  # the previous best's image is dropped here

    def result(self, threshold: float) -> "Generated | Failure":
        if self.best is None:  # every candidate failed: the first one's failure
            return self.failures[0]
        index, kept = self.best
        self.candidates[index]["kept"] = True
        kept.candidates = self.candidates
        kept.device_seconds = float(sum(c["device_seconds"] for c in self.candidates))
        kept.qa_passed = bool(kept.scores["qa_score"] >= threshold)
        return kept


def _slices(requests: list[GenerationRequest], max_pixels: int, at_least: int) -> list[slice]:
    """Consecutive slices of ``requests`` holding at most ``max_pixels`` of output (or
    ``at_least`` requests: one full denoising loop)."""
    out, start, pixels = [], 0, 0
    for i, r in enumerate(requests):
        pixels += r.image.size[0] * r.image.size[1]
        if pixels > max_pixels and i - start >= at_least:
            out.append(slice(start, i))
            start, pixels = i, r.image.size[0] * r.image.size[1]
    out.append(slice(start, len(requests)))
    return out


def generate_best(gen: LoadedGenerator, requests: list[GenerationRequest], config: InferenceConfig,
                  n_candidates: int | list[int], scorer: Scorer, threshold: float | None = None,
                  progress: Progress | None = None,
                  max_pixels_in_flight: int = CANDIDATE_PIXELS_IN_FLIGHT) -> list[Generated | Failure]:
    """Best-of-N: ``n_candidates`` seeds per request (or one count per request: the HTTP
    batch's jobs each ask their own), each scored, the best kept.

    Candidates run through :func:`generate_measured` a slice at a time (at most
    ``max_pixels_in_flight`` of output, grouped by size within it); each slice is scored and
    folded into every request's best so far before the next is made, so memory holds one slice
    and one best per request. Pixels do not depend on the slicing (batch-invariant loops). The
    kept :class:`Generated` carries every candidate's seed, scores and device-seconds, its
    ``device_seconds`` is the sum over its candidates (what the output cost), and ``qa_passed``
    says whether its ``qa_score`` reaches ``threshold`` (default: the scorer's own
    ``threshold``; an output below it is still an output, flagged for review). A candidate
    whose scoring raises fails alone (stage ``qa``); a request fails only when all its
    candidates fail (with the first candidate's failure).
    """
    counts = list(n_candidates) if isinstance(n_candidates, (list, tuple)) else [n_candidates] * len(requests)
    if len(counts) != len(requests):
        raise ValueError(f"{len(counts)} candidate counts for {len(requests)} requests")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            from .errors import InvalidParameterError

            raise InvalidParameterError(f"candidates must be a positive integer, got {n!r}")
    from dataclasses import replace

    if threshold is None:
        threshold = float(getattr(scorer, "threshold", DEFAULT_QA_THRESHOLD))
    owner = [j for j, n in enumerate(counts) for _ in range(n)]
    expanded = [replace(r, seed=candidate_seed(r.seed, k)) for r, n in zip(requests, counts) for k in range(n)]
    picking = [_Picking() for _ in requests]
    for part in _slices(expanded, max_pixels_in_flight, gen.pipe.batch_bucket):
        made = generate_measured(gen, expanded[part], config, progress)
        for j, cand in zip(owner[part], made):
            picking[j].add(requests[j], cand, scorer)
    return [p.result(threshold) for p in picking]


@dataclass(frozen=True)
class ModelInfo:
    """What a job's driver needs to know about a generator without loading its networks."""

    resolution: int
    categories: CategoryMap
    qa_scorer: bool = False  # a QA scorer is saved with it (qa/scorer.json): best-of-N can run
    scheduler: str = DEFAULT_SCHEDULER  # the one it generates with when a job names none


def read_model_info(model_path: str) -> ModelInfo:
    """Resolution, category map and whether a QA scorer is saved with it, from a saved generator."""
    from .models.generator import CONFIG_NAME, QA_SCORER_NAME  # constants; torch is already imported by then

    meta = json.loads(storage.read_bytes(storage.join(model_path, CONFIG_NAME)))
    return ModelInfo(int(meta["config"]["resolution"]), CategoryMap.from_json(json.dumps(meta["categories"])),
                     storage.exists(storage.join(model_path, *QA_SCORER_NAME.split("/"))),
                     meta["config"].get("scheduler") or DEFAULT_SCHEDULER)
