"""Ray Train wrapper around the stage loop: many workers, many nodes, checkpoints, resume.

The driver streams the training catalog through Ray Data (decode + resize + flip on CPU
tasks; each worker reads its own shard with ``get_dataset_shard``, nothing loads the whole
catalog), runs ``TorchTrainer`` with DDP, and afterwards logs the final generator to MLflow
and registers it. Rank 0 logs per-step metrics and sample grids to the same MLflow run.

A checkpoint is the saved generator (diffusers format) plus ``train_state.json`` and the
optimizer state; after a lost worker (``FailureConfig``) or a rerun with the same
``storage_path`` and ``name``, training continues from the last one at the same stage, step
and stage clock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import registry, runtime, storage
from ..inputs import Product
from ..gallery import contact_sheet, masked_product
from ..models.families import DEFAULT_FAMILY
from ..models.generator import BackdropModel
from ..testhooks import training_hold
from .tracking import record_generator
from .data import shard_batches, training_dataset
from .loop import StageConfig, StageTrainer, checked_stage_options, starting_model, train_stage

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.pt"
GENERATOR_DIR = "generator"


@dataclass
class DistributedTrainConfig:
    catalog: str
    storage_path: str  # checkpoints: local dir or s3://
    name: str = "backdrop-train"
    stages: tuple[str, ...] = ("vae", "base", "cg", "pg")
    minutes: dict = field(default_factory=dict)  # stage -> wall-clock budget
    steps: dict = field(default_factory=dict)  # stage -> step budget
    init: str | None = None  # starting generator: path or models:/ reference; None = fresh tiny
    family: str = DEFAULT_FAMILY  # the fresh tiny preset's model family (models.families)
    resolution: int = 64
    batch_size: int = 32  # per worker
    grad_accum: int = 1
    mixed_precision: str = "no"  # bf16 / fp16, with use_gpu only
    gradient_checkpointing: bool = False
    stage_options: dict = field(default_factory=dict)  # stage -> StageConfig fields (loop.options_by_stage)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # "SPREAD"/"STRICT_SPREAD" put workers on different nodes
    max_failures: int = 2
    checkpoint_every: int = 100
    log_every: int = 25
    log_images_every: int = 200
    seed: int = 0
    experiment: str = registry.DEFAULT_EXPERIMENT
    registered_model_name: str | None = "backdrop"
    # Tests only (backdrop.testhooks; refused unless BACKDROP_TEST_HOOKS=1): after a checkpoint at
    # or past ``hold_after_step``, workers wait while this file exists, so a test can act on a
    # run that surely has work left (inert when None).
    hold_file: str | None = None
    hold_after_step: int = 0
    # filled in by the driver for the workers
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        # Workers run in other directories (and on other nodes): make local paths absolute.
        def absolute(p):
            return p if p is None or storage.is_remote(p) or p.startswith("models:/") else os.path.abspath(p)

        self.catalog, self.storage_path, self.init = map(absolute, (self.catalog, self.storage_path, self.init))
        self.stages = tuple(self.stages)
        self.stage_options = checked_stage_options(self.stage_options)
        # the workers' devices are not visible from the driver: the combination is what is checked
        if self.mixed_precision != "no" and not self.use_gpu:
            raise ValueError(f"mixed precision {self.mixed_precision} needs GPU workers (--use-gpu); "
                             "CPU workers train in fp32 (--mixed-precision no)")

    @classmethod
    def from_recipe(cls, r) -> "DistributedTrainConfig":
        """The config a :class:`~backdrop.training.recipe.DistributedRecipe` describes."""
        return cls(catalog=r.catalog, storage_path=r.storage_path, name=r.run_name, stages=tuple(r.stages),
                   minutes=dict(r.minutes), steps=dict(r.steps), init=r.init, family=r.family, resolution=r.resolution,
                   batch_size=r.batch_size, grad_accum=r.grad_accum, mixed_precision=r.mixed_precision,
                   gradient_checkpointing=r.gradient_checkpointing, stage_options=r.stage_options(),
                   num_workers=r.num_workers, use_gpu=r.use_gpu or r.device == "cuda",
                   cpus_per_worker=r.cpus_per_worker, placement_strategy=r.placement_strategy,
                   max_failures=r.max_failures, checkpoint_every=r.checkpoint_every,
                   log_images_every=r.log_images_every, registered_model_name=r.register or None, seed=r.seed)

    def stage_config(self, index: int, rank: int) -> StageConfig:
        stage = self.stages[index]
        return StageConfig(stage, max_steps=int(self.steps.get(stage, 100_000)),
                           max_minutes=self.minutes.get(stage), batch_size=self.batch_size,
                           grad_accum=self.grad_accum, mixed_precision=self.mixed_precision,
                           gradient_checkpointing=self.gradient_checkpointing,
                           **self.stage_options.get(stage, {}),
                           seed=self.seed + 101 * index + 7919 * rank, log_every=self.log_every)


# --- worker ----------------------------------------------------------------------------

def _agree(local_stop: bool) -> bool:
    """Stop only together: every rank must take the same number of steps and reports."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local_stop
    flag = torch.tensor([1.0 if local_stop else 0.0])
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _catalog_categories(catalog: str) -> list[str]:
    from ..catalog import read_catalog

    return sorted(set(read_catalog(catalog, columns=["category"]).column("category").to_pylist()))


