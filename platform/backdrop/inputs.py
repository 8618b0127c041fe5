"""A product's inputs, from URIs or from bytes to validated pixels: the one way in for every front door.

A catalog row (URIs) and an HTTP upload (bytes) both end as a :class:`Product`: the RGB
image, its 0/1 mask, the category, and optionally a reference ad with its mask and a free-text
prompt. Every byte is checked against the one :class:`~backdrop.limits.Limits` before it is
decoded, and every object's size before it is read. No torch here: the Ray CPU stages and the
HTTP ingress stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import imaging, storage
from .limits import DEFAULT_LIMITS, Limits
from .request import GenerationRequest

if TYPE_CHECKING:
    from .placements import Layout, Placement


@dataclass
class Product:
    """One product's validated inputs, ready to become pipeline requests."""

    image: Image.Image  # RGB
    mask: np.ndarray  # H x W, 1.0 = product
    category: str
    reference: Image.Image | None = None
    reference_mask: np.ndarray | None = None  # None: the whole reference is background
    prompt: str | None = None

    def requests(self, seeds: list[int]) -> list[GenerationRequest]:
        """One pipeline request per seed (the builder every front door uses)."""
        return [GenerationRequest(image=self.image, mask=self.mask, category=self.category,
                                  reference=self.reference, reference_mask=self.reference_mask,
                                  prompt=self.prompt, seed=int(s)) for s in seeds]

    def placed(self, placement: Placement, layout: Layout | None = None,
               limits: Limits = DEFAULT_LIMITS) -> Product:
        """This product laid on a canvas of ``placement`` (its pixels copied, never resampled),
        so every front door builds placement requests the same way: ``.placed(p).requests(seeds)``."""
        from .placements import Layout, place

        canvas = place(self.image, self.mask, placement, layout or Layout(), limits)
        return Product(canvas.image, canvas.mask, self.category, self.reference, self.reference_mask, self.prompt)


def decode_product(category: str, image: bytes | None, mask: bytes | None = None, *,
                   reference: bytes | None = None, reference_mask: bytes | None = None,
                   prompt: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Product:
    """Decode and validate a product (mask from ``mask`` or the image's alpha) and its reference."""
    from .errors import InvalidParameterError

    if image is None:
        raise InvalidParameterError("image is required: the product photo (with alpha, or with a mask)")
    if reference is None and reference_mask is not None:
        raise InvalidParameterError("reference_mask was given without a reference image")
    product_image, product_mask = imaging.load_product(image, mask, **_decoding(limits))
    ref = ref_mask = None
    if reference is not None:
        ref, ref_mask = imaging.load_reference(reference, reference_mask, **_decoding(limits))
    return Product(product_image, product_mask, category, ref, ref_mask, limits.check_prompt(prompt))


def fetch(uri: str | None, limits: Limits = DEFAULT_LIMITS, identities: dict[str, str] | None = None) -> bytes | None:
    """An input object's bytes, its size checked before it is read (``None`` for no URI); with
    ``identities``, the identity of the bytes read is stored there under the URI."""
    if not uri:
        return None
    data, identity = storage.read_object(uri, max_bytes=limits.max_image_bytes)
    if identities is not None:
        identities[uri] = identity
    return data


def fetch_pair(image_uri: str, mask_uri: str | None, limits: Limits = DEFAULT_LIMITS):
    """A product image and its mask (from ``mask_uri`` or the alpha), validated; for training rows."""
    return imaging.load_product(fetch(image_uri, limits), fetch(mask_uri, limits), **_decoding(limits))


def fetch_product(row: dict, limits: Limits = DEFAULT_LIMITS, identities: dict[str, str] | None = None,
                  reference: tuple[bytes, bytes | None] | None = None) -> Product:
    """A catalog row (``image_uri``, ``mask_uri``, ``reference_uri``, ...) as a validated product;
    ``identities`` collects what each read object was (see :func:`fetch`). ``reference``: the
    (image, mask) bytes of a brand kit's reference instead of the row's URIs."""
    def get(uri):
        return fetch(uri, limits, identities)

    if reference is None and row.get("reference_uri"):
        reference = get(row.get("reference_uri")), get(row.get("reference_mask_uri"))
    return decode_product(
        row["category"], get(row["image_uri"]), get(row.get("mask_uri")),
        reference=reference[0] if reference else None, reference_mask=reference[1] if reference else None,
        prompt=row.get("prompt") or None, limits=limits)


def fetch_reference(uri: str, mask_uri: str | None, limits: Limits = DEFAULT_LIMITS):
    """A reference ad and its product mask (``None``: the whole reference is background)."""
    return imaging.load_reference(fetch(uri, limits), fetch(mask_uri, limits), **_decoding(limits))


def _decoding(limits: Limits) -> dict:
    """The decoder's share of the limits (its own bomb guard and byte check)."""
    return {"max_pixels": limits.max_pixels, "max_bytes": limits.max_image_bytes}
