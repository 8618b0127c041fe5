"""Online generation: what the Serve replicas do that is neither HTTP nor Ray.

* the ingress turns one request into a validated :class:`Job` (:func:`load_job`, with the same
  decoding rules, limits and typed errors as the batch jobs: :mod:`backdrop.inputs`);
* the generator replica rejects a job its model cannot serve (:func:`check_job`) before it joins
  a dynamic batch, and :func:`run_jobs` puts a whole batch through the runtime, one denoising
  loop per group of jobs that can share one (same steps and guidance).

Nothing here imports Ray or a web framework; torch is imported only where the model runs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from .. import runtime
from ..errors import GENERATE, Failure
from ..imaging import encode_image
from ..inputs import Product, decode_product
from ..limits import DEFAULT_LIMITS, Limits
from ..runtime import Cancelled, LoadedGenerator
from .params import GenerateParams

@dataclass
class Job:
    """One validated request, as it travels from the ingress to a generator replica."""

    product: Product
    params: GenerateParams
    cancelled: bool = field(default=False, compare=False)  # set when its caller gives up


def load_job(params: GenerateParams, *, image: bytes | None = None, mask: bytes | None = None,
             reference: bytes | None = None, reference_mask: bytes | None = None,
             limits: Limits = DEFAULT_LIMITS) -> Job:
    """Decode and validate a request's files (product mask from ``mask`` or the alpha)."""
    return Job(decode_product(params.category, image, mask, reference=reference, reference_mask=reference_mask,
                              prompt=params.prompt, limits=limits), params)


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


def check_job(gen: LoadedGenerator, job: Job) -> None:
    """Reject what this model cannot serve (unknown category) before the job joins a batch."""
    gen.categories.id_of(job.params.category)


def run_jobs(gen: LoadedGenerator, jobs: list[Job]) -> list[Generated | Failure]:
    """Generate every job of a dynamic batch, one denoising loop per (steps, guidance) group.

    Returns one entry per job, in order: its :class:`Generated`, or the :class:`Failure` of its
    first failed image. The runtime isolates failures within a loop; a loop whose callers all
    gave up stops early and its jobs fail as ``cancelled``.
    """
    from ..pipeline import InferenceConfig  # the ingress checked steps and guidance against the limits

    groups: dict[tuple[int, float], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[job.params.loop_key].append(i)

    results: list[Generated | Failure] = [None] * len(jobs)  # type: ignore[list-item]
    for number, members in enumerate(groups.values(), start=1):
        steps, guidance = jobs[members[0]].params.loop_key
        requests = [r for i in members for r in jobs[i].product.requests(jobs[i].params.seeds)]

        def stop_if_abandoned(step: int, total: int, members=members) -> None:
            if all(jobs[i].cancelled for i in members):
                raise Cancelled(f"all {len(members)} caller(s) gave up at step {step}/{total}")

        t = time.perf_counter()
        try:
            images = runtime.generate(gen, requests, InferenceConfig(steps, guidance), progress=stop_if_abandoned)
        except Cancelled as e:
            for i in members:
                results[i] = Failure.of(GENERATE, e)
            continue
        seconds, k = time.perf_counter() - t, 0
        for i in members:
            mine = images[k:k + jobs[i].params.num_images]
            k += len(mine)
            failed = next((r for r in mine if isinstance(r, Failure)), None)
            results[i] = failed or Generated([encode_image(im) for im in mine], jobs[i].params.seeds, gen.name,
                                             gen.version, len(members), len(requests), seconds, number)
    return results
