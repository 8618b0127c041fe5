"""Decoding and validation of product images and masks (backdrop.imaging)."""

from __future__ import annotations

import io
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from backdrop import imaging
from backdrop.errors import (
    CorruptImageError,
    EmptyMaskError,
    FullMaskError,
    ImageTooLargeError,
    InvalidInputError,
    InvalidParameterError,
    MaskSizeError,
    MissingMaskError,
    UnsupportedImageError,
)
from backdrop.imaging import (
    decode_image,
    decode_mask,
    encode_image,
    load_product,
    mask_from_alpha,
    validate_mask,
)

# --------------------------------------------------------------------------- helpers


def save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_noise(w: int = 16, h: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF
    )


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG file built by hand; ``raw`` is the filtered scanline data (may be short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB (or RGBA) PNG, which Pillow cannot write itself."""
    h, w, c = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return png_from_rows(w, h, 16, 2 if c == 3 else 6, rows)


def header_only_png(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG that claims ``width x height`` but carries one row of pixels.

    Opening it reads the header only; decoding it would allocate the whole canvas.
    """
    return png_from_rows(width, height, 1, 0, b"\x00" + b"\x00" * ((width + 7) // 8))


GREY16 = np.array([[0, 255, 256, 32767], [32768, 40000, 65280, 65535]], dtype=np.uint16)
GREY16_AS_8 = np.array([[0, 0, 1, 127], [128, 156, 255, 255]], dtype=np.uint8)


def assert_grey_rgb(img: Image.Image, expected: np.ndarray) -> None:
    assert img.mode == "RGB"
    a = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], expected)


# --------------------------------------------------------------------------- modes


def test_rgb_png_round_trips_exactly():
    arr = rgb_noise()
    out = decode_image(save(Image.fromarray(arr)))
    assert out.mode == "RGB" and out.size == (16, 12)
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_rgba_png_keeps_alpha():
    arr = np.dstack([rgb_noise(), np.tile(np.arange(0, 256, 16, dtype=np.uint8), (12, 1))])
    out = decode_image(save(Image.fromarray(arr, "RGBA")))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_greyscale_l_becomes_rgb():
    grey = np.arange(16 * 12, dtype=np.uint8).reshape(12, 16)
    assert_grey_rgb(decode_image(save(Image.fromarray(grey))), grey)


def test_la_becomes_rgba():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    alpha = np.array([[0, 255, 128, 1]] * 3, dtype=np.uint8)
    src = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    out = decode_image(save(src))
    assert out.mode == "RGBA"
    a = np.asarray(out)
    np.testing.assert_array_equal(a[..., 0], grey)
    np.testing.assert_array_equal(a[..., 2], grey)
    np.testing.assert_array_equal(a[..., 3], alpha)


def test_palette_without_transparency_becomes_rgb():
    src = Image.fromarray(rgb_noise()).quantize(colors=16)
    assert src.mode == "P"
    out = decode_image(save(src))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(src.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_rgba(fmt):
    src = Image.fromarray(rgb_noise()).quantize(colors=16)
    index = np.asarray(src)
    transparent = int(index[0, 0])
    data = save(src, fmt, transparency=transparent)
    out = decode_image(data)
    assert out.mode == "RGBA"
    a = np.asarray(out)
    np.testing.assert_array_equal(a[..., 3] == 0, index == transparent)
    np.testing.assert_array_equal(a[..., :3][index != transparent],
                                  np.asarray(src.convert("RGB"))[index != transparent])


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_equals_pillows_own_conversion(fmt):
    cmyk = np.random.default_rng(1).integers(0, 256, (12, 16, 4), dtype=np.uint8)
    data = save(Image.fromarray(cmyk, "CMYK"), fmt)
    reference = Image.open(io.BytesIO(data))
    assert reference.mode == "CMYK"
    out = decode_image(data)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))
    assert "icc_profile" not in out.info


def test_ycbcr_tiff_becomes_rgb():
    ycc = Image.fromarray(rgb_noise()).convert("YCbCr")
    data = save(ycc, "TIFF")
    reference = Image.open(io.BytesIO(data))
    assert reference.mode == "YCbCr"
    out = decode_image(data)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))


