"""What every front door asks the pipeline for: one product on a new background.

A leaf (numpy and PIL only), so that fetching and validating inputs (``backdrop.inputs``) can
build requests without importing the pipeline, torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class GenerationRequest:
    """One product to put on a new background.

    ``mask`` is HxW with 1 on the product. Without ``reference_mask`` the whole reference
    counts as background. ``prompt`` is optional free text describing the background.
    """

    image: Image.Image
    mask: np.ndarray
    category: str
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None
    prompt: str | None = None
    seed: int = 0
