"""The paper's perturbations against PG's copy-paste shortcut (§3.3), on batched tensors.

PG is trained self-supervised: the ad image is both reference and target. Without
perturbations it learns to paste the reference's product region back. Dilating, translating
and adding to the mask hides the product's outline; mixup with another image stops PG from
reproducing the reference's elements verbatim. Masks are (B,1,H,W) in {0,1}, images
(B,3,H,W) in [0,1]; every random draw comes from the given ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def dilation_kernel(resolution: int, base_kernel: int = 50, base_resolution: int = 512) -> int:
    """The paper's kernel (50 px at 512 px) scaled to ``resolution``, rounded to an odd size."""
    k = base_kernel * resolution / base_resolution
    return max(1, 2 * int(round((k - 1) / 2)) + 1)


def dilate_mask(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary dilation with a square ``kernel`` (odd); the result always contains ``mask``."""
    if kernel <= 1:
        return mask
    return F.max_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2)


def translate_mask(mask: torch.Tensor, max_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each mask by a random offset that keeps the whole product inside the image.

    The shift is clamped to the product's bounding box, so the mask's area (its size) is
    unchanged: the perturbation moves the product's silhouette, it never crops it.
    """
    out = torch.zeros_like(mask)
    _, _, h, w = mask.shape
    for i in range(mask.shape[0]):
        ys, xs = torch.nonzero(mask[i, 0] > 0.5, as_tuple=True)
        if len(ys) == 0:
            out[i] = mask[i]
            continue
        lo_y, hi_y = -int(ys.min()), h - 1 - int(ys.max())
        lo_x, hi_x = -int(xs.min()), w - 1 - int(xs.max())
        lim_y, lim_x = int(max_fraction * h), int(max_fraction * w)
        dy = _randint(max(lo_y, -lim_y), min(hi_y, lim_y), generator)
        dx = _randint(max(lo_x, -lim_x), min(hi_x, lim_x), generator)
        out[i, 0, ys + dy, xs + dx] = mask[i, 0, ys, xs]
    return out


def add_random_masks(
    mask: torch.Tensor, generator: torch.Generator, max_boxes: int = 2, max_fraction: float = 0.3
) -> torch.Tensor:
    """Union of the mask with up to ``max_boxes`` random rectangles (each side ≤ max_fraction)."""
    out = mask.clone()
    _, _, h, w = mask.shape
    for i in range(mask.shape[0]):
        for _ in range(_randint(0, max_boxes, generator)):
            bh = _randint(1, max(1, int(max_fraction * h)), generator)
            bw = _randint(1, max(1, int(max_fraction * w)), generator)
            y, x = _randint(0, h - bh, generator), _randint(0, w - bw, generator)
            out[i, 0, y:y + bh, x:x + bw] = 1.0
    return out


def mixup(
    images: torch.Tensor, others: torch.Tensor, generator: torch.Generator,
    low: float = 0.75, high: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``σ·I + (1−σ)·I_rand`` with σ ~ U(low, high) per image; returns (mixed, σ)."""
    sigma = low + (high - low) * torch.rand(images.shape[0], generator=generator)
    s = sigma.to(images)[:, None, None, None]
    return s * images + (1 - s) * others, sigma


@dataclass(frozen=True)
class Perturbation:
    """Which perturbations make PG's reference, and how strong (paper §3.3 / §5.1)."""

    dilate: bool = True
    extra_masks: bool = True
    translate: bool = True
    mix: bool = True
    translate_fraction: float = 0.15
    sigma_range: tuple[float, float] = (0.75, 0.95)

    def reference(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(I_aug, M_aug) for PG's input ``I_aug·(1 − M_aug)``; ``I_rand`` is a shuffled batch."""
        m = masks
        if self.dilate:
            m = dilate_mask(m, dilation_kernel(images.shape[-1]))
        if self.translate:
            m = torch.maximum(m, translate_mask(m, self.translate_fraction, generator))
        if self.extra_masks:
            m = add_random_masks(m, generator)
        img = images
        if self.mix and images.shape[0] > 1:
            perm = torch.randperm(images.shape[0], generator=generator)
            img, _ = mixup(images, images[perm], generator, *self.sigma_range)
        return img, m


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (1,), generator=generator))
