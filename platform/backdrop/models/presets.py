"""Network configurations: the tiny preset, built offline with the same classes as SD.

The tiny preset is Stable-Diffusion-inpainting shaped (9-channel UNet, KL VAE, CLIP text
encoder, BPE tokenizer, DDIM scheduler), only small enough to train from nothing on a CPU.
Everything downstream (ControlNets, pipeline, save/load) sees the same classes as with real
SD weights, so the tiny preset exercises the real code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import build_tiny_tokenizer


@dataclass(frozen=True)
class TinyPreset:
    resolution: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks -> 4x downsampling
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_attention_head_dim: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_tokens: int = 32
    norm_groups: int = 8


def build_scheduler() -> DDIMScheduler:
    """SD's noise schedule; training uses the same config (DDPM forward process)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_tiny_vae(p: TinyPreset) -> AutoencoderKL:
    n = len(p.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=p.vae_channels,
        layers_per_block=1,
        latent_channels=p.latent_channels,
        norm_num_groups=p.norm_groups,
        sample_size=p.resolution,
        mid_block_add_attention=False,
    )


def build_tiny_unet(p: TinyPreset, **family) -> UNet2DConditionModel:
    """A 9-input-channel inpainting UNet: noisy latent (4) + inpaint mask (1) + masked latent (4).
    ``family``: a model family's own UNet options (SDXL's ``addition_embed_type``, ...)."""
    n = len(p.unet_channels)
    return UNet2DConditionModel(
        sample_size=p.resolution // 2 ** (len(p.vae_channels) - 1),
        in_channels=2 * p.latent_channels + 1,
        out_channels=p.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=p.unet_channels,
        layers_per_block=1,
        cross_attention_dim=p.text_hidden,
        attention_head_dim=p.unet_attention_head_dim,
        norm_num_groups=p.norm_groups,
        **family,
    )


def build_tiny_text_encoder(p: TinyPreset, vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=p.text_hidden,
        intermediate_size=4 * p.text_hidden,
        num_hidden_layers=p.text_layers,
        num_attention_heads=p.text_heads,
        max_position_embeddings=p.max_tokens,
        pad_token_id=2,
        bos_token_id=0,
        eos_token_id=1,
    )
    return CLIPTextModel(config)


def build_tiny_base(p: TinyPreset = TinyPreset(), seed: int = 0) -> dict:
    """Fresh (untrained) base components of the tiny preset, deterministic by seed."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(model_max_length=p.max_tokens)
    return {
        "vae": build_tiny_vae(p),
        "unet": build_tiny_unet(p),
        "text_encoder": build_tiny_text_encoder(p, vocab_size=len(tokenizer)),
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(),
    }


def build_sd15_inpainting_base(max_tokens: int = 77, seed: int = 0) -> dict:
    """Untrained base components with Stable Diffusion 1.5 inpainting's shapes (UNet 859.5 M,
    VAE 83.7 M, CLIP text 123.1 M parameters): what a user's real weights look like to every
    code path and to the GPU, without a download. The tokenizer is the offline one (SD's
    vocabulary cannot be fetched here), padded to SD's 77 tokens."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(model_max_length=max_tokens)
    return {
        "vae": AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "unet": UNet2DConditionModel(in_channels=9, out_channels=4, sample_size=64, cross_attention_dim=768),
        "text_encoder": CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=max_tokens, hidden_act="quick_gelu",
            projection_dim=768)),
        "tokenizer": tokenizer,
        "scheduler": build_scheduler(),
    }
