"""Single-process training of the generator's stages (the Ray Train job wraps this loop).

Stages, in order: ``vae`` and ``base`` exist only for the tiny preset (there are no
pretrained weights on our machines), then ``cg`` and ``pg`` as in the paper. Each stage trains
one network and freezes the rest. The diffusion loss is the paper's Eq. 1 with an optional
high-noise weight ``w = 1 + min(1/SNR, cap)``: a measured spike found that with plain ε-MSE the
category style, which is decided at high noise, is never learned in a CPU budget.

The loop is device-agnostic: the model's device decides where the networks run, and every
random draw comes from the trainer's CPU generator (so a run is the same draw for draw on any
machine) and is then moved to the model's device.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .augment import Perturbation
from ..models.attention import mask_at
from ..models.families import DEFAULT_FAMILY
from ..models.generator import BackdropModel
from ..pipeline import BackdropPipeline, Conditioning, predict_noise

log = logging.getLogger(__name__)


def parse_budgets(text: str | None, what: str = "budget") -> dict[str, float]:
    """Per-stage numbers from the command line (budgets, learning rates):
    ``'vae=5,base=4'`` -> ``{'vae': 5.0, 'base': 4.0}``."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        stage, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{what} {part!r}: expected STAGE=NUMBER, e.g. cg=10")
        out[stage.strip()] = float(value)
    return out

STAGES = ("vae", "base", "cg", "pg")
# The learning rate when none is given, per model preset (ModelConfig.preset) and stage. The
# tiny preset trains from nothing and takes big steps; an SD-size network is pretrained, and its
# ControlNets fine-tune near 1e-5 (the ControlNet paper's rate): the tiny rates wreck it.
DEFAULT_LR = {
    "tiny": {"vae": 1e-3, "base": 1e-3, "cg": 1e-3, "pg": 5e-4},
    "sd-inpainting": {"vae": 1e-5, "base": 1e-5, "cg": 1e-5, "pg": 1e-5},
}
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_learning_rate(preset: str, stage: str) -> float:
    if preset not in DEFAULT_LR:
        raise ValueError(f"no default learning rate for preset {preset!r} (known: {', '.join(DEFAULT_LR)}); "
                         f"give the {stage} stage one")
    return DEFAULT_LR[preset][stage]


def training_device(device: str | torch.device = "auto", mixed_precision: str = "no") -> torch.device:
    """The device a front door asked for, or a ValueError that says what cannot run.

    Refused up front, before any data is read: CUDA where torch sees none, and mixed precision
    off a GPU (the loop would run it, autocast exists on the CPU, but slower than fp32 there).
    """
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed precision {mixed_precision!r}: choose from {', '.join(MIXED_PRECISION)}")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"device {device} asked for, but torch ({torch.__version__}, {build}) sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    if mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed precision {mixed_precision} needs a CUDA GPU; on {device.type} training runs "
                         "in fp32 (--mixed-precision no)")
    if mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use --mixed-precision fp16")
    return device