def _report(metrics: dict, model: BackdropModel, state: dict, rank: int, optimizer=None) -> None:
    """Every rank reports (it is a barrier); rank 0 attaches the checkpoint.

    ``model`` must hold bare (not DDP-wrapped) networks while this runs.
    """
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="backdrop-ckpt-") as tmp:
        model.save_pretrained(os.path.join(tmp, GENERATOR_DIR))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _sample_grid(model: BackdropModel, batch: dict, stage: str, n: int = 4):
    """product | (reference) | output, for the first rows of a training batch."""
    gen = runtime.wrap(model)
    imgs = (batch["images"][:n].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    masks = batch["masks"][:n, 0].numpy()
    from PIL import Image

    rows = []
    for i in range(len(imgs)):
        im = Image.fromarray(imgs[i])
        ref = Image.fromarray(imgs[(i + 1) % len(imgs)]) if stage == "pg" else None
        product = Product(im, masks[i], batch["categories"][i], reference=ref)
        out = runtime.generate_all(gen, product.requests([i]), runtime.inference(10))[0]
        rows.append([masked_product(im, masks[i]), ref, out, im])
    return contact_sheet(rows, cell=96, row_labels=batch["categories"][:n],
                         column_labels=["product", "reference", "output", "original"])


def train_loop_per_worker(config: dict) -> None:
    import mlflow
    import ray.train
    import ray.train.torch

    cfg = DistributedTrainConfig(**config)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    state = {"stage_index": 0, "step": 0, "elapsed": 0.0, "resumes": 0}
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, STATE_FILE)) as f:
                state = json.load(f)
            state["resumes"] += 1
            model = BackdropModel.from_pretrained(os.path.join(d, GENERATOR_DIR))
            if os.path.exists(os.path.join(d, OPTIMIZER_FILE)):
                optimizer_state = torch.load(os.path.join(d, OPTIMIZER_FILE), map_location="cpu")
        log.info("rank %d resuming at stage %s step %d", rank, cfg.stages[min(state["stage_index"], len(cfg.stages) - 1)], state["step"])
    else:
        model = starting_model(cfg.init, _catalog_categories(cfg.catalog), cfg.stages, cfg.resolution, cfg.seed,
                               cfg.family)
    model.to(device)

    if rank == 0 and cfg.mlflow_run_id:
        mlflow.set_tracking_uri(cfg.tracking_uri)
        mlflow.start_run(run_id=cfg.mlflow_run_id)
    shard = ray.train.get_dataset_shard("train")

    for index in range(state["stage_index"], len(cfg.stages)):
        scfg = cfg.stage_config(index, rank)
        trainer = StageTrainer(model, scfg, wrap=ray.train.torch.prepare_model)
        resuming = index == state["stage_index"] and state["step"] > 0
        if resuming:
            trainer.step_count = state["step"]
            if optimizer_state is not None:
                trainer.optimizer.load_state_dict(optimizer_state)
        batches = shard_batches(shard, cfg.batch_size)
        last_batch: dict = {}

        def on_log(metrics: dict, stage=scfg.stage) -> None:
            if rank == 0 and cfg.mlflow_run_id:
                mlflow.log_metrics({f"{stage}/{k}": float(v) for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and k not in ("step",)},
                                   step=metrics["step"])

        def after_step(tr: StageTrainer, elapsed: float, index=index) -> None:
            step = tr.step_count
            if step % cfg.checkpoint_every == 0:
                with tr.unwrapped_model():
                    _report({"stage": cfg.stages[index], "step": step}, model,
                            {**state, "stage_index": index, "step": step, "elapsed": elapsed}, rank, tr.optimizer)
                if cfg.hold_file and step >= cfg.hold_after_step:
                    training_hold(cfg.hold_file)
            if rank == 0 and cfg.mlflow_run_id and cfg.log_images_every and step % cfg.log_images_every == 0 \
                    and cfg.stages[index] != "vae" and last_batch:
                with tr.unwrapped_model():
                    grid = _sample_grid(model, last_batch, cfg.stages[index])
                mlflow.log_image(grid, f"samples/{cfg.stages[index]}_step{step:06d}.png")

        def tap(it):  # keep the latest batch around for sample grids
            for b in it:
                last_batch.update(b)
                yield b

        result = train_stage(model, tap(batches), scfg, on_log=on_log, trainer=trainer,
                             elapsed_before=state["elapsed"] if resuming else 0.0,
                             should_stop=_agree, after_step=after_step)
        state = {**state, "stage_index": index + 1, "step": 0, "elapsed": 0.0}
        # end-of-stage checkpoint: the next stage (or the final model) starts from here
        _report({"stage": scfg.stage, "step": result.steps, "stage_done": 1, "final_loss": result.final_loss},
                model, state, rank)
        optimizer_state = None
    if rank == 0 and cfg.mlflow_run_id:
        mlflow.end_run()


