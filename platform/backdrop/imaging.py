"""Decoding and validating product images and masks.

Batch jobs and the HTTP API both go through :func:`load_product`, so they accept and reject
exactly the same inputs, with the same typed errors (see :mod:`backdrop.errors`). Nothing here
imports torch: these checks run before any tensor is built.

Decoding rules
--------------
* Formats: PNG, JPEG (and MPO), WebP, GIF, BMP, TIFF, Netpbm (PPM/PGM/PBM), AVIF (and HEIF when
  a plugin for it is registered). Anything else that Pillow could identify is an
  ``UnsupportedImageError``; bytes that nothing identifies are a ``CorruptImageError``.
* Limits are checked before any pixel is decoded: the byte length first, then the
  width x height read from the header. Pillow's own decompression-bomb guard
  (``PIL.Image.MAX_IMAGE_PIXELS``) also applies and is reported as ``ImageTooLargeError``.
* Animated or multi-page files (GIF, APNG, WebP, TIFF, MPO): **only the first frame is used**.
* The EXIF orientation is applied (``ImageOps.exif_transpose``), to images and masks alike, so
  both are in the orientation a viewer shows.
* Pixel modes: ``1``/``L``/``P``/``RGBX``/``CMYK``/``YCbCr`` become RGB; ``RGBA``/``LA``/``PA``
  and ``P`` (or ``L``/``RGB``) with a transparency entry become RGBA. 16-bit greyscale
  (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` holding values in 0..65535) is scaled to
  8 bit by ``value >> 8`` (65535 -> 255, 32768 -> 128) instead of Pillow's clipping. 16-bit
  RGB(A) PNGs are reduced to 8 bit by Pillow itself (most significant byte). Floating point
  (``F``), ``I`` outside 0..65535, ``LAB``, ``HSV`` and other modes are ``UnsupportedImageError``.

Masks
-----
A mask is a float32 ``H x W`` array holding exactly 0.0 (background) or 1.0 (product). A mask
file of any mode is reduced to one 8-bit grey channel, then thresholded at ``>= 128``:

* greyscale / palette / colour masks: their luminance (ITU-R 601, Pillow's ``L``);
* 16-bit greyscale: scaled to 8 bit first (so the threshold is 32768);
* masks with an alpha channel (RGBA, LA, PA, palette with transparency): the **alpha** is used
  when the colour channels are uniform (a matte painted in one colour) or when the alpha itself
  varies (a cut-out); only a fully uniform alpha over varying colours (e.g. an opaque
  black-and-white mask saved as RGBA) falls back to the luminance.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import DEFAULT_LIMITS
from .errors import (
    CorruptImageError,
    EmptyMaskError,
    FullMaskError,
    ImageTooLargeError,
    InvalidParameterError,
    MaskSizeError,
    MissingMaskError,
    UnsupportedImageError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "decode_image",
    "decode_mask",
    "mask_from_alpha",
    "validate_mask",
    "load_product",
    "load_reference",
    "encode_image",
]

DEFAULT_MAX_PIXELS = DEFAULT_LIMITS.max_pixels
DEFAULT_MAX_BYTES = DEFAULT_LIMITS.max_image_bytes

_WANTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "HEIF")
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB_MODES = ("1", "L", "P", "RGBX", "CMYK", "YCbCr")
_TO_RGBA_MODES = ("LA", "La", "PA", "RGBa")
_ALPHA_MODES = ("RGBA", "LA", "PA")

_ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in _WANTED_FORMATS if f in Image.OPEN]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _open(data: bytes, *, what: str, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open, check the limits, decode the first frame and apply the EXIF orientation.

    The image keeps its own pixel mode; the callers convert it.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise CorruptImageError(f"{what} is empty (0 bytes)")
    if n > max_bytes:
        raise ImageTooLargeError(
            f"{what} is {n:,} bytes ({_mib(n)}), over the limit of {max_bytes:,} bytes "
            f"({_mib(max_bytes)})"
        )

    bomb_errors = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that: our own pixel check just
            # below decides instead (with a clearer message), so the warning is silenced.
            # Over twice that, Pillow raises DecompressionBombError, reported as too large.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except bomb_errors as e:
        raise ImageTooLargeError(f"{what} is too large to decode safely: {e}") from None
    except UnidentifiedImageError:
        raise _unidentified(data, what) from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow plugins raise many types on malformed headers
        raise CorruptImageError(f"{what} has a malformed header: {type(e).__name__}: {e}") from None

    w, h = img.size
    if w <= 0 or h <= 0:
        raise CorruptImageError(f"{what} has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {w}x{h} ({w * h:,} pixels), over the limit of {max_pixels:,} pixels"
        )

    fmt = img.format or "image"
    try:
        img.load()  # first frame only for animated / multi-page files
    except bomb_errors as e:
        raise ImageTooLargeError(f"{what} is too large to decode safely: {e}") from None
    except MemoryError:
        raise
    except Exception as e:
        raise CorruptImageError(
            f"{what} ({fmt}, {w}x{h}) cannot be decoded, it may be truncated: "
            f"{type(e).__name__}: {e}"
        ) from None

    try:
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception:
        pass  # a broken EXIF block does not make the pixels unusable: keep them as stored
    return img


def _unidentified(data: bytes, what: str) -> Exception:
    """The error for bytes that no accepted format recognises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = Image.open(io.BytesIO(data))  # header only, nothing is decoded
            fmt = probe.format
            probe.close()
    except Exception:
        fmt = None
    if fmt:
        accepted = ", ".join(_allowed_formats())
        return UnsupportedImageError(f"{what} is in the {fmt} format, which is not accepted "
                                     f"(accepted: {accepted})")
    # Never the bytes themselves: an input can be any file the job can read (a secret, a
    # /proc file), and the message lands in the manifest and the HTTP answer.
    return CorruptImageError(f"{what} is not a decodable image ({len(data):,} bytes in no accepted format)")