@dataclass
class StageConfig:
    stage: str
    max_steps: int = 100_000
    max_minutes: float | None = None
    batch_size: int = 32
    learning_rate: float | None = None  # None: DEFAULT_LR[the model's preset][stage]
    loss_weighting: str = "high-noise"  # or "none" (plain ε-MSE, the paper's Eq. 1)
    # "constant", or "cosine": from learning_rate down to 0 over the stage's budget, measured as
    # the stage stops, by whichever of max_steps and max_minutes runs out first (lr_horizon steps
    # instead of max_steps where given, so that the checkpoints along one run are points of the
    # same schedule). A fine-tune at a constant rate stops at the noise floor of its last
    # updates: fine patterns drown there (#21).
    lr_schedule: str = "constant"
    lr_horizon: int | None = None
    snr_cap: float = 100.0
    # "importance": draw t in proportion to the loss weight and average unweighted (the same
    # expected gradient with far less variance: under uniform t, the 20 % of samples at
    # t >= 800 carry 78 % of the weight); "uniform": draw t uniformly and weight each sample.
    timestep_sampling: str = "importance"
    prompt_dropout: float = 0.1  # classifier-free guidance needs the empty prompt in training
    # The tiny base learns no category ("a photo"). "{category}" in it is filled per row with
    # the plain-ControlNet prompt's category word: a base that knows categories, as pretrained
    # SD does (the Table-1 revisit of benchmarks/quality_bar.py --table1).
    base_caption: str = "a photo"
    grad_accum: int = 1
    # "bf16" / "fp16": autocast, the frozen networks cast to that dtype for the stage; the trained
    # weights stay fp32 (fp16 with a gradient scaler). Front doors allow it on CUDA only.
    mixed_precision: str = "no"
    # Recompute activations in the backward pass instead of keeping them: less memory for a
    # bigger batch at SD size, about a third more compute per step.
    gradient_checkpointing: bool = False
    perturbation: Perturbation = field(default_factory=Perturbation)
    seed: int = 0
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; stages are {', '.join(STAGES)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; "
                             f"choose from {', '.join(MIXED_PRECISION)}")
        if self.loss_weighting not in ("high-noise", "none"):
            raise ValueError(f"unknown loss_weighting {self.loss_weighting!r}")
        if self.timestep_sampling not in ("importance", "uniform"):
            raise ValueError(f"unknown timestep_sampling {self.timestep_sampling!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")

    def lr_factor(self, step: int, elapsed_s: float) -> float:
        """The share of ``learning_rate`` for the step after ``step`` (``elapsed_s`` into the stage)."""
        if self.lr_schedule == "constant":
            return 1.0
        progress = step / (self.lr_horizon or self.max_steps)
        if self.max_minutes is not None:
            progress = max(progress, elapsed_s / (self.max_minutes * 60))
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# What a recipe may set per stage (TrainRecipe's per-stage dicts), as StageConfig fields.
STAGE_OPTIONS = ("learning_rate", "lr_schedule", "loss_weighting", "base_caption")


def options_by_stage(**per_stage: dict | None) -> dict[str, dict]:
    """``learning_rate={'cg': 1e-3}, lr_schedule={'cg': 'cosine'}`` -> ``{'cg': {'learning_rate':
    1e-3, 'lr_schedule': 'cosine'}}``, each stage's checked up front as its config will check it:
    a typo'd stage would otherwise train silently at the default, a bad value fail after hours."""
    unknown = sorted(set(per_stage) - set(STAGE_OPTIONS))
    if unknown:
        raise ValueError(f"no per-stage option {unknown}; choose from {', '.join(STAGE_OPTIONS)}")
    out: dict[str, dict] = {}
    for name, values in per_stage.items():
        for stage, value in (values or {}).items():
            out.setdefault(stage, {})[name] = value
    return checked_stage_options(out)


def checked_stage_options(options: dict[str, dict] | None) -> dict[str, dict]:
    """``options`` (stage -> StageConfig fields), refused in words if a stage's config would be."""
    for stage, fields_ in (options or {}).items():
        StageConfig(stage, **fields_)
    return dict(options or {})


STAGE_ATTRIBUTE = {"vae": "vae", "base": "unet", "cg": "cg", "pg": "pg"}
CATEGORY_CAPTION = "A photo of {category}"  # = categories.plain_prompt, the baseline's prompt


def base_caption(template: str, category: str) -> str:
    from ..categories import normalize

    return template.format(category=normalize(category)) if "{category}" in template else template


def trainable_network(model: BackdropModel, stage: str) -> torch.nn.Module:
    net = getattr(model, STAGE_ATTRIBUTE[stage])
    if net is None:
        raise ValueError(f"the model has no network for stage {stage!r}")
    return net


def loss_weights(scheduler, timesteps: torch.Tensor, cfg: StageConfig) -> torch.Tensor:
    if cfg.loss_weighting == "none":
        return torch.ones(len(timesteps))
    alpha_bar = scheduler.alphas_cumprod[timesteps.cpu()]
    snr = alpha_bar / (1 - alpha_bar)
    return 1 + torch.clamp(1 / snr, max=cfg.snr_cap)


