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

    The two attentions share everything but their keys and values, so they run as one pass:
    the query, the key/value projections (over both halves at once) and the output projection
    are computed once, and the two attention outputs are blended before ``to_out``. Since
    ``M + (1 − M) = 1`` and ``to_out`` is affine, ``to_out(a)·M + to_out(b)·(1 − M) =
    to_out(a·M + b·(1 − M))``: the same result as two full passes, one projection cheaper.
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
        if attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None:
            return self.two_passes(attn, hidden_states, encoder_hidden_states, attention_mask, temb, product_mask)
        m = self._mask_like(product_mask, hidden_states)
        residual, input_shape = hidden_states, hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
            m = m.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, heads = hidden_states.shape[0], attn.heads
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query = split_heads(attn.to_q(hidden_states))
        key_fg, key_bg = split_heads(attn.to_k(encoder_hidden_states)).chunk(2, dim=2)
        value_fg, value_bg = split_heads(attn.to_v(encoder_hidden_states)).chunk(2, dim=2)
        out_fg = F.scaled_dot_product_attention(query, key_fg, value_fg)
        out_bg = F.scaled_dot_product_attention(query, key_bg, value_bg)
        out = out_fg * m[:, None] + out_bg * (1 - m[:, None])  # (B,heads,N,d) x (B,1,N,1)
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if len(input_shape) == 4:
            out = out.transpose(-1, -2).reshape(input_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def two_passes(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, product_mask):
        """The definition, term by term (attention masks, spatial and q/k norms take this path)."""
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
