"""CG and PG: two ControlNets made from the base inpainting UNet.

Both take the same 9-channel latent input as the UNet. CG conditions on the product
(``I·M``) and has mask-guided cross-attention everywhere; PG conditions on the reference's
background (``I_ref·(1−M_ref)``) with ordinary attention, and its residuals are masked by
``1−M`` before they join CG's (paper Eq. 4).
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .attention import install_mask_guided_attention, mask_at


def conditioning_channels_for(vae_scale_factor: int) -> tuple[int, ...]:
    """Conditioning-embedding widths that downsample an image by ``vae_scale_factor``."""
    widths = (16, 32, 96, 256)
    n = vae_scale_factor.bit_length()  # 8 -> 4 entries (3 stride-2 convs), 4 -> 3 entries
    return widths[:n]


def controlnet_from_unet(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    return ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=conditioning_channels_for(vae_scale_factor)
    )


def make_category_generator(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    cg = controlnet_from_unet(unet, vae_scale_factor)
    install_mask_guided_attention(cg)
    return cg


def make_personality_generator(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    return controlnet_from_unet(unet, vae_scale_factor)


def mask_residuals(
    down: list[torch.Tensor], mid: torch.Tensor, product_mask: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Multiply every residual by ``1 − M`` at that residual's own resolution."""
    down = [r * (1 - mask_at(product_mask, r.shape[-2:]).to(r.dtype)) for r in down]
    mid = mid * (1 - mask_at(product_mask, mid.shape[-2:]).to(mid.dtype))
    return down, mid
