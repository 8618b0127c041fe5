"""The perturbations have the properties PG's training relies on (paper §3.3)."""

import pytest
import torch

from backdrop.training.augment import (
    Perturbation, add_random_masks, dilate_mask, dilation_kernel, mixup, translate_mask,
)


def blob_masks(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x = torch.randint(8, size - 24, (2,), generator=g).tolist()
        m[i, 0, y:y + 12, x:x + 9] = 1
        m[i, 0, y + 3, x + 9:x + 14] = 1  # an irregular bit
    return m


def test_kernel_scales_with_resolution():
    assert dilation_kernel(512) in (49, 51)
    assert dilation_kernel(64) == 7 and dilation_kernel(128) == 13
    assert all(dilation_kernel(r) % 2 == 1 for r in (32, 64, 96, 128, 256, 512))


def test_dilated_mask_contains_mask_and_grows():
    m = blob_masks()
    d = dilate_mask(m, 7)
    assert torch.all(d >= m)
    assert torch.all(d.sum((1, 2, 3)) > m.sum((1, 2, 3)))
    assert set(d.unique().tolist()) <= {0.0, 1.0}


def test_translation_keeps_mask_size_and_moves_it():
    m = blob_masks()
    g = torch.Generator().manual_seed(1)
    t = translate_mask(m, 0.2, g)
    assert torch.equal(t.sum((1, 2, 3)), m.sum((1, 2, 3)))  # nothing cropped
    assert (t != m).any()


def test_random_masks_only_add():
    m = blob_masks()
    r = add_random_masks(m, torch.Generator().manual_seed(2), max_boxes=3)
    assert torch.all(r >= m) and (r > m).any()


def test_mixup_bounds():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(64, 3, 8, 8), torch.rand(64, 3, 8, 8)
    mixed, sigma = mixup(a, b, g)
    assert torch.all(sigma >= 0.75) and torch.all(sigma <= 0.95)
    s = sigma[:, None, None, None]
    torch.testing.assert_close(mixed, s * a + (1 - s) * b)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    assert torch.all(mixed >= lo - 1e-6) and torch.all(mixed <= hi + 1e-6)


def test_reference_hides_the_product_and_is_deterministic():
    m = blob_masks()
    img = torch.rand(8, 3, 64, 64)
    ref1, m1 = Perturbation().reference(img, m, torch.Generator().manual_seed(5))
    ref2, m2 = Perturbation().reference(img, m, torch.Generator().manual_seed(5))
    assert torch.equal(ref1, ref2) and torch.equal(m1, m2)
    assert torch.all(m1 >= m)  # PG never sees a pixel of the product it reconstructs
    assert not torch.equal(ref1, img)  # mixup changed the pixels