# --- driver ----------------------------------------------------------------------------

@dataclass
class TrainOutcome:
    checkpoint_path: str
    run_id: str | None
    registered_version: str | None
    state: dict
    model: BackdropModel


def train_distributed(cfg: DistributedTrainConfig) -> TrainOutcome:
    """Run (or resume) a Ray Train job and register its generator in MLflow."""
    import mlflow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    registry.configure()
    experiment_id = registry.ensure_experiment(cfg.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=cfg.name) as run:
        cfg.mlflow_run_id, cfg.tracking_uri = run.info.run_id, registry.tracking_uri()
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if k not in ("mlflow_run_id", "tracking_uri")})
        fs = storage.pyarrow_filesystem(cfg.storage_path)[0] if storage.is_remote(cfg.storage_path) else None
        storage_path = storage.filesystem(cfg.storage_path)[1]
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=asdict(cfg),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker},
                                         placement_strategy=cfg.placement_strategy),
            run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
            datasets={"train": training_dataset(cfg.catalog, cfg.resolution)},
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            with open(os.path.join(d, STATE_FILE)) as f:
                state = json.load(f)
            model = BackdropModel.from_pretrained(os.path.join(d, GENERATOR_DIR))
        if any(stage in ("cg", "pg") for stage in cfg.stages):
            from ..quality.qa import attach_scorer

            attach_scorer(model, cfg.catalog)  # best-of-N and review flags travel with the weights
        mlflow.log_metrics({"resumes": state.get("resumes", 0)})
        version = record_generator(model, cfg.catalog, cfg.stages, cfg.name, register=cfg.registered_model_name,
                                   init=cfg.init)
    return TrainOutcome(result.checkpoint.path, cfg.mlflow_run_id, str(version.version) if version else None,
                        state, model)
