"""A training recipe: every knob ``backdrop train`` takes, declared once, as data.

Torchtune's shape: a recipe is a YAML file of :class:`TrainRecipe`'s fields (``recipes/*.yaml``
in the repository: the shipped checkpoint's two steps, the README's adaptation), and the
command line overrides it with ``key=value`` pairs (OmegaConf's dotlist)::

    backdrop train --config recipes/adapt.yaml catalog=my/train.parquet output=runs/adapted steps.cg=3000

The flags (``--catalog``, ``--steps cg=1500,pg=300``, ...) are generated from the same fields
(:func:`add_arguments`), so a flag cannot drift from the recipe's key. Precedence, lowest
first: the field's default, the ``--config`` file, flags, ``key=value``. The resolved recipe
is what the MLflow run logs (:func:`to_yaml`), so a run says exactly how it was made.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional

from .. import config_files
from ..models.families import DEFAULT_FAMILY, FAMILIES
from .loop import STAGES

MIXED_PRECISIONS = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


PREFIX = "recipe."  # the dest prefix of a flag that sets a recipe field
_knob = config_files.knob


@dataclass
class TrainRecipe:
    """What one ``backdrop train`` run does. ``steps``/``minutes`` are per-stage budgets
    (whichever ends first); empty means the stage's default."""

    catalog: str = _knob("???", "training catalog Parquet (image = ad image, mask = product)")
    output: str = _knob("???", "where to save the generator (directory or s3://)")
    init: Optional[str] = _knob(None, "continue from this saved generator instead of a fresh tiny preset")
    family: str = _knob(DEFAULT_FAMILY, "the fresh tiny preset's model family (without init; a saved "
                                        "generator keeps its own)", choices=tuple(FAMILIES))
    stages: List[str] = _knob(lambda: list(STAGES), "stages, in order (vae, base, cg, pg)")
    steps: Dict[str, int] = _knob(dict, "step budget per stage, e.g. cg=500")
    minutes: Dict[str, float] = _knob(dict, "time budget per stage, e.g. vae=5,base=4,cg=12,pg=4")
    learning_rate: Dict[str, float] = _knob(dict, "per stage, e.g. cg=1e-5 (default: the model preset's, "
                                                  "tiny cg=1e-3, sd-inpainting cg=1e-5)")
    lr_schedule: Dict[str, str] = _knob(dict, "per stage: constant (the default) or cosine (to 0 over the stage's "
                                              "budget), e.g. cg=cosine")
    loss_weighting: Dict[str, str] = _knob(dict, "per stage: high-noise (the default: 1 + 1/SNR, capped) or none "
                                                 "(plain eps-MSE, the paper's Eq. 1), e.g. cg=none")
    base_caption: Optional[str] = _knob(None, "the base stage's caption; \"A photo of {category}\" teaches the "
                                              "base your categories' words (default: \"a photo\")")
    batch_size: int = _knob(32, "images per step")
    resolution: int = _knob(64, "training resolution (pixels, square)")
    seed: int = _knob(0, "random seed")
    device: str = _knob("auto", "auto: CUDA when torch sees a GPU", choices=DEVICES)
    mixed_precision: str = _knob("no", "CUDA only: autocast, frozen networks in this dtype, trained weights in "
                                       "fp32", choices=MIXED_PRECISIONS)
    gradient_checkpointing: bool = _knob(False, "recompute activations in the backward pass: less memory, "
                                                "~1/3 more compute")
    register: Optional[str] = _knob(None, "register the trained generator as a new version of NAME in the MLflow "
                                          "registry (the run, its loss curves and the model are logged either way)")
    run_name: str = _knob("train", "the MLflow run's name")

    def stage_options(self) -> dict[str, dict]:
        """Stage -> the StageConfig fields this recipe sets for it (checked: ``ValueError``)."""
        from .loop import options_by_stage

        return options_by_stage(learning_rate=self.learning_rate, lr_schedule=self.lr_schedule,
                                loss_weighting=self.loss_weighting,
                                base_caption={"base": self.base_caption} if self.base_caption else None)

    def validate(self) -> "TrainRecipe":
        """Refuse, in words, what would fail later: before any data is read."""
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"unknown stage(s) {bad or self.stages}; choose from {','.join(STAGES)}")
        self.stage_options()  # learning rates, schedules, loss weightings: by their StageConfig
        for name in ("steps", "minutes"):
            unknown = sorted(set(getattr(self, name)) - set(STAGES))
            if unknown:
                raise ValueError(f"{name}: unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
        if self.batch_size < 1 or self.resolution < 8:
            raise ValueError("batch_size must be >= 1 and resolution >= 8")
        return self


@dataclass
class DistributedRecipe(TrainRecipe):
    """What ``jobs/train.py`` does on Ray Train: the same knobs, plus the cluster's. It saves to
    its checkpoints (``storage_path``) and registers under ``register`` by default."""

    output: Optional[str] = _knob(None, "not used here: the model stays in storage_path's checkpoints and "
                                        "the registry (backdrop train saves to a directory)")
    register: Optional[str] = _knob("backdrop", "register the trained generator as a new version of NAME "
                                                "(null or '' to skip)")
    run_name: str = _knob("backdrop-train", "the run's name (Ray Train and MLflow): the same name and "
                                            "storage_path resume from the last checkpoint")
    storage_path: str = _knob("???", "checkpoint location (local or s3://)")
    grad_accum: int = _knob(1, "micro-batches per optimizer step")
    num_workers: int = _knob(2, "Ray Train workers (DDP)")
    use_gpu: bool = _knob(False, "one GPU per worker (device=cuda says the same)")
    cpus_per_worker: float = _knob(1.0, "CPUs reserved per worker")
    placement_strategy: str = _knob("PACK", "SPREAD/STRICT_SPREAD put workers on different nodes",
                                    choices=("PACK", "SPREAD", "STRICT_SPREAD"))
    max_failures: int = _knob(2, "worker-group restarts (from the last checkpoint) before the run fails")
    checkpoint_every: int = _knob(100, "steps between checkpoints")
    log_images_every: int = _knob(200, "steps between sample grids logged to MLflow (0: never)")

    def validate(self) -> "DistributedRecipe":
        super().validate()
        if self.output:
            raise ValueError("output: jobs/train.py keeps the model in its checkpoints (storage_path) and the "
                             "registry (register); `backdrop train` saves to a directory")
        if self.num_workers < 1 or self.cpus_per_worker <= 0 or self.checkpoint_every < 1:
            raise ValueError("num_workers and checkpoint_every must be >= 1, cpus_per_worker > 0")
        return self


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainRecipe) -> None:
    """``--config``, one flag per field of ``cls`` (generated: ``config_files.add_arguments``),
    and trailing ``key=value`` overrides."""
    config_files.add_arguments(parser, cls, PREFIX, "a recipe file")


def resolve(args: argparse.Namespace, cls: type = TrainRecipe) -> TrainRecipe:
    """The recipe that parsed arguments describe (see the module docstring); ``ValueError``
    names what is wrong (an unknown key, a value of the wrong type, a missing field)."""
    return config_files.resolve(args, cls, PREFIX).validate()


def load(path: str | None = None, values: dict | None = None, overrides: list[str] | None = None,
         cls: type = TrainRecipe) -> TrainRecipe:
    return config_files.load(cls, path, values, overrides).validate()


to_yaml = config_files.to_yaml
