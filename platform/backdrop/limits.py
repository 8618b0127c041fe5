"""What one product, one request and one generation may ask for: one set of limits for every front door.

The backfill, ``backdrop generate``, the HTTP service and the evaluation all check input
against the same :class:`Limits`, so a product that one of them accepts is accepted by all of
them and a request that one refuses is refused by all (with the same typed error). Front
doors may override a field from their configuration (the Serve app's ``args``, a backfill
config), never re-define it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidParameterError, RequestTooLargeError
from .schedulers import SCHEDULERS

# DDIM with SD's steps_offset cannot take one step per training timestep (1000): a hard
# property of the scheduler, not a policy; Limits.max_steps must stay at or below it.
SCHEDULER_MAX_STEPS = 500

# The classifier-free guidance a caller gets when it names none (every front door, the
# evaluation and the benchmarks). 4.0, not the earlier 2.0: swept over 2-10 on the shipped
# model (demo catalog) and two adapted ones (README "Guidance"), colour consistency rose on
# all three up to 4-5 and pattern held; from 7 up, pattern fell on two of them.
DEFAULT_GUIDANCE = 4.0


@dataclass(frozen=True)
class Limits:
    """Input limits; over one is a typed ``InvalidInputError`` (a failed row, or an HTTP 4xx)."""

    max_image_bytes: int = 32 * 2**20  # per image or mask file, checked before it is read
    max_pixels: int = 25_000_000  # per image (a 6000x4000 camera photo fits); also a bomb guard
    min_product_pixels: int = 1  # a mask must keep at least this many product pixels ...
    min_background_pixels: int = 1  # ... and leave at least this many to generate
    max_steps: int = 100  # denoising steps per image
    max_guidance: float = 30.0  # classifier-free guidance scale (0 .. this)
    max_images: int = 4  # images per HTTP request
    max_prompt_chars: int = 500  # free-text background prompt
    max_placements: int = 8  # ad placements per product
    max_aspect_ratio: float = 4.0  # a placement's long side over its short side
    max_candidates: int = 8  # best-of-N: candidates generated (and scored) per output
    schedulers: tuple[str, ...] = tuple(SCHEDULERS)  # the denoising schedulers a request may name
    # What one request may cost, in output megapixels x candidates x steps: the full-size
    # canvases best-of-N holds at once, times the denoising work (a 12 MP photo, 50 steps: 600).
    max_request_work: float = 20_000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedulers", tuple(self.schedulers))  # a config file gives a list
        if not 1 <= self.max_steps <= SCHEDULER_MAX_STEPS:
            raise ValueError(f"max_steps must be in 1..{SCHEDULER_MAX_STEPS}, got {self.max_steps}")
        unknown = [s for s in self.schedulers if s not in SCHEDULERS]
        if unknown or not self.schedulers:
            raise ValueError(f"schedulers must name some of {', '.join(SCHEDULERS)}, got {list(self.schedulers)}")

    def check_steps(self, steps) -> int:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.max_steps:
            raise InvalidParameterError(f"steps must be an integer in 1..{self.max_steps}, got {steps!r}")
        return steps

    def check_scheduler(self, name) -> str | None:
        """A scheduler name a caller may ask for, normalised; ``None`` (none named: the model's
        own, saved with it) stays ``None``."""
        if name is None:
            return None
        if not isinstance(name, str) or name.strip().lower() not in self.schedulers:
            raise InvalidParameterError(f"scheduler must be one of {', '.join(self.schedulers)}, got {name!r}")
        return name.strip().lower()

    def check_guidance(self, guidance) -> float:
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or \
                not (math.isfinite(guidance) and 0.0 <= guidance <= self.max_guidance):
            raise InvalidParameterError(f"guidance must be in 0..{self.max_guidance:g}, got {guidance!r}")
        return float(guidance)

    def check_candidates(self, candidates) -> int:
        if isinstance(candidates, bool) or not isinstance(candidates, int) or \
                not 1 <= candidates <= self.max_candidates:
            raise InvalidParameterError(f"candidates must be an integer in 1..{self.max_candidates}, got {candidates!r}")
        return candidates

    def check_work(self, megapixels: float, candidates: int, steps: int) -> float:
        """The request's price (see ``max_request_work``), or a ``RequestTooLargeError`` with it."""
        work = megapixels * candidates * steps
        if work > self.max_request_work:
            raise RequestTooLargeError(
                f"this request is {work:,.0f} megapixel-steps of work ({megapixels:,.1f} output megapixels x "
                f"{candidates} candidates x {steps} steps), over the limit of {self.max_request_work:,.0f}; "
                "ask for fewer placements, images, candidates or steps")
        return work

    def check_prompt(self, prompt: str | None) -> str | None:
        if prompt and len(prompt) > self.max_prompt_chars:
            raise InvalidParameterError(
                f"prompt is {len(prompt)} characters, over the limit of {self.max_prompt_chars}")
        return prompt


DEFAULT_LIMITS = Limits()
