"""What a backfill or nightly run is asked to do: one dataclass, shared by every front door.

``jobs/catalog_backfill.py``, ``jobs/nightly_regen.py``, ``backdrop backfill`` and ``backdrop
generate`` all build a :class:`BackfillConfig` (from the same flags, :mod:`.args`, or a YAML
file of its fields: ``--config recipes/generate/nightly.yaml``, :mod:`backdrop.config_files`) and call
the same ``run_*`` function. Its defaults are the only ones: the flags declare none. No Ray here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..categories import normalize
from ..errors import InvalidParameterError
from ..limits import DEFAULT_GUIDANCE, DEFAULT_LIMITS, Limits
from ..placements import parse_placements
from ..runtime import COMPILE_MODES
from ..scope import InputScope, ScopeConfigError
from .keys import PHOTO
from .records import OutputConfig

BACKFILL_EXPERIMENT = "backdrop-backfill"
EXECUTORS = ("ray", "local")


@dataclass(frozen=True)
class BackfillConfig:
    catalog: str  # Parquet file, directory or s3:// prefix
    model: str  # models:/NAME@ALIAS, models:/NAME/VERSION or a saved generator's path
    output: str  # directory or s3:// prefix
    categories: tuple[str, ...] = ()  # only these (all when empty)
    steps: int = 50
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str | None = None  # a name of backdrop.schedulers.SCHEDULERS (None: the model's own)
    seed: int = 0
    batch_size: int = 16
    concurrency: int = 1  # actors: the pool scales between 1 and this
    num_gpus: float = 0.0  # per actor; > 0 runs the generator on CUDA in float16
    cpus_per_actor: float | None = None  # None: 0.5 on clusters of <= 4 CPUs, else 1
    threads_per_actor: int | None = None  # CPU inference; None: the node's cores / concurrency
    compile: str = "auto"  # runtime.COMPILE_MODES: auto compiles (and warms up) on CUDA only
    batch_bucket: int | None = None  # rows per denoising loop; None: 8 on CUDA, 4 on a CPU
    image_format: str = "png"
    quality: int = 95
    limit: int | None = None  # the first N rows (after the category filter) in catalog order
    max_failure_rate: float = 0.1
    experiment: str = BACKFILL_EXPERIMENT
    kind: str = "backfill"  # MLflow tag: backfill | nightly | generate
    executor: str = "ray"  # ray: Ray Data stages and an actor pool; local: the same stages in this process
    limits: Limits = field(default=DEFAULT_LIMITS)
    lease_wait_s: float = 0.0  # wait this long for another run's lease on the output (0: refuse at once)
    lease_ttl_s: float = 60.0  # a holder that stops renewing loses its lease after this long
    # Ad placements: one output (and one manifest record) per product and placement. Empty: the
    # product as photographed (placement "photo", the only output before placements existed).
    placements: tuple[str, ...] = ()
    candidates: int = 1  # best-of-N: > 1 needs the model's QA scorer (qa/scorer.json)
    qa_threshold: float | None = None  # None: the scorer's own threshold (saved with it)
    # The price of one device-hour, for the cost estimate in the summary and the MLflow run.
    # 0.0 (the default): no estimate is shown, only device-seconds.
    price_per_device_hour: float = 0.0
    # Where catalog inputs may be read from besides the catalog's own bucket or folder
    # (scope.InputScope): s3://bucket[/prefix] and absolute local folders; $BACKDROP_ALLOW_INPUTS adds more.
    allow_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("categories", "placements", "allow_inputs"):  # a YAML file gives lists
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(p for p in value.split(",") if p.strip())
                               if isinstance(value, str) else tuple(value))
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        # Refused before any model is resolved or row is read, as the HTTP service refuses it.
        self.limits.check_steps(self.steps)
        self.limits.check_guidance(self.guidance)
        object.__setattr__(self, "scheduler", self.limits.check_scheduler(self.scheduler))
        if self.compile not in COMPILE_MODES:
            raise InvalidParameterError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.batch_bucket is not None and not (isinstance(self.batch_bucket, int) and self.batch_bucket >= 1):
            raise InvalidParameterError(f"batch_bucket must be a positive integer, got {self.batch_bucket!r}")
        names = tuple(p.name for p in parse_placements(list(self.placements), self.limits)) \
            if self.placements and tuple(self.placements) != (PHOTO,) else ()
        object.__setattr__(self, "placements", names)
        self.limits.check_candidates(self.candidates)
        if self.qa_threshold is not None and not (isinstance(self.qa_threshold, (int, float))
                                                  and math.isfinite(self.qa_threshold)):
            raise InvalidParameterError(f"qa_threshold must be a number, got {self.qa_threshold!r}")
        if not (math.isfinite(self.price_per_device_hour) and self.price_per_device_hour >= 0):
            raise InvalidParameterError(f"price_per_device_hour must be >= 0, got {self.price_per_device_hour!r}")
        try:
            self.input_scope()
        except ScopeConfigError as e:
            raise InvalidParameterError(str(e)) from None

    @property
    def placement_names(self) -> tuple[str, ...]:
        """The placement of every record a row becomes (``("photo",)`` without placements)."""
        return self.placements or (PHOTO,)

    def inference(self):
        from .. import runtime

        return runtime.inference(self.steps, self.guidance, self.limits, self.scheduler)

    def input_scope(self) -> InputScope:
        """The catalog's bucket or folder, ``allow_inputs``, and the deployment's ``$BACKDROP_ALLOW_INPUTS``."""
        from ..settings import allowed_inputs

        return InputScope.of_catalog(self.catalog, (*self.allow_inputs, *allowed_inputs()))

    def load_kwargs(self, categories, styles=None) -> dict:
        """The load stage's arguments (``stages.load_batch``), on Ray and in process alike;
        ``styles``: the run's pinned brand style kits (``brands.StylePins``)."""
        return dict(categories=categories, limits=self.limits, scope=self.input_scope(),
                    work=(self.candidates, self.steps), styles=styles, seed=self.seed)

    def output_config(self) -> OutputConfig:
        return OutputConfig(self.image_format, self.quality)

    def selection(self) -> "RowSelection":
        return RowSelection(tuple(self.categories), self.limit)


@dataclass(frozen=True)
class RowSelection:
    """The catalog rows a run covers: ``categories`` (all when empty), then the first ``limit``."""

    categories: tuple[str, ...] = ()
    limit: int | None = None

    def by_category(self, rows: "pa.Table") -> "pa.Table":
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.categories:
            return rows
        wanted = {normalize(c) for c in self.categories}
        keep = [c for c in pc.unique(rows["category"]).to_pylist() if c is not None and normalize(c) in wanted]
        return rows.filter(pc.is_in(rows["category"], value_set=pa.array(keep, pa.string())))
