"""Mask-guided cross-attention equals the paper's Eq. 3, computed by hand."""

import pytest
import torch
from diffusers.models.attention_processor import Attention

from backdrop.models.attention import MaskGuidedAttnProcessor, mask_at


def reference_attention(attn: Attention, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)V per head, then the output projection: no diffusers code involved."""
    b, n, _ = x.shape
    h = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    d = q.shape[-1] // h
    q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, n, h * d)
    return attn.to_out[0](out)


@pytest.fixture
def attn():
    torch.manual_seed(0)
    a = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8, bias=True)
    a.set_processor(MaskGuidedAttnProcessor())
    return a.eval()


@pytest.mark.parametrize("mask_res", [4, 8])  # at the layer's resolution and 2x finer
def test_matches_formula(attn, mask_res):
    b, h, w, L = 2, 4, 4, 5
    x = torch.randn(b, h * w, 16)
    p_fg, p_bg = torch.randn(b, L, 8), torch.randn(b, L, 8)
    mask = (torch.rand(b, 1, mask_res, mask_res) > 0.5).float()
    out = attn(x, encoder_hidden_states=torch.cat([p_fg, p_bg], 1), product_mask=mask)
    m = mask_at(mask, (h, w)).flatten(2).transpose(1, 2)  # (B, hw, 1)
    expected = reference_attention(attn, x, p_fg) * m + reference_attention(attn, x, p_bg) * (1 - m)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert 0 < m.mean() < 1  # both branches were exercised


@pytest.mark.parametrize("value,branch", [(0.0, "bg"), (1.0, "fg")])
def test_constant_masks_reduce_to_plain_attention(attn, value, branch):
    x = torch.randn(3, 16, 16)
    p_fg, p_bg = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    mask = torch.full((3, 1, 4, 4), value)
    out = attn(x, encoder_hidden_states=torch.cat([p_fg, p_bg], 1), product_mask=mask)
    plain = reference_attention(attn, x, p_fg if branch == "fg" else p_bg)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


def test_self_attention_is_plain(attn):
    a = Attention(query_dim=16, heads=2, dim_head=8)
    a.set_processor(MaskGuidedAttnProcessor())
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(a(x), reference_attention(a, x, x), atol=1e-5, rtol=1e-5)


def test_missing_mask_is_an_error(attn):
    with pytest.raises(ValueError, match="product_mask"):
        attn(torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 4, 8))


def test_every_cg_attention_layer_is_mask_guided(tiny_model):
    procs = tiny_model.cg.attn_processors
    assert procs and all(isinstance(p, MaskGuidedAttnProcessor) for p in procs.values())
    assert any("attn2" in name for name in procs)  # the cross-attentions are among them
    assert not any(isinstance(p, MaskGuidedAttnProcessor) for p in tiny_model.pg.attn_processors.values())



class TwoPasses(MaskGuidedAttnProcessor):
    """The definition term by term: two full attention passes, blended after ``to_out``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 product_mask=None):
        if encoder_hidden_states is None:
            return self.plain(attn, hidden_states, None, attention_mask, temb)
        return self.two_passes(attn, hidden_states, encoder_hidden_states, attention_mask, temb, product_mask)


def test_one_pass_equals_two_passes_through_a_whole_controlnet(tiny_model):
    """The merged pass (q, k/v and to_out once, blended before to_out) against the two full
    passes, through every mask-guided layer of the tiny CG."""
    import copy

    torch.manual_seed(0)
    merged = tiny_model.cg
    two = copy.deepcopy(merged)
    two.set_attn_processor(TwoPasses())
    x = torch.randn(3, 9, 16, 16)
    t = torch.tensor([10, 500, 990])
    ctx = torch.randn(3, 2 * tiny_model.tokenizer.model_max_length, merged.config.cross_attention_dim)
    mask = (torch.rand(3, 1, 16, 16) > 0.6).float()
    kwargs = dict(encoder_hidden_states=ctx, controlnet_cond=torch.rand(3, 3, 64, 64), return_dict=False,
                  cross_attention_kwargs={"product_mask": mask})
    with torch.no_grad():
        down, mid = merged(x, t, **kwargs)
        down2, mid2 = two(x, t, **kwargs)
    assert 0 < mask.mean() < 1
    for a, b in zip([*down, mid], [*down2, mid2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert max(float(a.abs().max()) for a in down) > 1e-3  # the comparison is not of zeros
