"""The denoising loop: CG (+ PG when a reference is given) steering a frozen inpainting UNet.

``BackdropPipeline.__call__`` takes a batch of products of mixed categories, with or without
references, and returns one image per product, each the size of its input, with the
product's own pixels pasted back bit-identical. The noise prediction (``predict_noise``) is the
same function the training loop differentiates, so training and inference cannot drift apart.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageOps

from .categories import build_prompts, plain_prompt
from .errors import FullMaskError, InvalidParameterError
from .imaging import validate_mask
from .limits import DEFAULT_GUIDANCE, SCHEDULER_MAX_STEPS
from .request import GenerationRequest  # noqa: F401 - the pipeline's input, re-exported here
from .models.attention import mask_at
from .models.controlnets import mask_residuals
from .models.generator import BackdropModel
from .schedulers import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler


MAX_ASPECT = 4.0  # the most elongated generation (long side / short side); limits.max_aspect_ratio
# Generation aspects (long side / short side, either orientation). A canvas is generated at the
# nearest of these and its background resized to the canvas, so a deployment sees a fixed set of
# latent shapes (compiled kernels and CUDA graphs per shape, warmed up once) and placements of
# similar aspects share a denoising loop.
ASPECT_BUCKETS = (1.0, 5 / 4, 4 / 3, 3 / 2, 16 / 9, 2.0, 3.0, 4.0)
TEXT_CACHE_SIZE = 256  # prompt embeddings per pipeline, least recently used dropped (SD size: 118 KB each)


def default_batch_bucket(device) -> int:
    """Rows per denoising loop when the deployment does not say.

    Every loop runs exactly this many rows (a short group is padded with copies), so a row's
    pixels never depend on its batch mates or on the path that made it: a GPU's kernels (split
    reductions, algorithm choice) and a CPU's differ with the batch shape, not with the other
    rows' values. On a GPU a small batch is launch-bound, so padding to 8 costs little; on a
    CPU a padded row costs its full compute, so the bucket is smaller.
    """
    return 8 if str(device).startswith("cuda") else 4


@dataclass(frozen=True)
class InferenceConfig:
    num_inference_steps: int = 50
    guidance_scale: float = DEFAULT_GUIDANCE
    reference_init: bool = True  # z_T from the noised reference latent when PG is used
    scheduler: str | None = None  # a name of backdrop.schedulers.SCHEDULERS; None: the model's own

    def validate(self) -> None:
        """What the loop itself cannot run; policy (how many steps a caller may ask) is
        ``backdrop.limits.Limits``, checked by the front doors."""
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= SCHEDULER_MAX_STEPS:
            raise InvalidParameterError(f"steps must be an integer in [1, {SCHEDULER_MAX_STEPS}], got {steps!r}")
        if not (math.isfinite(float(self.guidance_scale)) and self.guidance_scale >= 0):
            raise InvalidParameterError(f"guidance must be a finite number >= 0, got {self.guidance_scale!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InvalidParameterError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")


@dataclass
class Conditioning:
    """Everything about a batch that does not change from one denoising step to the next."""

    product_mask: torch.Tensor  # (B,1,h,w) at latent resolution, 1 = product
    masked_latents: torch.Tensor  # (B,C,h,w) VAE latent of I·M
    cg_image: torch.Tensor  # (B,3,H,W) in [0,1]: I·M
    unet_context: torch.Tensor  # full prompt embeddings
    cg_context: torch.Tensor  # cat([P_fg, P_bg], dim=1)
    pg_rows: torch.Tensor | None = None  # indices of rows that have a reference
    pg_image: torch.Tensor | None = None  # (R,3,H,W): I_ref·(1−M_ref) for those rows
    reference_latents: torch.Tensor | None = None  # (R,C,h,w): for the z_T initialisation
    # (R,) bool: which pg_rows really have a reference. Inference runs PG on every row of a loop
    # that has any reference (a fixed shape); the others' PG residuals are exactly zero.
    pg_gate: torch.Tensor | None = None
    # what the UNet (and CG, PG) take besides the context, per row: the model family's
    # added_cond_kwargs (SDXL: pooled text embedding, size micro-conditioning); None for SD
    added: dict[str, torch.Tensor] | None = None

    def added_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor] | None:
        return None if self.added is None else {k: v[rows] for k, v in self.added.items()}

    def unet_input(self, latents: torch.Tensor) -> torch.Tensor:
        """9 channels: noisy latent, inpainting mask (1 = generate), masked-image latent."""
        return torch.cat([latents, 1 - self.product_mask, self.masked_latents], dim=1)

    def with_guidance(self, uncond: "Conditioning") -> "Conditioning":
        """Stack the unconditional batch before this one (classifier-free guidance)."""

        def cat(a, b):
            return None if a is None else torch.cat([a, b])

        rows = self.pg_rows
        return Conditioning(
            product_mask=cat(self.product_mask, self.product_mask),
            masked_latents=cat(self.masked_latents, self.masked_latents),
            cg_image=cat(self.cg_image, self.cg_image),
            reference_latents=self.reference_latents,
            unet_context=cat(uncond.unet_context, self.unet_context),
            cg_context=cat(uncond.cg_context, self.cg_context),
            pg_rows=None if rows is None else torch.cat([rows, rows + len(self.product_mask)]),
            pg_image=cat(self.pg_image, self.pg_image),
            pg_gate=cat(self.pg_gate, self.pg_gate),
            added=None if self.added is None else {k: torch.cat([uncond.added[k], v]) for k, v in self.added.items()},
        )


def predict_noise(
    model: BackdropModel, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning
) -> torch.Tensor:
    """ε prediction of UNet + CG residuals (+ PG residuals masked by 1−M on reference rows)."""
    x = cond.unet_input(noisy_latents)
    if cond.cg_image is None:  # the bare base (tiny preset's base-training stage)
        return model.unet(x, timesteps, encoder_hidden_states=cond.unet_context, added_cond_kwargs=cond.added,
                          return_dict=False)[0]
    down, mid = model.cg(
        x,
        timesteps,
        encoder_hidden_states=cond.cg_context,
        controlnet_cond=cond.cg_image,
        cross_attention_kwargs={"product_mask": cond.product_mask} if model.mask_guided else None,
        added_cond_kwargs=cond.added,
        return_dict=False,
    )
    if cond.pg_rows is not None and len(cond.pg_rows) and model.pg is not None:
        rows = cond.pg_rows
        t_rows = timesteps[rows] if timesteps.ndim else timesteps
        pg_down, pg_mid = model.pg(
            x[rows],
            t_rows,
            encoder_hidden_states=cond.unet_context[rows],
            controlnet_cond=cond.pg_image,
            added_cond_kwargs=cond.added_rows(rows),
            return_dict=False,
        )
        pg_down, pg_mid = mask_residuals(pg_down, pg_mid, cond.product_mask[rows])
        if cond.pg_gate is not None:
            gate = cond.pg_gate.view(-1, 1, 1, 1)
            pg_down = [torch.where(gate, p, torch.zeros_like(p)) for p in pg_down]
            pg_mid = torch.where(gate, pg_mid, torch.zeros_like(pg_mid))
        down = [d.index_add(0, rows, p) for d, p in zip(down, pg_down)]
        mid = mid.index_add(0, rows, pg_mid)
    return model.unet(
        x,
        timesteps,
        encoder_hidden_states=cond.unet_context,
        added_cond_kwargs=cond.added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


class BackdropPipeline:
    """The denoising loop over a :class:`BackdropModel`.

    ``batch_bucket``: rows per denoising loop (see :func:`default_batch_bucket`); a deployment
    that compiles its networks warms up exactly these shapes.
    """

    def __init__(self, model: BackdropModel, batch_bucket: int | None = None) -> None:
        self.model = model
        self.batch_bucket = int(batch_bucket or default_batch_bucket(model.device))
        if self.batch_bucket < 1:
            raise ValueError(f"batch_bucket must be >= 1, got {batch_bucket!r}")
        self._text_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.compiled = False

    def compile(self, backend: str = "inductor") -> None:
        """Compile the UNet and the ControlNets for fixed shapes (``dynamic=False``: every loop
        has ``batch_bucket`` rows and one of ``generation_sizes()``). On CUDA with CUDA graphs
        (``reduce-overhead``): at small batches a step is ~2,600 kernel launches, and the graph
        replays them as one. The VAE and text encoder run a few times per image and stay eager.
        ``backend="eager"`` traces without generating kernels (a fast check of the plumbing)."""
        cuda = self.model.device.type == "cuda"
        shapes = 2 * len(self.generation_sizes())  # CG alone and CG+PG per size
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * shapes)
        mode = ("reduce-overhead" if cuda else "default") if backend == "inductor" else None
        for net in (self.model.unet, self.model.cg, self.model.pg):
            if net is not None:
                net.compile(backend=backend, mode=mode, dynamic=False)
        self.compiled = True

    # --- text -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings ``(hidden (B,L,D), pooled (B,P) or None)``, each prompt's computed
        once, alone, by the model's family, and cached.

        Alone, so an embedding never depends on which other prompts happened to be missing
        from the cache at the time (a batched encode rounds differently). Keyed by the text
        encoder's device and dtype, so a cast model never meets a stale embedding; bounded.
        """
        encoder = self.model.text_encoder
        where = (str(encoder.device), encoder.dtype)
        found: dict[str, tuple] = {}
        for text in dict.fromkeys(texts):
            key = (*where, text)
            if key not in self._text_cache:
                self._text_cache[key] = self.model.family.encode_prompt(self.model.text_components(), text)
            self._text_cache.move_to_end(key)
            found[text] = self._text_cache[key]
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        hidden = torch.stack([found[t][0] for t in texts]).to(self.model.dtype)
        pooled = None if found[texts[0]][1] is None else torch.stack([found[t][1] for t in texts]).to(self.model.dtype)
        return hidden, pooled

    def text_conditioning(
        self, categories: list[str], extras: list[str | None]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(UNet/PG context, CG context, pooled full-prompt embedding or None) for each row."""
        if not self.model.mask_guided:  # the plain-ControlNet baseline: "A photo of {category}"
            for c in categories:
                self.model.categories.id_of(c)
            full, pooled = self.encode_text([plain_prompt(c, e) for c, e in zip(categories, extras)])
            return full, full, pooled
        prompts = [
            build_prompts(c, self.model.categories.identifier(c), e) for c, e in zip(categories, extras)
        ]
        full, pooled = self.encode_text([p.full for p in prompts])
        split = torch.cat([self.encode_text([p.foreground for p in prompts])[0],
                           self.encode_text([p.background for p in prompts])[0]], dim=1)
        return full, split, pooled

    def unconditional(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        empty, pooled = self.encode_text([""] * n)
        return empty, (torch.cat([empty, empty], dim=1) if self.model.mask_guided else empty), pooled

    def added_conditions(self, pooled: torch.Tensor | None, latent_size: tuple[int, int]) -> dict | None:
        """The family's ``added_cond_kwargs`` for rows generated at ``latent_size``."""
        if pooled is None:
            return None
        f = self.model.vae_scale_factor
        return self.model.family.added_cond_kwargs(pooled, (latent_size[0] * f, latent_size[1] * f))

    def guided(self, cond: Conditioning) -> Conditioning:
        """``cond`` with the unconditional (empty-prompt) batch stacked before it, for
        classifier-free guidance."""
        full, split, pooled = self.unconditional(len(cond.product_mask))
        uncond = replace(cond, unet_context=full, cg_context=split,
                         added=self.added_conditions(pooled, cond.product_mask.shape[-2:]))
        return cond.with_guidance(uncond)

    # --- images ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic VAE latents (the posterior mode) of images in [0,1]."""
        vae = self.model.vae
        posterior = vae.encode(images.to(vae.dtype) * 2 - 1).latent_dist
        return posterior.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def autoencode(self, requests: list["GenerationRequest"]) -> list[Image.Image]:
        """Each request's own ad through the VAE and back at its generation size, the product
        pasted back as generation does: the most background detail any generation can keep."""
        out = []
        for r in requests:
            x = self._to_tensor([r.image], self.generation_size(r.image.size))
            out.append(paste_product(self.decode_latents(self.encode_images(x))[0], r.image, r.mask))
        return out

    @property
    def size_multiple(self) -> int:
        """Pixel sides must be multiples of this: the VAE's downsampling times the UNet's, read
        from the networks' own configuration (8 x 8 = 64 for SD, 4 x 4 = 16 for the tiny preset)."""
        unet_down = sum(1 for block in self.model.unet.down_blocks if getattr(block, "downsamplers", None))
        return self.model.vae_scale_factor * 2 ** unet_down

    def generation_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) at model scale for an image of ``size``: the short side is the
        model's resolution, the long side follows the nearest of ``ASPECT_BUCKETS`` (at most
        ``MAX_ASPECT``:1, beyond which the background is stretched rather than the compute
        blown up), each side rounded to ``size_multiple``."""
        r, m = self.model.config.resolution, self.size_multiple
        w, h = size
        aspect = min(ASPECT_BUCKETS, key=lambda a: abs(math.log(max(w, h) / min(w, h)) - math.log(a)))
        gw, gh = (r * aspect, r) if w >= h else (r, r * aspect)
        return max(m, round(gw / m) * m), max(m, round(gh / m) * m)

    def generation_sizes(self) -> list[tuple[int, int]]:
        """Every generation size this model can meet: the shapes a compiled deployment warms up."""
        r = self.model.config.resolution
        sizes = [self.generation_size((round(r * a), r)) for a in ASPECT_BUCKETS]
        return list(dict.fromkeys(sizes + [(h, w) for w, h in sizes]))

    def _to_tensor(self, images: list[Image.Image], size: tuple[int, int], fit: bool = False) -> torch.Tensor:
        """Images at ``size``; ``fit`` crops the centre to that aspect first (references)."""
        arr = np.stack([np.asarray(_resize(im.convert("RGB"), size, Image.BICUBIC, fit)) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).to(self.model.device, self.model.dtype)

    def _masks_to_tensor(self, masks: list[np.ndarray], size: tuple[int, int], fit: bool = False) -> torch.Tensor:
        arr = np.stack([
            np.asarray(_resize(Image.fromarray((m > 0.5).astype(np.uint8) * 255), size, Image.NEAREST, fit)) > 127
            for m in masks
        ]).astype(np.float32)
        return torch.from_numpy(arr)[:, None].to(self.model.device, self.model.dtype)

    # --- conditioning ---------------------------------------------------------------
    def prepare(self, requests: list[GenerationRequest]) -> Conditioning:
        """PIL requests -> model-resolution tensors -> ``Conditioning``.

        When any row has a reference, PG runs on every row (a row without one gets an empty
        reference and a closed gate), so the loop's shapes depend on the bucket, not on how
        many of a row's batch mates brought a reference.
        """
        for r in requests:
            validate_mask(r.mask, r.image.size)
        sizes = {self.generation_size(r.image.size) for r in requests}
        if len(sizes) != 1:
            raise ValueError(f"one denoising loop needs one generation size, got {sorted(sizes)}")
        size = sizes.pop()
        has_reference = [r.reference is not None for r in requests]
        refs = ref_masks = None
        if any(has_reference):
            blank = Image.new("RGB", size)
            references = [r.reference if r.reference is not None else blank for r in requests]
            refs = self._to_tensor(references, size, fit=True)
            ref_masks = self._masks_to_tensor([  # no mask: the whole reference is background
                r.reference_mask if r.reference is not None and r.reference_mask is not None
                else np.zeros((ref.height, ref.width), np.float32)
                for r, ref in zip(requests, references)
            ], size, fit=True)
        masks = self._masks_to_tensor([r.mask for r in requests], size)
        self._check_background(masks, size)
        cond = self.conditioning(
            self._to_tensor([r.image for r in requests], size),
            masks,
            [r.category for r in requests],
            [r.prompt for r in requests],
            references=refs,
            reference_masks=ref_masks,
            reference_rows=list(range(len(requests))) if refs is not None else None,
        )
        if cond.pg_rows is not None:
            cond.pg_gate = torch.tensor(has_reference, device=cond.pg_rows.device)
        return cond

    def conditioning(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        categories: list[str],
        extras: list[str | None] | None = None,
        *,
        references: torch.Tensor | None = None,
        reference_masks: torch.Tensor | None = None,
        reference_rows: list[int] | None = None,
        drop_prompt: torch.Tensor | None = None,
        use_cg: bool = True,
        encode_reference: bool = True,
        masked_latents: torch.Tensor | None = None,
    ) -> Conditioning:
        """Tensor-level conditioning, shared by inference and training.

        ``images`` (B,3,H,W) in [0,1] and ``masks`` (B,1,H,W) at model resolution. Rows in
        ``drop_prompt`` get the empty prompt (classifier-free-guidance dropout in training).
        PG conditions on ``references·(1 − reference_masks)`` for ``reference_rows``. The
        references' latents are only for inference's z_T initialisation: training passes
        ``encode_reference=False`` and saves a VAE encode per step. ``masked_latents``: the
        VAE latents of ``images·masks`` when the caller has them already (training's latent cache).
        """
        latent_size = (images.shape[-2] // self.model.vae_scale_factor, images.shape[-1] // self.model.vae_scale_factor)
        product = images * masks
        full, split, pooled = self.text_conditioning(categories, extras or [None] * len(categories))
        if drop_prompt is not None and drop_prompt.any():
            empty_full, empty_split, empty_pooled = self.unconditional(int(drop_prompt.sum()))
            full, split = full.clone(), split.clone()
            full[drop_prompt], split[drop_prompt] = empty_full, empty_split
            if pooled is not None:
                pooled = pooled.clone()
                pooled[drop_prompt] = empty_pooled
        cond = Conditioning(
            added=self.added_conditions(pooled, latent_size),
            product_mask=mask_at(masks, latent_size),
            masked_latents=self.encode_images(product) if masked_latents is None
            else masked_latents.to(images.device, self.model.vae.dtype),
            cg_image=product if use_cg else None,
            unet_context=full,
            cg_context=split,
        )
        if references is not None and reference_rows and self.model.pg is not None:
            cond.pg_rows = torch.tensor(list(reference_rows), device=images.device)
            cond.pg_image = references * (1 - reference_masks)
            if encode_reference:
                cond.reference_latents = self.encode_images(references)
        return cond

    def _check_background(self, masks: torch.Tensor, size: tuple[int, int]) -> None:
        """A mask that keeps background at full resolution can leave none at the model's size
        (a near-opaque cut-out): nothing to generate, a typed ``full_mask`` failure of that row
        (the runtime retries a failed loop row by row), not a blank image or a crash later."""
        latent = (size[1] // self.model.vae_scale_factor, size[0] // self.model.vae_scale_factor)
        full = mask_at(masks, latent).flatten(1).min(1).values >= 0.5
        if bool(full.any()):
            raise FullMaskError(
                f"the mask leaves no background at the model's generation size ({size[0]}x{size[1]}, "
                f"a {latent[1]}x{latent[0]} latent): enlarge the background or crop the photo")

    def initial_latents(self, requests, cond: Conditioning, scheduler, reference_init: bool) -> torch.Tensor:
        """Per-row seeded noise (so a row's output does not depend on its batch mates)."""
        c = self.model.unet.config.out_channels
        h, w = cond.product_mask.shape[-2:]
        noise = torch.stack([
            torch.randn((c, h, w), generator=torch.Generator().manual_seed(int(r.seed)))
            for r in requests
        ]).to(self.model.device, self.model.dtype)
        latents = noise * scheduler.init_noise_sigma
        if reference_init and cond.pg_rows is not None:
            rows = cond.pg_rows if cond.pg_gate is None else cond.pg_rows[cond.pg_gate]
            t0 = scheduler.timesteps[:1]
            refs = cond.reference_latents if cond.pg_gate is None else cond.reference_latents[cond.pg_gate]
            latents[rows] = scheduler.add_noise(refs, noise[rows], t0)
        return latents

    def scheduler_name(self, config: InferenceConfig) -> str:
        """The scheduler a loop runs: the config's, else the one saved with the model."""
        return config.scheduler or self.model.config.scheduler or DEFAULT_SCHEDULER

    def loops(self, requests: list[GenerationRequest]) -> list[list[int]]:
        """Which requests share a denoising loop: same generation size, at most ``batch_bucket``
        of them, in request order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(self.generation_size(r.image.size), []).append(i)
        b = self.batch_bucket
        return [members[k:k + b] for members in groups.values() for k in range(0, len(members), b)]

    # --- the loop -------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        requests: list[GenerationRequest],
        config: InferenceConfig = InferenceConfig(),
        progress=None,
    ) -> list[Image.Image]:
        config.validate()
        out: list[Image.Image | None] = [None] * len(requests)
        for members in self.loops(requests):
            for i, image in zip(members, self.denoise([requests[i] for i in members], config, progress)):
                out[i] = image
        return out  # type: ignore[return-value]

    def denoise(self, requests: list[GenerationRequest], config: InferenceConfig, progress=None) -> list[Image.Image]:
        """One denoising loop over at most ``batch_bucket`` requests of one generation size,
        padded to exactly ``batch_bucket`` rows (the padding's outputs are dropped)."""
        n = len(requests)
        padded = requests + [requests[-1]] * (self.batch_bucket - n)
        cond = self.prepare(padded)
        scheduler = make_scheduler(self.scheduler_name(config), self.model.scheduler.config)
        scheduler.set_timesteps(config.num_inference_steps, device=self.model.device)
        latents = self.initial_latents(padded, cond, scheduler, config.reference_init)

        guided = config.guidance_scale > 1.0
        step_cond = self.guided(cond) if guided else cond

        for i, t in enumerate(scheduler.timesteps):
            if self.compiled:  # CUDA graphs: this step's outputs may reuse the last step's memory
                torch.compiler.cudagraph_mark_step_begin()
            x = torch.cat([latents, latents]) if guided else latents
            x = scheduler.scale_model_input(x, t)
            eps = predict_noise(self.model, x, t.expand(len(x)), step_cond)
            if guided:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + config.guidance_scale * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
            if progress is not None:
                progress(i + 1, len(scheduler.timesteps))

        generated = self.decode_latents(latents)[:n]  # the padded shape here too
        return [paste_product(g, r.image, r.mask) for g, r in zip(generated, requests)]


def _resize(im: Image.Image, size: tuple[int, int], resample, fit: bool) -> Image.Image:
    if fit:
        return ImageOps.fit(im, size, resample)
    return im.resize(size, resample)


def paste_product(generated: torch.Tensor, original: Image.Image, mask: np.ndarray) -> Image.Image:
    """Upscale the model-scale background to the input's size and put the original product
    pixels back at their own resolution (never resampled)."""
    arr = (generated.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    out = np.asarray(Image.fromarray(arr).resize(original.size, Image.BICUBIC)).copy()
    keep = mask > 0.5
    out[keep] = np.asarray(original.convert("RGB"))[keep]
    return Image.fromarray(out)