def test_one_bit_becomes_black_and_white_rgb():
    bits = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=bool)
    src = Image.fromarray(bits)
    assert src.mode == "1"
    data = save(src)
    assert Image.open(io.BytesIO(data)).mode == "1"
    assert_grey_rgb(decode_image(data), bits.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    "mode, fmt",
    [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")],
)
def test_16_bit_greyscale_is_scaled_not_clipped(mode, fmt):
    if mode == "I;16B":
        src = Image.frombytes("I;16B", (4, 2), GREY16.astype(">u2").tobytes())
    elif mode == "I":
        src = Image.fromarray(GREY16.astype(np.int32))
    else:
        src = Image.fromarray(GREY16)
    data = save(src, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    out = decode_image(data)
    assert_grey_rgb(out, GREY16_AS_8)  # 65535 -> 255, 32768 -> 128


def test_32_bit_integer_out_of_16_bit_range_is_unsupported():
    src = Image.fromarray(np.array([[0, 70000], [5, -3]], dtype=np.int32))
    with pytest.raises(UnsupportedImageError, match="0..65535"):
        decode_image(save(src, "TIFF"))


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_png(channels):
    arr = np.array([[[65535, 32768, 0, 65535], [256, 255, 40000, 0]]], dtype=np.uint16)
    arr = arr[..., :channels]
    out = decode_image(png16_rgb(arr))
    assert out.mode == ("RGB" if channels == 3 else "RGBA")
    np.testing.assert_array_equal(np.asarray(out), (arr >> 8).astype(np.uint8))


def test_float_image_is_unsupported():
    src = Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    assert src.mode == "F"
    with pytest.raises(UnsupportedImageError) as e:
        decode_image(save(src, "TIFF"))
    assert str(e.value).startswith("unsupported_image: ")
    assert "'F'" in str(e.value)


def test_unaccepted_format_is_unsupported():
    with pytest.raises(UnsupportedImageError, match="PCX"):
        decode_image(save(Image.fromarray(rgb_noise()), "PCX"))


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 3, 3), dtype=np.uint8)  # 3 wide, 2 high
    arr[0, 0] = (255, 0, 0)  # red at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(save(Image.fromarray(arr), "PNG", exif=exif))
    assert out.size == (2, 3)
    a = np.asarray(out)
    assert tuple(a[0, 1]) == (255, 0, 0)  # stored top-left is now top-right
    assert a.sum() == 255


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    out = decode_image(buf.getvalue())
    assert out.mode == "RGB"
    assert tuple(np.asarray(out)[4, 4]) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP"])
def test_other_formats_decode(fmt):
    out = decode_image(save(Image.fromarray(rgb_noise()), fmt))
    assert out.mode == "RGB" and out.size == (16, 12)


# --------------------------------------------------------------------------- bad bytes


def _noisy_png() -> bytes:
    return save(Image.fromarray(rgb_noise(64, 64, seed=3)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(7).bytes(5000),
        b"\x89PNG\r\n\x1a\n",
        _noisy_png()[: len(_noisy_png()) // 2],
        save(Image.fromarray(rgb_noise(64, 64)), "JPEG")[:600],
        b"not an image at all",
    ],
    ids=["empty", "random", "png-signature-only", "truncated-png", "truncated-jpeg", "text"],
)
def test_corrupt_bytes(data):
    with pytest.raises(CorruptImageError) as e:
        decode_image(data)
    assert str(e.value).startswith("corrupt_image: image ")
    with pytest.raises(CorruptImageError) as e:
        decode_mask(data)
    assert str(e.value).startswith("corrupt_image: mask ")


def test_errors_are_value_errors_with_code_prefix():
    with pytest.raises(InvalidInputError) as e:
        decode_image(b"")
    assert isinstance(e.value, ValueError)
    assert str(e.value) == "corrupt_image: image is empty (0 bytes)"


def test_too_many_bytes():
    data = _noisy_png()
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(data, max_bytes=1000)
    assert str(e.value).startswith("image_too_large: image is ")
    assert "1,000 bytes" in str(e.value)


def test_too_many_pixels_with_a_custom_limit():
    with pytest.raises(ImageTooLargeError, match=r"16x12 \(192 pixels\), over the limit of 100"):
        decode_image(save(Image.fromarray(rgb_noise())), max_pixels=100)
    assert decode_image(save(Image.fromarray(rgb_noise())), max_pixels=192).size == (16, 12)


def test_over_the_default_pixel_limit_from_the_header_only(monkeypatch):
    # 7000 x 7000 = 49M pixels: over our 40M default, under Pillow's own bomb warning.
    data = header_only_png(7000, 7000)
    assert len(data) < 2000
    assert Image.open(io.BytesIO(data)).size == (7000, 7000)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(data)
    assert str(e.value) == (
        "image_too_large: image is 7000x7000 (49,000,000 pixels), "
        "over the limit of 25,000,000 pixels"
    )
    with pytest.raises(ImageTooLargeError, match="^image_too_large: mask is 7000x7000"):
        decode_mask(data)


def test_decompression_bomb_header_is_rejected_without_allocating():
    data = header_only_png(30000, 30000)  # 900M pixels, ~2 kB of file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(data)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=10**10)  # Pillow's own bomb guard still applies
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # 10000 x 10000: where Pillow only warns, our own limit answers.
    with pytest.raises(ImageTooLargeError, match="10000x10000 \\(100,000,000 pixels\\)"):
        decode_image(header_only_png(10000, 10000))
    assert str(e.value).startswith("image_too_large: ")
    assert after - before < 200 * 1024  # kB: the 900 MB canvas was never allocated


# --------------------------------------------------------------------------- masks


def assert_binary_mask(mask: np.ndarray, expected: np.ndarray) -> None:
    assert mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, expected.astype(np.float32))