class TimestepSampler:
    """Draws training timesteps and the per-sample loss weights that go with them.

    Both modes estimate the same weighted loss E_t~U[w(t) L(t)]: ``uniform`` draws t ~ U and
    multiplies by w(t); ``importance`` draws t ~ w(t) / sum(w) and multiplies by mean(w), a
    constant, so the batch is spent where the weight is.
    """

    def __init__(self, scheduler, cfg: StageConfig):
        self.importance = cfg.timestep_sampling == "importance" and cfg.loss_weighting != "none"
        # on the CPU with the generator that samples them, wherever the schedule's tensors are
        self.weights = loss_weights(scheduler, torch.arange(scheduler.config.num_train_timesteps), cfg).float().cpu()

    def __call__(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.importance:
            t = torch.multinomial(self.weights, n, replacement=True, generator=generator)
            return t, torch.full((n,), float(self.weights.mean()))
        t = torch.randint(0, len(self.weights), (n,), generator=generator)
        return t, self.weights[t]


def random_keep_masks(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random 'known region' masks for the base: 1–3 boxes kept, the rest to inpaint."""
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            bh, bw = (int(v) for v in torch.randint(size // 8, size // 2 + 1, (2,), generator=generator))
            y = int(torch.randint(0, size - bh + 1, (1,), generator=generator))
            x = int(torch.randint(0, size - bw + 1, (1,), generator=generator))
            masks[i, 0, y:y + bh, x:x + bw] = 1
    return masks


class FrozenCast:
    """The frozen networks of a stage in the compute dtype (bf16/fp16), their weights kept aside.

    Cast, they take half the memory and autocast stops re-casting their weights at every op.
    What was there before is kept on the CPU and put back by :meth:`restore` for a checkpoint,
    a sample or the stage's end: casting down and back up would round a pretrained network's
    weights for good, and they would be saved that way.
    """

    def __init__(self, nets: list[torch.nn.Module], dtype: torch.dtype):
        self.nets, self.dtype, self.kept = nets, dtype, None

    @staticmethod
    def _tensors(net: torch.nn.Module):
        yield from net.named_parameters()
        yield from net.named_buffers()

    def cast(self) -> None:
        self.kept = [{name: t.detach().to("cpu", copy=True) for name, t in self._tensors(net)} for net in self.nets]
        for net in self.nets:
            torch.nn.Module.to(net, dtype=self.dtype)  # quietly, as BackdropModel.to does

    def restore(self) -> None:
        if self.kept is None:
            return
        for net, kept in zip(self.nets, self.kept):
            for name, t in self._tensors(net):
                t.data = kept[name].to(t.device)
        self.kept = None


class StageTrainer:
    """Owns the optimizer of one stage and turns a batch into a loss."""

    def __init__(self, model: BackdropModel, cfg: StageConfig,
                 wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        """``wrap`` (e.g. Ray Train's ``prepare_model``) may return a DDP wrapper: it then
        stands in for the network on the model until ``finish()``, so every forward pass goes
        through it and gradients are all-reduced."""
        self.model, self.cfg = model, cfg
        self.pipe = BackdropPipeline(model)
        self.unwrapped = trainable_network(model, cfg.stage)
        for net in model.networks().values():
            net.requires_grad_(False).eval()
        self.unwrapped.requires_grad_(True)  # before wrap: DDP only reduces what requires grad
        if any(p.dtype != torch.float32 for p in self.unwrapped.parameters()):
            self.unwrapped.float()  # AdamW's small updates vanish in 16 bits; the scaler refuses fp16 grads
        self.compute_dtype = MIXED_PRECISION[cfg.mixed_precision]
        self.frozen = FrozenCast([net for net in model.networks().values() if net is not self.unwrapped],
                                 self.compute_dtype) if self.compute_dtype is not None else None
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(model.device.type, enabled=cfg.mixed_precision == "fp16")
        self.network = wrap(self.unwrapped) if wrap else self.unwrapped
        self.activate()
        given = cfg.learning_rate is not None
        self.learning_rate = cfg.learning_rate if given else default_learning_rate(model.config.preset, cfg.stage)
        log.info("%s: learning rate %g (%s)", cfg.stage, self.learning_rate,
                 "given" if given else f"the {model.config.preset} preset's default")
        self.optimizer = torch.optim.AdamW(
            [p for p in self.network.parameters() if p.requires_grad], lr=self.learning_rate, weight_decay=0.0
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # The trainer's own copy of the noise schedule: add_noise moves a scheduler's tensors to
        # the latents' device, and the model's scheduler is shared with inference and with the
        # next stage's trainer (whose CPU-generator sampler then met CUDA weights).
        self.scheduler = type(model.scheduler).from_config(model.scheduler.config)
        self.timesteps = TimestepSampler(self.scheduler, cfg)
        self.step_count = 0

    # --- losses ---------------------------------------------------------------------
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        device = self.model.device
        batch = {**batch, **{k: batch[k].to(device) for k in ("images", "masks", "latents", "masked_latents")
                             if k in batch}}
        if self.cfg.stage == "vae":
            return self._vae_loss(batch)
        return self._diffusion_loss(batch)

    def _vae_loss(self, batch):
        # Through forward() (not encode/decode) so a DDP wrapper sees the pass. The KL term of
        # SD's VAE recipe is dropped: at its usual 1e-6 weight it does not matter, and the
        # latent scale is calibrated after the stage anyway.
        x = batch["images"] * 2 - 1
        rec = self.network(x, sample_posterior=True).sample
        mse = F.mse_loss(rec.float(), x)
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))  # images span [-1, 1]
        return mse + 0.1 * F.l1_loss(rec.float(), x), {"mse": mse.item(), "psnr": psnr}

    def _conditioning(self, batch) -> Conditioning:
        images, masks = batch["images"], batch["masks"]
        n = len(images)
        drop = torch.rand(n, generator=self.generator) < self.cfg.prompt_dropout
        if self.cfg.stage == "base":
            keep = random_keep_masks(n, images.shape[-1], self.generator).to(images)
            captions = ["" if d else base_caption(self.cfg.base_caption, c)
                        for d, c in zip(drop.tolist(), batch["categories"])]
            latent = images.shape[-1] // self.model.vae_scale_factor
            context, pooled = self.pipe.encode_text(captions)
            return Conditioning(
                product_mask=mask_at(keep, (latent, latent)),
                masked_latents=self.pipe.encode_images(images * keep),
                cg_image=None,
                unet_context=context,
                cg_context=None,
                added=self.pipe.added_conditions(pooled, (latent, latent)),
            )
        refs = ref_masks = rows = None
        if self.cfg.stage == "pg":  # self-supervised: the perturbed image is its own reference
            refs, ref_masks = self.cfg.perturbation.reference(images, masks, self.generator)
            rows = list(range(n))
        return self.pipe.conditioning(
            images, masks, batch["categories"], batch.get("prompts"),
            references=refs, reference_masks=ref_masks, reference_rows=rows, drop_prompt=drop,
            encode_reference=False,  # the references' latents only start inference's z_T
            masked_latents=batch.get("masked_latents"),  # prepared.PreparedCatalog's cache, when given
        )

    def _diffusion_loss(self, batch):
        cond = self._conditioning(batch)
        # fp32 whatever the VAE's dtype: the target ε and the noised latents are not rounded
        latents = batch["latents"].float() if "latents" in batch else self.pipe.encode_images(batch["images"]).float()
        n = len(latents)
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.device)
        t, w = self.timesteps(n, self.generator)
        t = t.to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        eps = predict_noise(self.model, noisy, t, cond)
        per_sample = F.mse_loss(eps.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        return (w.to(per_sample) * per_sample).mean(), {"mse": per_sample.mean().item()}

    # --- one optimizer step ---------------------------------------------------------
    def step(self, micro_batches: list[dict]) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        total, extra = 0.0, {}
        dtype = self.compute_dtype
        for batch in micro_batches:
            with torch.autocast(self.model.device.type, dtype=dtype, enabled=dtype is not None):
                loss, extra = self.loss(batch)
            self.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.item() / len(micro_batches)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(self.unwrapped.parameters(), 1.0)
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when fp16 overflowed
        self.scaler.update()
        self.step_count += 1
        return {"loss": total, **extra}

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @contextmanager
    def unwrapped_model(self):
        """Temporarily put the bare network back, and the frozen ones in their own precision
        (to save or sample while training)."""
        attr = STAGE_ATTRIBUTE[self.cfg.stage]
        setattr(self.model, attr, self.unwrapped)
        if self.frozen:
            self.frozen.restore()
        try:
            yield self.model
        finally:
            if self.frozen:
                self.frozen.cast()
            setattr(self.model, attr, self.network)

    def _checkpointed(self) -> list[torch.nn.Module]:
        """The networks whose activations the backward pass keeps: the trained one and, for CG
        and PG, the frozen UNet their residuals flow through."""
        return [self.unwrapped] + ([self.model.unet] if self.cfg.stage in ("cg", "pg") else [])

    def activate(self) -> None:
        """(Re)enter training: the trained network (or its wrapper) on the model, train mode."""
        self.unwrapped.requires_grad_(True).train()
        setattr(self.model, STAGE_ATTRIBUTE[self.cfg.stage], self.network)
        if self.frozen and self.frozen.kept is None:
            self.frozen.cast()
        if self.cfg.gradient_checkpointing:
            for net in self._checkpointed():
                net.enable_gradient_checkpointing()

    def finish(self) -> None:
        """Put the bare network back on the model and freeze everything again."""
        setattr(self.model, STAGE_ATTRIBUTE[self.cfg.stage], self.unwrapped)
        if self.frozen:
            self.frozen.restore()
        if self.cfg.gradient_checkpointing:
            for net in self._checkpointed():
                net.disable_gradient_checkpointing()
        for net in self.model.networks().values():
            net.requires_grad_(False).eval()


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float
    samples: int
    history: list[dict] = field(default_factory=list)
    learning_rate: float | None = None

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


def train_stage(
    model: BackdropModel,
    batches: Iterable[dict],
    cfg: StageConfig,
    on_log: Callable[[dict], None] | None = None,
    trainer: StageTrainer | None = None,
    *,
    elapsed_before: float = 0.0,
    should_stop: Callable[[bool], bool] | None = None,
    after_step: Callable[[StageTrainer, float], None] | None = None,
) -> StageResult:
    """Run one stage until ``max_steps`` or ``max_minutes``, whichever comes first.

    Distributed callers pass ``should_stop`` (combines every worker's local decision so all
    stop at the same step: DDP and ``ray.train.report`` need that), ``after_step`` (periodic
    checkpoints) and ``elapsed_before`` (time already spent in this stage before a resume).
    """
    trainer = trainer or StageTrainer(model, cfg)
    trainer.activate()
    it = iter(batches)
    start = time.perf_counter() - elapsed_before
    result = StageResult(cfg.stage, 0, 0.0, 0, learning_rate=trainer.learning_rate)
    window_start, window_samples = time.perf_counter(), 0
    while True:
        out_of_time = cfg.max_minutes is not None and time.perf_counter() - start > cfg.max_minutes * 60
        stop = trainer.step_count >= cfg.max_steps or out_of_time
        if should_stop is not None:
            stop = should_stop(stop)
        if stop:
            break
        micro = [next(it) for _ in range(cfg.grad_accum)]
        trainer.set_lr(trainer.learning_rate * cfg.lr_factor(trainer.step_count, time.perf_counter() - start))
        metrics = trainer.step(micro)
        n = sum(len(b["images"]) for b in micro)
        result.samples += n
        window_samples += n
        if trainer.step_count % cfg.log_every == 0 or trainer.step_count == 1:
            now = time.perf_counter()
            metrics.update(
                stage=cfg.stage, step=trainer.step_count, lr=trainer.current_lr,
                samples_per_s=window_samples / max(now - window_start, 1e-9), elapsed_s=now - start,
            )
            window_start, window_samples = now, 0
            result.history.append(metrics)
            log.info("%(stage)s step %(step)d loss %(loss).4f (%(samples_per_s).1f samples/s)", metrics)
            if on_log:
                on_log(metrics)
        if after_step is not None:
            after_step(trainer, time.perf_counter() - start)
    result.steps, result.seconds = trainer.step_count, time.perf_counter() - start
    trainer.finish()
    if cfg.stage == "vae":
        calibrate_latent_scale(model, next(it)["images"])
    return result


@torch.no_grad()
def calibrate_latent_scale(model: BackdropModel, images: torch.Tensor) -> float:
    """Set the VAE's ``scaling_factor`` so latents have unit variance, as SD's 0.18215 does."""
    vae = model.vae
    latents = vae.encode(images.to(model.device) * 2 - 1).latent_dist.mode()
    std = latents.float().std().clamp_min(1e-6)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(std)  # every rank must agree on the latent scale
        std = std / torch.distributed.get_world_size()
    factor = float(1.0 / std)
    vae.register_to_config(scaling_factor=factor)
    return factor


def random_batches(data: dict, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """Endless shuffled batches from in-memory arrays (the single-process data path)."""
    n = len(data["images"])
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[i:i + batch_size]
            yield {
                "images": data["images"][idx].float().div(255),
                "masks": data["masks"][idx].float(),
                "categories": [data["categories"][j] for j in idx],
            }


DEFAULT_MINUTES = {"vae": 5.0, "base": 4.0, "cg": 12.0, "pg": 4.0}


def stage_budgets(stages: Iterable[str], minutes: dict[str, float] | None = None,
                  steps: dict[str, int] | None = None) -> dict[str, tuple[int, float | None]]:
    """stage -> (max steps, max minutes). A stage given steps and no minutes runs its steps on
    any machine; ``DEFAULT_MINUTES`` only stand in when no budget at all was given (``minutes``
    None and no steps for that stage)."""
    steps = steps or {}
    out = {}
    for stage in stages:
        if minutes is None:
            limit = None if stage in steps else DEFAULT_MINUTES.get(stage)
        else:
            limit = minutes.get(stage)
        out[stage] = (int(steps.get(stage, 100_000)), limit)
    return out


def starting_model(init: str | None, categories: list[str], stages: Iterable[str], resolution: int = 64,
                   seed: int = 0, family: str = DEFAULT_FAMILY) -> BackdropModel:
    """``init`` (a path, ``s3://`` or ``models:/`` reference) with the catalog's new categories
    appended, or a fresh tiny preset of ``family`` (``models.families``). Only the category stages (CG, PG) learn identifiers, so a
    base refit on the broad prior does not ship its one caption-less "prior" as a category."""
    from ..models.presets import TinyPreset

    if not init:
        return BackdropModel.tiny(categories, TinyPreset(resolution=resolution), seed=seed, family_name=family)
    from .. import runtime

    model = runtime.load(init, device="cpu").model
    if any(stage in ("cg", "pg") for stage in stages):
        model.categories.extend(categories)
    return model


def train_generator(
    catalog_uri: str,
    output_uri: str | None = None,
    *,
    stages: tuple[str, ...] = STAGES,
    minutes: dict[str, float] | None = None,
    steps: dict[str, int] | None = None,
    init: str | None = None,
    batch_size: int = 32,
    resolution: int = 64,
    seed: int = 0,
    on_log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
    stage_options: dict[str, dict] | None = None,
    cache_dir: str | None = None,
    family: str = DEFAULT_FAMILY,
) -> tuple[BackdropModel, list[StageResult]]:
    """Train the listed stages in order on one process, then save (the tiny-preset recipe).

    ``init`` continues from a saved generator (its category ids are kept; new categories are
    appended); without it a fresh tiny preset of ``family`` is built, which needs the ``vae`` and ``base``
    stages before ``cg`` makes sense. ``device`` may be ``"auto"``; see :func:`training_device`
    for what is refused. ``stage_options`` (:func:`options_by_stage`) sets a stage's learning
    rate, its schedule and its loss weighting; what it leaves out is the StageConfig default
    (the preset's learning rate).
    The catalog is prepared once on local disk (``cache_dir``, default under ``BACKDROP_HOME``;
    :mod:`.prepared`) and streamed from there, so memory does not grow with the catalog.
    """
    from .prepared import PreparedCatalog

    device = training_device(device, mixed_precision)
    stage_options = checked_stage_options(stage_options)
    budgets = stage_budgets(stages, minutes, steps)
    data = PreparedCatalog.prepare(catalog_uri, resolution, cache_dir)
    categories = sorted(set(data.categories))
    model = starting_model(init, categories, stages, resolution, seed, family).to(device)
    results = []
    for i, stage in enumerate(stages):
        max_steps, max_minutes = budgets[stage]
        cfg = StageConfig(stage, max_minutes=max_minutes, max_steps=max_steps, batch_size=batch_size, seed=seed + i,
                          mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                          **stage_options.get(stage, {}))
        log.info("stage %s: up to %s min / %s steps on %d rows (%s)", stage, cfg.max_minutes, cfg.max_steps,
                 data.rows, device)
        # CG and PG read their targets' and masked products' latents, encoded once by the frozen
        # VAE as it is now (after any VAE stage above); the VAE and base stages encode live.
        latents = data.latents(BackdropPipeline(model)) if stage in ("cg", "pg") else None
        results.append(train_stage(model, data.batches(batch_size, seed + i, latents), cfg, on_log))
    history = model.config.extra.setdefault("training", [])
    history.extend({"stage": r.stage, "steps": r.steps, "seconds": round(r.seconds, 1),
                    "final_loss": r.final_loss, "learning_rate": r.learning_rate, "catalog": catalog_uri}
                   for r in results)
    if any(stage in ("cg", "pg") for stage in stages):
        from ..quality.qa import attach_scorer

        attach_scorer(model, catalog_uri)  # best-of-N and review flags travel with the weights
    if output_uri:
        model.save_pretrained(output_uri)
    return model, results