def _grey16_to_l(img: Image.Image, what: str) -> Image.Image:
    """16-bit greyscale to 8 bit by ``>> 8`` (Pillow's own conversion clips at 255)."""
    a = np.asarray(img)
    if img.mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise UnsupportedImageError(
            f"{what} is 32-bit integer greyscale with values {int(a.min())}..{int(a.max())}, "
            "outside the 16-bit range 0..65535 that can be scaled to 8 bit"
        )
    a8 = (a.astype(np.uint32) >> 8).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a8))


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or img.mode in _TO_RGBA_MODES or img.has_transparency_data


def _unsupported_mode(img: Image.Image, what: str) -> UnsupportedImageError:
    return UnsupportedImageError(
        f"{what} has pixel mode {img.mode!r} ({img.format or 'unknown format'}), which cannot "
        "be converted to RGB sensibly"
    )


def _to_rgb_or_rgba(img: Image.Image, what: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and not img.has_transparency_data:
        return img
    if mode == "RGBA":
        return img
    if mode in _GREY16_MODES:
        return _grey16_to_l(img, what).convert("RGB")
    if mode in _TO_RGBA_MODES or (mode in _TO_RGB_MODES + ("RGB",) and img.has_transparency_data):
        if mode == "La":
            img = img.convert("LA")
        return img.convert("RGBA")
    if mode in _TO_RGB_MODES:
        return img.convert("RGB")
    raise _unsupported_mode(img, what)


def _to_grey_mask(img: Image.Image, what: str) -> np.ndarray:
    """One uint8 H x W channel from a mask of any mode (see the module docstring)."""
    mode = img.mode
    if mode in _GREY16_MODES:
        return np.asarray(_grey16_to_l(img, what))
    if mode == "L" and not img.has_transparency_data:
        return np.asarray(img)
    if _has_transparency(img):
        rgba = np.asarray(_to_rgb_or_rgba(img, what).convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        rgb_uniform = bool((rgb == rgb.reshape(-1, 3)[0]).all())
        alpha_uniform = bool((alpha == alpha.flat[0]).all())
        if rgb_uniform or not alpha_uniform:
            return alpha
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    if mode in _TO_RGB_MODES + ("RGB",):
        return np.asarray(img.convert("RGB").convert("L"))
    raise _unsupported_mode(img, what)


def _binary(grey: np.ndarray) -> np.ndarray:
    return (np.asarray(grey) >= 128).astype(np.float32)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Decode an image to mode ``RGB``, or ``RGBA`` when the source has transparency."""
    return _decode_image(data, what="image", max_pixels=max_pixels, max_bytes=max_bytes)


def _decode_image(data: bytes, *, what: str, max_pixels: int, max_bytes: int) -> Image.Image:
    img = _open(data, what=what, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        out = _to_rgb_or_rgba(img, what)
    except (UnsupportedImageError, MemoryError):
        raise
    except Exception as e:
        raise UnsupportedImageError(
            f"{what} in pixel mode {img.mode!r} cannot be converted to RGB: {e}"
        ) from None
    if out is img:  # detach from the file object
        out = img.copy()
    out.info.pop("transparency", None)
    if img.mode != out.mode and img.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "1"):
        # e.g. a CMYK profile describes the source pixels, not these: no colour management
        out.info.pop("icc_profile", None)
    return out


def decode_mask(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Decode a mask file to a float32 ``H x W`` array of 0.0 / 1.0 (product = 1)."""
    return _decode_mask(data, what="mask", max_pixels=max_pixels, max_bytes=max_bytes)


def _decode_mask(data: bytes, *, what: str, max_pixels: int, max_bytes: int) -> np.ndarray:
    img = _open(data, what=what, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        grey = _to_grey_mask(img, what)
    except (UnsupportedImageError, MemoryError):
        raise
    except Exception as e:
        raise UnsupportedImageError(
            f"{what} in pixel mode {img.mode!r} cannot be converted to greyscale: {e}"
        ) from None
    return _binary(grey)


def mask_from_alpha(image: Image.Image) -> np.ndarray:
    """The image's alpha as a mask: alpha >= 128 is product (1.0), the rest background (0.0)."""
    if image.mode in _ALPHA_MODES:
        alpha = image.getchannel("A")
    elif _has_transparency(image):
        alpha = _to_rgb_or_rgba(image, "image").convert("RGBA").getchannel("A")
    else:
        raise MissingMaskError(
            f"image (mode {image.mode}) has no alpha channel to take the product mask from"
        )
    return _binary(np.asarray(alpha))


def validate_mask(mask: np.ndarray, image_size: tuple[int, int]) -> None:
    """Check a mask against its image's PIL size ``(width, height)``.

    The mask is an ``H x W`` array; a pixel is product where it is >= 0.5.
    """
    mask = np.asarray(mask)
    w, h = (int(v) for v in image_size)
    if mask.ndim != 2:
        raise MaskSizeError(
            f"mask must be a 2-D height x width array, got shape {tuple(mask.shape)} "
            f"for a {w}x{h} image"
        )
    mh, mw = mask.shape
    if (mh, mw) != (h, w):
        raise MaskSizeError(f"mask is {mw}x{mh} but image is {w}x{h} (width x height)")
    product = mask >= 0.5
    if not product.any():
        raise EmptyMaskError(
            f"mask ({mw}x{mh}) selects no product pixel: every pixel is background "
            "(product must be white / opaque)"
        )
    if product.all():
        raise FullMaskError(
            f"mask ({mw}x{mh}) selects every pixel as product: there is no background to "
            "generate"
        )


def load_product(
    image_bytes: bytes,
    mask_bytes: bytes | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Image.Image, np.ndarray]:
    """Decode and validate a product image and its mask; the one entry point for all callers.

    The mask comes from ``mask_bytes`` or, when that is ``None``, from the image's alpha
    channel. Returns the image in mode ``RGB`` (any alpha dropped) and the float32 0/1 mask.
    The limits apply to the image and to the mask file separately.
    """
    image = _decode_image(image_bytes, what="image", max_pixels=max_pixels, max_bytes=max_bytes)
    if mask_bytes is not None:
        mask = _decode_mask(mask_bytes, what="mask", max_pixels=max_pixels, max_bytes=max_bytes)
    elif image.mode == "RGBA":
        mask = mask_from_alpha(image)
    else:
        raise MissingMaskError(
            "no mask was given and the image has no alpha channel (transparency) to take "
            "the product mask from"
        )
    validate_mask(mask, image.size)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, mask


def load_reference(
    image_bytes: bytes,
    mask_bytes: bytes | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Image.Image, np.ndarray | None]:
    """Decode and validate a reference ad image and its product mask.

    The mask comes from ``mask_bytes``, else from the image's alpha channel; with neither
    (or an alpha that is opaque everywhere, i.e. no cut-out) it is ``None``: the whole
    reference is background. A given mask must match the image's size and may be empty
    (no product in the reference), but not full (nothing left to take a style from).
    Returns the image in mode ``RGB`` and the float32 0/1 mask or ``None``.
    """
    image = _decode_image(image_bytes, what="reference", max_pixels=max_pixels, max_bytes=max_bytes)
    mask = None
    if mask_bytes is not None:
        mask = _decode_mask(mask_bytes, what="reference mask", max_pixels=max_pixels,
                            max_bytes=max_bytes)
    elif image.mode == "RGBA":
        alpha = mask_from_alpha(image)
        mask = alpha if not alpha.all() else None
    if mask is not None:
        try:
            validate_mask(mask, image.size)
        except EmptyMaskError:
            pass  # a reference without a product is all background: fine
        except FullMaskError:
            raise FullMaskError(
                f"reference mask ({mask.shape[1]}x{mask.shape[0]}) selects every pixel as "
                "product: the reference has no background to take a style from"
            ) from None
        except MaskSizeError as e:
            raise MaskSizeError(f"reference {e.args[0]}") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, mask


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode to PNG (lossless, the default), JPEG or WebP; returns the file's bytes.

    ``quality`` (1..100) applies to JPEG and WebP. JPEG has no alpha: it is dropped.
    """
    key = str(fmt).lower().lstrip(".")
    if key not in _ENCODE_FORMATS:
        raise InvalidParameterError(
            f"unknown output format {fmt!r}: expected one of png, jpeg, webp"
        )
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= int(quality) <= 100:
        raise InvalidParameterError(f"quality must be an integer in 1..100, got {quality!r}")
    pil_fmt = _ENCODE_FORMATS[key]
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = _to_rgb_or_rgba(image, "image")
    if pil_fmt == "JPEG" and image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])
    buf = io.BytesIO()
    if pil_fmt == "PNG":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format=pil_fmt, quality=int(quality))
    return buf.getvalue()