def test_greyscale_mask_threshold_at_128():
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert_binary_mask(decode_mask(save(Image.fromarray(grey))), np.array([[0, 0, 1, 1]]))


def test_16_bit_mask_is_scaled_before_threshold():
    m = decode_mask(save(Image.fromarray(GREY16)))
    assert_binary_mask(m, GREY16_AS_8 >= 128)


def test_one_bit_and_palette_masks():
    bits = np.array([[0, 1], [1, 1]], dtype=bool)
    assert_binary_mask(decode_mask(save(Image.fromarray(bits))), bits)
    pal = Image.fromarray((bits * 255).astype(np.uint8)).convert("P")
    assert_binary_mask(decode_mask(save(pal)), bits)


def test_colour_mask_uses_luminance():
    arr = np.array([[[0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    # luminance: green 149 -> product, blue 29 -> background
    assert_binary_mask(decode_mask(save(Image.fromarray(arr))), np.array([[1, 0, 1, 0]]))
    assert_binary_mask(decode_mask(save(Image.fromarray(arr), "TIFF")), np.array([[1, 0, 1, 0]]))


def test_rgba_mask_with_uniform_colour_uses_alpha():
    alpha = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    for colour in (0, 255):  # a black or a white matte
        arr = np.dstack([np.full((1, 4, 3), colour, np.uint8), alpha])
        m = decode_mask(save(Image.fromarray(arr, "RGBA")))
        assert_binary_mask(m, np.array([[0, 0, 1, 1]]))


def test_opaque_rgba_mask_uses_luminance():
    grey = np.array([[0, 255, 200, 10]], dtype=np.uint8)
    arr = np.dstack([grey, grey, grey, np.full((1, 4), 255, np.uint8)])
    m = decode_mask(save(Image.fromarray(arr, "RGBA")))
    assert_binary_mask(m, np.array([[0, 1, 1, 0]]))


def test_cutout_used_as_mask_uses_alpha():
    arr = np.dstack([rgb_noise(4, 1), np.array([[0, 255, 255, 0]], dtype=np.uint8)])
    m = decode_mask(save(Image.fromarray(arr, "RGBA")))
    assert_binary_mask(m, np.array([[0, 1, 1, 0]]))


def test_mask_from_alpha():
    alpha = np.array([[0, 127], [128, 255]], dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([np.zeros((2, 2, 3), np.uint8), alpha]), "RGBA")
    assert_binary_mask(mask_from_alpha(rgba), np.array([[0, 0], [1, 1]]))
    la = Image.merge("LA", [Image.new("L", (2, 2)), Image.fromarray(alpha)])
    assert_binary_mask(mask_from_alpha(la), np.array([[0, 0], [1, 1]]))
    pa = Image.new("PA", (2, 2))
    pa.putalpha(Image.fromarray(alpha))
    assert_binary_mask(mask_from_alpha(pa), np.array([[0, 0], [1, 1]]))
    with pytest.raises(MissingMaskError):
        mask_from_alpha(Image.new("RGB", (2, 2)))


# --------------------------------------------------------------------------- validation


def test_validate_mask_size_uses_width_by_height():
    mask = np.zeros((48, 64), np.float32)  # 64 wide, 48 high
    mask[10:20, 10:20] = 1
    validate_mask(mask, (64, 48))
    with pytest.raises(MaskSizeError) as e:
        validate_mask(mask, (64, 64))
    assert str(e.value).startswith("mask_size_mismatch: mask is 64x48 but image is 64x64")
    with pytest.raises(MaskSizeError):
        validate_mask(mask, (48, 64))  # transposed
    with pytest.raises(MaskSizeError, match="2-D"):
        validate_mask(np.ones((48, 64, 1), np.float32), (64, 48))


def test_validate_mask_empty_and_full():
    with pytest.raises(EmptyMaskError) as e:
        validate_mask(np.zeros((4, 5), np.float32), (5, 4))
    assert str(e.value).startswith("empty_mask: ")
    with pytest.raises(FullMaskError) as e:
        validate_mask(np.ones((4, 5), np.float32), (5, 4))
    assert str(e.value).startswith("full_mask: ")


# --------------------------------------------------------------------------- load_product


def product_rgba(w: int = 8, h: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rgb = rgb_noise(w, h, seed=5)
    alpha = np.zeros((h, w), np.uint8)
    alpha[1:4, 2:6] = 255
    return rgb, alpha


def test_load_product_takes_the_mask_from_alpha():
    rgb, alpha = product_rgba()
    image, mask = load_product(save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), None)
    assert image.mode == "RGB" and image.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(image), rgb)
    assert_binary_mask(mask, alpha >= 128)


def test_load_product_with_a_mask_file_ignores_alpha():
    rgb, alpha = product_rgba()
    explicit = np.zeros((6, 8), np.uint8)
    explicit[0:2, 0:2] = 255
    image, mask = load_product(
        save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), save(Image.fromarray(explicit))
    )
    assert image.mode == "RGB"
    assert_binary_mask(mask, explicit >= 128)


def test_load_product_rejections():
    rgb, alpha = product_rgba()
    image_bytes = save(Image.fromarray(rgb))
    with pytest.raises(MissingMaskError) as e:
        load_product(image_bytes, None)
    assert str(e.value).startswith("missing_mask: ")
    with pytest.raises(MaskSizeError, match="mask is 6x8 but image is 8x6"):
        load_product(image_bytes, save(Image.fromarray(alpha.T.copy())))
    with pytest.raises(EmptyMaskError):
        load_product(image_bytes, save(Image.new("L", (8, 6), 0)))
    with pytest.raises(FullMaskError):
        load_product(image_bytes, save(Image.new("L", (8, 6), 255)))
    with pytest.raises(FullMaskError):  # opaque alpha: everything is product
        load_product(save(Image.fromarray(rgb).convert("RGBA")), None)
    with pytest.raises(CorruptImageError, match="^corrupt_image: mask "):
        load_product(image_bytes, b"garbage")
    with pytest.raises(CorruptImageError, match="^corrupt_image: image "):
        load_product(b"garbage", save(Image.fromarray(alpha)))
    with pytest.raises(ImageTooLargeError):
        load_product(image_bytes, save(Image.fromarray(alpha)), max_pixels=10)


# --------------------------------------------------------------------------- encode


def test_encode_png_is_lossless():
    for img in (Image.fromarray(rgb_noise()), Image.fromarray(np.dstack(product_rgba()), "RGBA")):
        data = encode_image(img)
        assert data.startswith(b"\x89PNG")
        back = Image.open(io.BytesIO(data))
        assert back.mode == img.mode
        np.testing.assert_array_equal(np.asarray(back), np.asarray(img))


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8"), ("JPG", b"\xff\xd8"),
                                        ("webp", b"RIFF")])
