"""Model families: what differs between base-model architectures, in one place.

Backdrop's method (CG and PG as ControlNets made from the base UNet, the mask-guided
attention, the product pasted back) does not care which text-to-image base it steers. What
does differ from one base to another is small and is all here:

- which text encoders and tokenizers a saved model has, and how a prompt becomes the UNet's
  cross-attention context (SD: one CLIP encoder's last hidden state; SDXL: two encoders'
  penultimate states side by side plus a pooled embedding);
- what else the UNet (and so CG and PG, made from it) takes per step: SDXL's
  ``added_cond_kwargs`` (the pooled text embedding and the size "micro-conditioning");
- how its tiny preset is built, so the family trains from nothing in a test;
- how a saved directory is recognised as this family.

The denoising loop, training, the runtime, the registry and every front door ask the model's
family and never branch on its name. Adding a family is one subclass registered in
:data:`FAMILIES` (ARCHITECTURE.md, "Where a new feature goes", walks through it).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, ClassVar

import torch
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .presets import TinyPreset, build_scheduler, build_tiny_base, build_tiny_unet, build_tiny_vae
from .tokenizer import build_tiny_tokenizer

DEFAULT_FAMILY = "sd-inpainting"


class ModelFamily:
    """One base architecture. Subclasses set the class attributes and override the methods."""

    name: ClassVar[str]
    # (encoder sub-folder, tokenizer sub-folder, encoder class), in the order their hidden
    # states are concatenated
    text_encoders: ClassVar[tuple[tuple[str, str, type], ...]]

    def load_text_encoders(self, path: str) -> dict:
        """The text components of a saved model at local ``path``, keyed as the model keeps them."""
        out = {}
        for encoder, tokenizer, cls in self.text_encoders:
            out[encoder] = cls.from_pretrained(os.path.join(path, encoder))
            out[tokenizer] = AutoTokenizer.from_pretrained(os.path.join(path, tokenizer))
        return out

    def recognises(self, exists: Callable[[str], bool]) -> bool:
        """Whether a bare diffusers directory (``exists(sub_folder)``) holds this family."""
        return all(exists(encoder) for encoder, _, _ in self.text_encoders)

    def encode_prompt(self, text_components: dict, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden (L, D), pooled (P,) or None)`` for one prompt."""
        raise NotImplementedError

    def added_cond_kwargs(self, pooled: torch.Tensor | None, size: tuple[int, int]) -> dict | None:
        """What the UNet takes besides the context, for a batch of ``pooled`` embeddings
        generated at pixel ``size`` (height, width); ``None`` when nothing."""
        return None

    def build_tiny(self, preset: TinyPreset, seed: int) -> dict:
        """Fresh, untrained base components of this family's tiny preset, deterministic by seed."""
        raise NotImplementedError

    @staticmethod
    def _tokens(tokenizer, text: str, device) -> torch.Tensor:
        return tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)


class SDInpainting(ModelFamily):
    """Stable Diffusion 1.x/2.x inpainting: one CLIP text encoder, nothing added."""

    name = "sd-inpainting"
    text_encoders = (("text_encoder", "tokenizer", CLIPTextModel),)

    def encode_prompt(self, text_components, text):
        encoder = text_components["text_encoder"]
        ids = self._tokens(text_components["tokenizer"], text, encoder.device)
        return encoder(ids)[0][0], None

    def build_tiny(self, preset, seed):
        return build_tiny_base(preset, seed)


class SDXLInpainting(ModelFamily):
    """SDXL inpainting's shape: two text encoders (CLIP-L-like and a projected CLIP-G-like),
    their penultimate hidden states concatenated as the context, the second's projected
    pooled output and the size micro-conditioning as ``added_cond_kwargs``."""

    name = "sdxl-inpainting"
    text_encoders = (("text_encoder", "tokenizer", CLIPTextModel),
                     ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
    time_embed_dim = 8  # the tiny preset's addition_time_embed_dim (SDXL: 256)

    def encode_prompt(self, text_components, text):
        hidden, pooled = [], None
        for encoder_name, tokenizer_name, _ in self.text_encoders:
            encoder = text_components[encoder_name]
            out = encoder(self._tokens(text_components[tokenizer_name], text, encoder.device),
                          output_hidden_states=True)
            hidden.append(out.hidden_states[-2][0])  # SDXL reads the penultimate layer
            pooled = getattr(out, "text_embeds", None)
        return torch.cat(hidden, dim=-1), pooled[0]

    def added_cond_kwargs(self, pooled, size):
        # SDXL's micro-conditioning: (original h, w, crop top, left, target h, w); a generation
        # is never cropped and is made at its own size
        h, w = size
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=pooled.device, dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(len(pooled), 6)}

    def build_tiny(self, preset, seed):
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer(model_max_length=preset.max_tokens)
        encoders = [
            cls(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=preset.text_hidden, intermediate_size=4 * preset.text_hidden,
                num_hidden_layers=preset.text_layers, num_attention_heads=preset.text_heads,
                max_position_embeddings=preset.max_tokens, projection_dim=preset.text_hidden,
                pad_token_id=2, bos_token_id=0, eos_token_id=1))
            for _, _, cls in self.text_encoders
        ]
        context = replace(preset, text_hidden=2 * preset.text_hidden)  # the two encoders side by side
        unet = build_tiny_unet(context, addition_embed_type="text_time", addition_time_embed_dim=self.time_embed_dim,
                               projection_class_embeddings_input_dim=preset.text_hidden + 6 * self.time_embed_dim,
                               use_linear_projection=True)
        return {
            "vae": build_tiny_vae(preset),
            "unet": unet,
            "text_encoder": encoders[0], "tokenizer": tokenizer,
            "text_encoder_2": encoders[1], "tokenizer_2": build_tiny_tokenizer(model_max_length=preset.max_tokens),
            "scheduler": build_scheduler(),
        }


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SDInpainting(), SDXLInpainting())}


def family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def detect(exists: Callable[[str], bool]) -> ModelFamily:
    """The family of a bare diffusers directory: the most specific one it satisfies."""
    matches = [f for f in FAMILIES.values() if f.recognises(exists)]
    if not matches:
        raise ValueError("no known model family's text encoders were found "
                         f"(known: {', '.join(f'{f.name}: {[e for e, _, _ in f.text_encoders]}' for f in FAMILIES.values())})")
    return max(matches, key=lambda f: len(f.text_encoders))
