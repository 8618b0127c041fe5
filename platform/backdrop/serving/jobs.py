"""Online generation: what the Serve replicas do that is neither HTTP nor Ray.

* the ingress turns one request into a validated :class:`Job` (:func:`load_job`, with the same
  decoding rules, limits and typed errors as the batch jobs: :mod:`backdrop.inputs`);
* the generator replica rejects a job its model cannot serve (:func:`check_job`: an unknown
  category, best-of-N without a QA scorer) before it joins a dynamic batch, and
  :func:`run_jobs` puts a whole batch through the runtime, one call per group of jobs that can
  share a denoising loop (same steps, guidance and scheduler; the runtime runs one loop per placement
  size within it), every image with its placement, device-seconds and QA scores.

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

PHOTO = "photo"  # the product as uploaded (no placement asked for)

@dataclass
class Job:
    """One validated request, as it travels from the ingress to a generator replica."""

    product: Product
    params: GenerateParams
    cancelled: bool = field(default=False, compare=False)  # set when its caller gives up
    placed: list[tuple[str, Product]] = field(default_factory=list)  # (placement, product on its canvas)
    work: float = 0.0  # its price: output megapixels x candidates x steps (Limits.check_work)

    @property
    def outputs(self) -> list[tuple[str, Product]]:
        """What to generate, in answer order: each placement (or the photo) once per seed."""
        return self.placed or [(PHOTO, self.product)]


def load_job(params: GenerateParams, *, image: bytes | None = None, mask: bytes | None = None,
             reference: bytes | None = None, reference_mask: bytes | None = None,
             limits: Limits = DEFAULT_LIMITS) -> Job:
    """Decode and validate a request's files (product mask from ``mask`` or the alpha), lay
    the product on each placement asked for (a canvas over the limits is refused here) and price
    the whole request (over ``max_request_work`` it is refused with its figure)."""
    product = decode_product(params.category, image, mask, reference=reference, reference_mask=reference_mask,
                             prompt=params.prompt, limits=limits)
    placed = [(p.name, product.placed(p, limits=limits)) for p in params.placement_list(limits)]
    job = Job(product, params, placed=placed)
    megapixels = params.num_images * sum(p.image.width * p.image.height for _, p in job.outputs) / 1e6
    job.work = limits.check_work(megapixels, params.candidates, params.steps)
    return job


@dataclass
class Generated:
    """One job's answer."""

    images: list[bytes]  # encoded as the request's image_format (PNG by default: the product's pixels bit-identical)
    seeds: list[int]  # the request's seeds (each placement is made once per seed)
    model_name: str
    model_version: str
    batch_requests: int  # requests that shared this job's denoising loop
    batch_images: int  # images made by that loop
    generate_s: float  # wall time of that loop
    loop: int = 0  # which of its batch's denoising loops made it
    outputs: list[dict] = field(default_factory=list)  # per image: placement, seed, size, cost, QA
    scheduler: str = ""  # the one that ran (the request's, else the model's own)

    @property
    def device_seconds(self) -> float:
        return float(sum(o["device_seconds"] for o in self.outputs))


def check_job(gen: LoadedGenerator, job: Job) -> None:
    """Reject what this model cannot serve (unknown category, best-of-N without a QA scorer)
    before the job joins a batch."""
    from ..quality.qa import require_scorer

    gen.categories.id_of(job.params.category)
    require_scorer(job.params.candidates, gen.model.qa_state is not None, f"{gen.name} v{gen.version}")


def run_jobs(gen: LoadedGenerator, jobs: list[Job]) -> list[Generated | Failure]:
    """Generate every job of a dynamic batch, one denoising loop per (steps, guidance, scheduler) group.

    Returns one entry per job, in order: its :class:`Generated`, or the :class:`Failure` of its
    first failed image. The runtime isolates failures within a loop; a loop whose callers all
    gave up stops early and its jobs fail as ``cancelled``.
    """
    from ..pipeline import InferenceConfig  # the ingress checked steps and guidance against the limits
    from ..quality.qa import generate_scored

    groups: dict[tuple[int, float, str], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[job.params.loop_key].append(i)

    results: list[Generated | Failure] = [None] * len(jobs)  # type: ignore[list-item]
    for number, members in enumerate(groups.values(), start=1):
        steps, guidance, scheduler = jobs[members[0]].params.loop_key
        requests, names, counts = [], [], []
        for i in members:
            for placement, product in jobs[i].outputs:
                made = product.requests(jobs[i].params.seeds)
                requests += made
                names += [(placement, int(r.seed)) for r in made]
                counts += [jobs[i].params.candidates] * len(made)

        def stop_if_abandoned(step: int, total: int, members=members) -> None:
            if all(jobs[i].cancelled for i in members):
                raise Cancelled(f"all {len(members)} caller(s) gave up at step {step}/{total}")

        t = time.perf_counter()
        config = InferenceConfig(steps, guidance, scheduler=scheduler)
        try:
            images = generate_scored(gen, requests, config, counts, progress=stop_if_abandoned)
        except Cancelled as e:
            for i in members:
                results[i] = Failure.of(GENERATE, e)
            continue
        seconds, k = time.perf_counter() - t, 0
        for i in members:
            n = jobs[i].params.num_images * len(jobs[i].outputs)
            mine, placements = images[k:k + n], names[k:k + n]
            k += n
            failed = next((r for r in mine if isinstance(r, Failure)), None)
            p = jobs[i].params
            results[i] = failed or Generated([encode_image(g.image, p.image_format, p.quality) for g in mine], p.seeds,
                                             gen.name, gen.version, len(members), len(requests), seconds, number,
                                             [describe_output(g, p, seed) for g, (p, seed) in zip(mine, placements)],
                                             gen.pipe.scheduler_name(config))
    return results


def describe_output(made: runtime.Generated, placement: str, seed: int) -> dict:
    """What the JSON envelope says about one image besides its pixels (``seed``: the request's,
    which reproduces it; the kept candidate's own seed is in ``candidates``)."""
    return {"placement": placement, "seed": seed, "width": made.image.width, "height": made.image.height,
            "device_seconds": round(made.device_seconds, 6),
            "qa_score": made.scores["qa_score"] if made.scores else None,
            "qa_passed": made.qa_passed, "scores": made.scores, "candidates": made.candidates}
