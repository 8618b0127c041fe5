"""Mask-guided cross-attention (paper Eq. 3) and mask resizing shared by CG and PG.

``x_out = x_in + CA(x_in, P_fg)·M + CA(x_in, P_bg)·(1−M)``: the product region attends only to
the product prompt, the background only to the background prompt, so what CG learns about a
category's products cannot leak into the background it paints. diffusers adds the residual
``x_in`` outside the processor, so the processor returns the two masked terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


def mask_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B,1,H,W) product mask to ``size``; a cell with any product pixel is product.

    Max-pooling is conservative for the background: a lower-resolution cell counts as
    background only if no product pixel falls in it, so whatever is masked by ``1 − M`` at that
    resolution can never touch the product.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.adaptive_max_pool2d(mask, size)


class MaskGuidedAttnProcessor:
    """Attention processor for CG: every cross-attention splits its context in two halves.

    ``encoder_hidden_states`` is ``cat([P_fg, P_bg], dim=1)`` (both padded to the same length),
    and ``cross_attention_kwargs={"product_mask": M}`` carries the (B,1,h,w) mask at latent
    resolution. Self-attention (no context) is plain attention.
    """

    def __init__(self) -> None:
        self.plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        product_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            return self.plain(attn, hidden_states, None, attention_mask, temb)
        if product_mask is None:
            raise ValueError("mask-guided attention needs cross_attention_kwargs={'product_mask': M}")
        p_fg, p_bg = encoder_hidden_states.chunk(2, dim=1)
        out_fg = self.plain(attn, hidden_states, p_fg, attention_mask, temb)
        out_bg = self.plain(attn, hidden_states, p_bg, attention_mask, temb)
        m = self._mask_like(product_mask, hidden_states)
        return out_fg * m + out_bg * (1 - m)

    @staticmethod
    def _mask_like(mask: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The mask at this layer's resolution, shaped to broadcast over ``hidden_states``."""
        h, w = mask.shape[-2:]
        if hidden_states.ndim == 4:
            return mask_at(mask, hidden_states.shape[-2:]).to(hidden_states.dtype)
        tokens = hidden_states.shape[1]
        factor = math.sqrt(h * w / tokens)
        size = (round(h / factor), round(w / factor))
        if size[0] * size[1] != tokens:
            raise ValueError(f"cannot map {tokens} tokens onto a {h}x{w} mask")
        m = mask_at(mask, size)  # (B,1,h',w') -> (B, h'w', 1), row-major like the tokens
        return m.flatten(2).transpose(1, 2).to(hidden_states.dtype)


def install_mask_guided_attention(model: torch.nn.Module) -> None:
    """Replace the processor of every attention layer of ``model`` with the mask-guided one."""
    model.set_attn_processor(MaskGuidedAttnProcessor())
