"""The whole generator as one object: a frozen inpainting base + CG + optional PG.

Saved as diffusers-format subfolders (``vae/ unet/ text_encoder/ tokenizer/ scheduler/ cg/
pg/``, plus ``text_encoder_2/ tokenizer_2/`` for an SDXL-shaped base) and ``backdrop.json``
(config and the category map), to a local directory or an ``s3://`` prefix. A plain
inpainting base directory (no ``cg/``) loads too: CG and PG are then freshly made from its
UNet, which is how real weights enter the platform. Which text encoders a base has and what
its UNet takes besides them is its family's business (``models.families``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from .. import storage
from ..schedulers import DEFAULT_SCHEDULER
from ..categories import CategoryMap
from .attention import install_mask_guided_attention
from .controlnets import make_category_generator, make_personality_generator
from .families import DEFAULT_FAMILY, ModelFamily, detect, family
from .presets import TinyPreset

CONFIG_NAME = "backdrop.json"
QA_SCORER_NAME = "qa/scorer.json"  # the QA scorer fitted for this model (backdrop.quality.qa), if any


@dataclass
class ModelConfig:
    resolution: int
    preset: str = "tiny"
    # "mask-guided" is the paper's CG; "plain" is the ControlNet baseline it is compared with
    # (ordinary attention, prompt "A photo of {category}", no identifier).
    cg_variant: str = "mask-guided"
    family: str = DEFAULT_FAMILY  # a name of models.families.FAMILIES
    # the denoising scheduler (backdrop.schedulers) this model generates with when a job or a
    # request names none: a model tuned for few steps of a multistep solver carries that choice
    scheduler: str = DEFAULT_SCHEDULER
    extra: dict = field(default_factory=dict)  # free-form provenance (training stages, data hash)


class BackdropModel:
    """Container of the networks; the denoising loop lives in ``backdrop.pipeline``."""

    def __init__(
        self,
        *,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        cg: ControlNetModel,
        pg: ControlNetModel | None,
        categories: CategoryMap,
        config: ModelConfig,
        text_encoder_2: torch.nn.Module | None = None,
        tokenizer_2=None,
    ) -> None:
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2  # an SDXL-shaped family's
        self.unet, self.scheduler, self.cg, self.pg = unet, scheduler, cg, pg
        self.categories, self.config = categories, config
        # the QA scorer's state travels with the weights (through save/load and the registry);
        # the model only keeps it, backdrop.quality.qa interprets it
        self.qa_state: dict | None = None
        self.family: ModelFamily = family(config.family)
        for frozen in (vae, text_encoder, text_encoder_2, unet):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.eval()

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_components(
        cls, components: dict, categories: CategoryMap, config: ModelConfig, with_pg: bool = True
    ) -> "BackdropModel":
        """Make CG (and PG) from a base's UNet; they start as copies of its encoder."""
        factor = 2 ** (len(components["vae"].config.block_out_channels) - 1)
        unet = components["unet"]
        return cls(
            **components,
            cg=(make_category_generator if config.cg_variant == "mask-guided" else make_personality_generator)(
                unet, factor),
            pg=make_personality_generator(unet, factor) if with_pg else None,
            categories=categories,
            config=config,
        )

    @classmethod
    def tiny(
        cls, categories: CategoryMap | list[str] = (), preset: TinyPreset = TinyPreset(), seed: int = 0,
        cg_variant: str = "mask-guided", family_name: str = DEFAULT_FAMILY,
    ) -> "BackdropModel":
        if not isinstance(categories, CategoryMap):
            categories = CategoryMap().extend(categories)
        config = ModelConfig(resolution=preset.resolution, preset="tiny", cg_variant=cg_variant,
                             family=family_name, extra={"tiny": asdict(preset)})
        return cls.from_components(family(family_name).build_tiny(preset, seed), categories, config)

    def with_fresh_generators(self, cg_variant: str | None = None) -> "BackdropModel":
        """The same base with new CG/PG made from its UNet (e.g. to train a baseline variant)."""
        from copy import deepcopy

        config = deepcopy(self.config)
        config.cg_variant = cg_variant or config.cg_variant
        components = {"vae": self.vae, **self.text_components(), "unet": self.unet, "scheduler": self.scheduler}
        fresh = BackdropModel.from_components(components, deepcopy(self.categories), config,
                                              with_pg=self.pg is not None)
        fresh.qa_state = self.qa_state
        return fresh

    # --- properties ---------------------------------------------------------------------
    @property
    def mask_guided(self) -> bool:
        return self.config.cg_variant == "mask-guided"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        # the text encoder is never trained, so never wrapped (DDP) while another net trains
        return self.text_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    def text_components(self) -> dict:
        """The text encoders and tokenizers, keyed by their sub-folder names (the family's)."""
        return {name: getattr(self, name) for encoder, tokenizer, _ in self.family.text_encoders
                for name in (encoder, tokenizer)}

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"vae": self.vae, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
                "unet": self.unet, "cg": self.cg, "pg": self.pg}
        return {name: net for name, net in nets.items() if net is not None}

    def to(self, device=None, dtype=None) -> "BackdropModel":
        if device is None and dtype is None:
            return self
        where = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
        for net in self.networks().values():
            if dtype is not None and getattr(net, "_keep_in_fp32_modules", None):
                net.to(**where)  # diffusers keeps those modules in float32
            else:
                # diffusers' own .to() warns "modules ... should be kept in float32: []" whenever a
                # dtype argument is present, even None and even with nothing to keep: cast quietly.
                torch.nn.Module.to(net, **where)
        return self

    def eval(self) -> "BackdropModel":
        for net in self.networks().values():
            net.eval()
        return self

    # --- save / load --------------------------------------------------------------------
    def save_pretrained(self, uri: str) -> None:
        """Write every network in diffusers format plus ``backdrop.json`` to ``uri``."""
        if storage.is_remote(uri):
            with tempfile.TemporaryDirectory(prefix="backdrop-save-") as tmp:
                self._save_local(tmp)
                storage.upload_dir(tmp, uri)
        else:
            self._save_local(storage.filesystem(uri)[1])

    def _save_local(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        for name, net in self.networks().items():
            net.save_pretrained(os.path.join(path, name), safe_serialization=True)
        for _, tokenizer, _ in self.family.text_encoders:
            getattr(self, tokenizer).save_pretrained(os.path.join(path, tokenizer))
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))
        meta = {"config": asdict(self.config), "categories": json.loads(self.categories.to_json())}
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if self.qa_state is not None:
            os.makedirs(os.path.dirname(os.path.join(path, QA_SCORER_NAME)), exist_ok=True)
            with open(os.path.join(path, QA_SCORER_NAME), "w") as f:
                json.dump(self.qa_state, f)

    @classmethod
    def from_pretrained(
        cls,
        uri: str,
        *,
        categories: CategoryMap | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> "BackdropModel":
        """Load a saved generator, or a bare inpainting base of a known family (then CG/PG start
        fresh)."""
        with storage.local_copy(uri) as path:
            return cls._load_local(path, categories, resolution, device, torch_dtype)

    @classmethod
    def _load_local(cls, path, categories, resolution, device, torch_dtype) -> "BackdropModel":
        def sub(name):
            return os.path.join(path, name)

        meta_path = sub(CONFIG_NAME)
        meta = None
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        kind = family(meta["config"].get("family", DEFAULT_FAMILY)) if meta else \
            detect(lambda name: os.path.isdir(sub(name)))
        components = {
            "vae": AutoencoderKL.from_pretrained(sub("vae")),
            **kind.load_text_encoders(path),
            "unet": UNet2DConditionModel.from_pretrained(sub("unet")),
            "scheduler": DDIMScheduler.from_pretrained(sub("scheduler")),
        }
        if components["unet"].config.in_channels != 2 * components["unet"].config.out_channels + 1:
            raise ValueError(f"{path}: the UNet is not an inpainting UNet (needs 9 input channels)")
        if meta is not None:
            config = ModelConfig(**meta["config"])
            saved = CategoryMap.from_json(json.dumps(meta["categories"]))
            categories = saved if categories is None else saved.extend(categories.names)
        else:  # a bare base model
            sample = components["unet"].config.sample_size
            factor = 2 ** (len(components["vae"].config.block_out_channels) - 1)
            config = ModelConfig(resolution=resolution or sample * factor, preset="sd-inpainting",
                                 family=kind.name)
            categories = categories or CategoryMap()
        if os.path.isdir(sub("cg")):
            cg = ControlNetModel.from_pretrained(sub("cg"))
            if config.cg_variant == "mask-guided":
                install_mask_guided_attention(cg)
            pg = ControlNetModel.from_pretrained(sub("pg")) if os.path.isdir(sub("pg")) else None
            model = cls(**components, cg=cg, pg=pg, categories=categories, config=config)
        else:
            model = cls.from_components(components, categories, config)
        if os.path.exists(sub(QA_SCORER_NAME)):
            with open(sub(QA_SCORER_NAME)) as f:
                model.qa_state = json.load(f)
        return model.to(device=device, dtype=torch_dtype)