def test_encode_lossy_formats(fmt, magic):
    img = Image.new("RGB", (16, 16), (200, 100, 50))
    data = encode_image(img, fmt, quality=90)
    assert data.startswith(magic)
    back = np.asarray(decode_image(data)).astype(int)
    assert np.abs(back - np.array([200, 100, 50])).max() <= 4


def test_encode_jpeg_drops_alpha_and_rejects_bad_parameters():
    rgba = Image.fromarray(np.dstack(product_rgba()), "RGBA")
    assert decode_image(encode_image(rgba, "jpeg")).mode == "RGB"
    with pytest.raises(InvalidParameterError) as e:
        encode_image(rgba, "gif")
    assert str(e.value).startswith("invalid_parameter: ")
    with pytest.raises(InvalidParameterError):
        encode_image(rgba, "jpeg", quality=0)


def test_an_undecodable_input_never_quotes_its_bytes():
    """Whatever the job could read ends in the manifest or an HTTP answer: never its content."""
    from backdrop.imaging import decode_image

    secret = b"AWS_SECRET_ACCESS_KEY=hunter2\nMLFLOW_TRACKING_PASSWORD=swordfish\n"
    with pytest.raises(CorruptImageError) as err:
        decode_image(secret)
    assert "hunter2" not in str(err.value) and "AWS_" not in str(err.value) and "b'" not in str(err.value)
    assert f"{len(secret):,} bytes" in str(err.value)
