"""A deterministic synthetic e-commerce catalog.

Each category is a product type with its own background style family (kitchen tiles for
mugs, a wooden desk for laptops, a beach for sunscreen, ...) and products that belong to it
the way real products do: a shape family, a palette and a size range per category. Every
row also has a brand, whose signature (a frame, a diagonal band, a corner badge, a tint, a
vignette or a header bar in the brand's colour) is layered on top of the category's
background, so a model conditioned on a reference image of the brand can pick it up.

Styles vary within a category (hue jitter, pattern scale, offset and rotation, horizon
height, ...) but stay recognisable at 64 px: a nearest-centroid classifier over 8x8
downsampled backgrounds separates the categories (see ``tests/test_synthetic.py``).

Masks are exact: products are drawn opaque without anti-aliasing, so outside the mask the
image equals the background bit for bit and ``image * mask`` is exactly the product.

Everything is pure numpy + PIL and deterministic: a sample depends only on
``(seed, split, category, index)``, never on the sizes of the other splits.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .. import storage

__all__ = [
    "CATEGORIES",
    "CATALOG_COLUMNS",
    "PAIRS_COLUMNS",
    "SPLITS",
    "Sample",
    "SyntheticConfig",
    "brand_name",
    "brand_signature",
    "category_names",
    "make_catalog",
    "write_catalog",
    "composite_product",
    "make_prior_catalog",
    "render_sample",
    "render_styled_sample",
    "StyleFamily",
    "style_family",
    "sample_rng",
    "split_sample",
]


@dataclass(frozen=True)
class SyntheticConfig:
    num_categories: int = 8
    train_per_category: int = 160
    heldout_per_category: int = 24
    pairs_per_category: int = 8
    brands_per_category: int = 2
    resolution: int = 64
    seed: int = 0
    # None: the fixed table of scene families below (the demo catalog, byte-identical across
    # versions). An int: every category's style family is drawn at random from this seed, so
    # any number of catalogs the shipped model never saw can be made (``style_family``).
    style_seed: int | None = None
    # Shadows and reflections drawn in the background around the product (``add_harmony``):
    # "off" (the default: every byte as before), "shadow" or "shadow+reflection".
    harmony: str = "off"


@dataclass
class Sample:
    image: np.ndarray  # uint8 HxWx3: the background with the product composited
    mask: np.ndarray  # uint8 HxW: 255 = product, 0 = background
    background: np.ndarray  # uint8 HxWx3: the same background without the product


SPLITS = {"train": 0, "heldout": 1, "pairs": 2}
CATALOG_COLUMNS = (
    "product_id", "category", "image_uri", "mask_uri", "background_uri", "brand",
    "reference_uri", "prompt",
)
PAIRS_COLUMNS = CATALOG_COLUMNS + ("reference_mask_uri", "reference_background_uri")

Color = np.ndarray  # float32 (3,) in [0, 1]


# --------------------------------------------------------------------------- helpers


def _c(r: float, g: float, b: float) -> Color:
    return np.array([r, g, b], dtype=np.float32)


def _hsv(h: float, s: float, v: float) -> Color:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                    dtype=np.float32)


def _jit(rng: np.random.Generator, col, dh: float = 0.02, ds: float = 0.08, dv: float = 0.06) -> Color:
    """Jitter a colour in HSV space."""
    h, s, v = colorsys.rgb_to_hsv(*[float(x) for x in col])
    return _hsv(h + rng.uniform(-dh, dh), s * (1 + rng.uniform(-ds, ds)) if s > 0 else 0.0,
                v * (1 + rng.uniform(-dv, dv)))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _ground(rng: np.random.Generator, img: np.ndarray, v: np.ndarray, band: tuple[float, float],
            colour: Callable[[], Color], level: float, texture: float, cells: int) -> tuple[float, Color]:
    """Paint the floor, counter or street below a random line in ``band``: a jittered colour
    with value-noise texture. The colour is a callable so the RNG is drawn in a fixed order
    (line, colour, noise): catalogs must stay reproducible from their seed."""
    top = rng.uniform(*band)
    col = colour()
    tex = col * (level + texture * _noise(rng, img.shape[0], cells))[..., None]
    low = v > top
    img[low] = tex[low]
    return top, col


@lru_cache(maxsize=16)
def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: u across (x), v down (y)."""
    c = (np.arange(res, dtype=np.float32) + 0.5) / res
    u = np.ascontiguousarray(np.broadcast_to(c[None, :], (res, res)))
    v = np.ascontiguousarray(np.broadcast_to(c[:, None], (res, res)))
    u.flags.writeable = False
    v.flags.writeable = False
    return u, v


def _rot(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    ca, sa = math.cos(angle), math.sin(angle)
    du, dv = u - 0.5, v - 0.5
    return du * ca + dv * sa + 0.5, -du * sa + dv * ca + 0.5


def _noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1] with ``cells`` features across the image."""
    g = rng.random((cells + 3, cells + 3), dtype=np.float32)
    big = Image.fromarray(g).resize((res, res), Image.Resampling.BICUBIC, box=(1, 1, cells + 2, cells + 2))
    return np.asarray(big, dtype=np.float32)


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return a + (b - a) * t[..., None]


def _vgrad(res: int, top: Color, bottom: Color, v0: float = 0.0, v1: float = 1.0) -> np.ndarray:
    _, v = _grid(res)
    return _lerp(top, bottom, np.clip((v - v0) / max(v1 - v0, 1e-6), 0, 1))


def _cell_hash(ix: np.ndarray, iy: np.ndarray, salt: int = 0) -> np.ndarray:
    """A per-cell pseudo-random value in [0, 1) (deterministic in the cell indices)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h * 2654435761) % 4294967291
    return ((h % 1009) / 1009.0).astype(np.float32)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw_on(img: np.ndarray, fn: Callable[[ImageDraw.ImageDraw, int], None]) -> np.ndarray:
    """Draw PIL shapes on a float image (coordinates are pixels, ``fn(draw, res)``)."""
    pil = Image.fromarray(_to_u8(img))
    fn(ImageDraw.Draw(pil), img.shape[0])
    return np.asarray(pil, dtype=np.float32) / 255.0


def _ellipse_poly(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 14):
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(float(cx + a * ca - b * sa), float(cy + a * sa + b * ca)) for a, b in zip(x, y)]


def _rgb255(col) -> tuple[int, int, int]:
    return tuple(int(round(float(x) * 255)) for x in np.clip(col, 0, 1))


# ----------------------------------------------------------------------- backgrounds
# Each returns float32 HxWx3 in [0, 1].


def _bg_kitchen(rng: np.random.Generator, res: int) -> np.ndarray:
    """Light ceramic wall tiles with grout lines above a dark stone countertop."""
    u, v = _grid(res)
    tile = _jit(rng, _pick(rng, [_c(0.95, 0.95, 0.93), _c(0.95, 0.92, 0.84), _c(0.86, 0.91, 0.96),
                                 _c(0.9, 0.9, 0.9)]), ds=0.2, dv=0.03)
    grout = _jit(rng, _c(0.55, 0.56, 0.58), dv=0.12)
    n = rng.uniform(4.0, 7.0)
    ru, rv = _rot(u, v, rng.uniform(-0.05, 0.05))
    x = ru * n + rng.random()
    y = rv * n * rng.uniform(0.95, 1.3) + rng.random()
    gw = max(0.07, 1.15 * n / res)
    line = ((x % 1.0) < gw) | ((y % 1.0) < gw)
    var = _cell_hash(np.floor(x), np.floor(y))
    shade = 1.0 - 0.07 * var + 0.04 * (1.0 - v)
    img = tile * shade[..., None]
    img[line] = grout
    top, counter = _ground(rng, img, v, (0.74, 0.86), lambda: _jit(
        rng, _pick(rng, [_c(0.28, 0.28, 0.31), _c(0.36, 0.33, 0.3), _c(0.2, 0.22, 0.26)])), 0.9, 0.2, 12)
    edge = (v > top) & (v < top + max(0.025, 1.2 / res))
    img[edge] = counter * 1.6
    return img


def _bg_desk(rng: np.random.Generator, res: int) -> np.ndarray:
    """Dark wood panelling (vertical grain) above a lighter wooden desk top."""
    u, v = _grid(res)
    hz = rng.uniform(0.5, 0.66)
    wall = _jit(rng, _c(0.4, 0.24, 0.13), dv=0.12)
    desk = _jit(rng, _c(0.74, 0.52, 0.3), dv=0.08)
    planks = rng.uniform(3.0, 6.0)
    off = rng.random()
    warp = _noise(rng, res, 3)
    grain = np.sin(2 * math.pi * (u * planks * rng.uniform(3.0, 5.0) + 0.8 * warp + 0.4 * v))
    wall_img = wall * (0.86 + 0.12 * grain)[..., None]
    seam = ((u * planks + off) % 1.0) < max(0.04, 1.1 * planks / res)
    wall_img[seam] = wall * 0.6
    warp2 = _noise(rng, res, 4)
    depth = np.clip((v - hz) / (1.0 - hz), 0, 1)
    grain2 = np.sin(2 * math.pi * ((v - hz) * rng.uniform(6.0, 11.0) + 1.2 * warp2 + 0.3 * u))
    desk_img = desk * (0.88 + 0.1 * grain2 + 0.08 * depth)[..., None]
    img = np.where((v < hz)[..., None], wall_img, desk_img)
    edge = (v >= hz) & (v < hz + max(0.03, 1.5 / res))
    img[edge] = desk * 1.15
    return img


def _bg_beach(rng: np.random.Generator, res: int) -> np.ndarray:
    """Sky gradient, a strip of sea at the horizon, sand below."""
    u, v = _grid(res)
    hz = rng.uniform(0.36, 0.54)
    sky_top = _jit(rng, _c(0.22, 0.5, 0.9), dh=0.03)
    sky_low = _jit(rng, _c(0.72, 0.87, 0.98), dh=0.03, dv=0.03)
    img = _lerp(sky_top, sky_low, np.clip(v / hz, 0, 1))
    sea_h = rng.uniform(0.06, 0.12)
    sea = _jit(rng, _c(0.08, 0.45, 0.66), dh=0.04)
    sea_m = (v >= hz) & (v < hz + sea_h)
    img[sea_m] = (sea * (0.9 + 0.2 * (v[sea_m] - hz) / sea_h)[:, None])
    sand = _jit(rng, _c(0.93, 0.8, 0.57), dh=0.02, dv=0.04)
    speck = _noise(rng, res, 16)
    sand_img = sand * (0.92 + 0.14 * speck)[..., None]
    sand_m = v >= hz + sea_h
    img[sand_m] = sand_img[sand_m]
    foam = (v >= hz + sea_h) & (v < hz + sea_h + max(0.02, 1.1 / res))
    img[foam] = _c(0.97, 0.97, 0.95)
    if rng.random() < 0.7:  # the sun
        sx, sy, sr = rng.uniform(0.15, 0.85), rng.uniform(0.08, hz * 0.6), rng.uniform(0.04, 0.07)
        sun = ((u - sx) ** 2 + (v - sy) ** 2) < sr * sr
        img[sun & (v < hz)] = _c(1.0, 0.96, 0.72)
    return img


def _bg_garden(rng: np.random.Generator, res: int) -> np.ndarray:
    """Dense foliage: leaf blobs in many greens, a few flowers."""
    top = _jit(rng, _c(0.1, 0.3, 0.1), dh=0.03)
    bottom = _jit(rng, _c(0.2, 0.42, 0.15), dh=0.03)
    img = _vgrad(res, top, bottom)
    leaves = []
    for _ in range(int(rng.integers(16, 26))):
        col = _hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.72))
        leaves.append((rng.random(), rng.random(), rng.uniform(0.05, 0.13), rng.uniform(0.025, 0.06),
                       rng.uniform(0, math.pi), col))
    flowers = []
    for _ in range(int(rng.integers(2, 7))):
        col = _pick(rng, [_c(0.98, 0.6, 0.75), _c(0.98, 0.9, 0.3), _c(0.97, 0.97, 0.97)])
        flowers.append((rng.random(), rng.random(), rng.uniform(0.015, 0.03), col))

    def draw(d: ImageDraw.ImageDraw, r: int) -> None:
        for x, y, a, b, ang, col in leaves:
            d.polygon(_ellipse_poly(x * r, y * r, a * r, b * r, ang), fill=_rgb255(col))
        for x, y, rad, col in flowers:
            rr = max(rad * r, 1.0)
            d.ellipse([x * r - rr, y * r - rr, x * r + rr, y * r + rr], fill=_rgb255(col))

    return _draw_on(img, draw)


def _bg_marble(rng: np.random.Generator, res: int) -> np.ndarray:
    """White/grey marble with soft, warped veins."""
    u, v = _grid(res)
    base = _jit(rng, _pick(rng, [_c(0.94, 0.94, 0.93), _c(0.94, 0.91, 0.87), _c(0.88, 0.9, 0.93)]),
                ds=0.2, dv=0.03)
    vein_col = _jit(rng, _pick(rng, [_c(0.5, 0.52, 0.56), _c(0.62, 0.58, 0.52)]), dv=0.1)
    mottle = _noise(rng, res, 5)
    img = base * (0.95 + 0.06 * mottle)[..., None]
    for strength, width in ((0.75, rng.uniform(0.035, 0.06)), (0.4, rng.uniform(0.02, 0.035))):
        ru, _ = _rot(u, v, rng.uniform(0, math.pi))
        warp = 0.9 * _noise(rng, res, 3) + 0.35 * _noise(rng, res, 7)
        t = ru * rng.uniform(1.0, 2.0) + 0.8 * warp + rng.random()
        d = np.abs((t % 1.0) - 0.5)
        vein = np.exp(-((d / width) ** 2))
        img = _lerp(img, vein_col, strength * vein)
    return img


def _bg_brick(rng: np.random.Generator, res: int) -> np.ndarray:
    """Red-brown brick wall (running bond) above a strip of dark asphalt street."""
    u, v = _grid(res)
    rows = rng.uniform(7.0, 11.0)
    ratio = rng.uniform(2.0, 2.6)
    y = v * rows + rng.random()
    row = np.floor(y)
    x = u * rows / ratio + rng.random() + 0.5 * (row % 2)
    col = np.floor(x)
    mw = max(0.12, 1.1 * rows / res)
    mortar = ((y % 1.0) < mw) | ((x % 1.0) < mw / ratio)
    brick = _jit(rng, _c(0.62, 0.23, 0.15), dh=0.015, dv=0.08)
    var = _cell_hash(col, row, 7)
    img = brick * (0.8 + 0.3 * var)[..., None]
    img[..., 1] += 0.04 * (_cell_hash(col, row, 3) - 0.5)
    img[mortar] = _jit(rng, _c(0.74, 0.7, 0.64), dv=0.05)
    hz, _ = _ground(rng, img, v, (0.74, 0.86), lambda: _jit(rng, _c(0.26, 0.26, 0.28), dv=0.1), 0.88, 0.24, 20)
    kerb = (v > hz) & (v < hz + max(0.03, 1.5 / res))
    img[kerb] = _c(0.62, 0.62, 0.6)
    return img


def _bg_night(rng: np.random.Generator, res: int) -> np.ndarray:
    """A dark blue room at night: a window full of stars, a darker floor."""
    u, v = _grid(res)
    img = _vgrad(res, _jit(rng, _c(0.03, 0.05, 0.17), dh=0.03, dv=0.15),
                 _jit(rng, _c(0.08, 0.1, 0.3), dh=0.03, dv=0.1))
    wx0, wy0 = rng.uniform(0.08, 0.5), rng.uniform(0.06, 0.2)
    ww, wh = rng.uniform(0.28, 0.42), rng.uniform(0.28, 0.42)
    frame = _jit(rng, _c(0.16, 0.18, 0.36), dv=0.1)
    glass = _jit(rng, _c(0.04, 0.07, 0.28), dh=0.03)
    stars = [(rng.uniform(wx0, wx0 + ww), rng.uniform(wy0, wy0 + wh), rng.uniform(0.006, 0.014))
             for _ in range(int(rng.integers(5, 12)))]
    moon = (rng.uniform(wx0 + 0.25 * ww, wx0 + 0.75 * ww), rng.uniform(wy0 + 0.25 * wh, wy0 + 0.75 * wh),
            rng.uniform(0.035, 0.055)) if rng.random() < 0.6 else None
    wall_stars = [(rng.random(), rng.uniform(0, 0.75)) for _ in range(int(rng.integers(4, 10)))]
    floor = rng.uniform(0.8, 0.9)
    floor_col = _jit(rng, _c(0.03, 0.03, 0.09), dv=0.15)

    def draw(d: ImageDraw.ImageDraw, r: int) -> None:
        f = max(1.0, 0.02 * r)
        d.rectangle([wx0 * r - f, wy0 * r - f, (wx0 + ww) * r + f, (wy0 + wh) * r + f], fill=_rgb255(frame))
        d.rectangle([wx0 * r, wy0 * r, (wx0 + ww) * r, (wy0 + wh) * r], fill=_rgb255(glass))
        for x, y, rad in stars:
            rr = max(rad * r, 0.6)
            d.ellipse([x * r - rr, y * r - rr, x * r + rr, y * r + rr], fill=(255, 250, 215))
        if moon is not None:
            x, y, rad = moon
            d.ellipse([x * r - rad * r, y * r - rad * r, x * r + rad * r, y * r + rad * r], fill=(245, 238, 190))
        mx, my = (wx0 + ww / 2) * r, (wy0 + wh / 2) * r
        d.rectangle([mx - f / 2, wy0 * r, mx + f / 2, (wy0 + wh) * r], fill=_rgb255(frame))
        d.rectangle([wx0 * r, my - f / 2, (wx0 + ww) * r, my + f / 2], fill=_rgb255(frame))
        for x, y in wall_stars:
            d.point((x * r, y * r), fill=(170, 175, 230))
        d.rectangle([0, floor * r, r, r], fill=_rgb255(floor_col))

    return _draw_on(img, draw)


def _bg_studio(rng: np.random.Generator, res: int) -> np.ndarray:
    """A smooth pastel studio sweep with a soft spotlight."""
    u, v = _grid(res)
    h1 = rng.uniform(0.76, 1.06)
    h2 = h1 + rng.uniform(-0.07, 0.07)
    c1 = _hsv(h1, rng.uniform(0.22, 0.34), rng.uniform(0.9, 0.97))
    c2 = _hsv(h2, rng.uniform(0.32, 0.48), rng.uniform(0.74, 0.84))
    _, rv = _rot(u, v, rng.uniform(-0.35, 0.35))
    img = _lerp(c1, c2, np.clip(rv, 0, 1))
    sx, sy, sr = 0.5 + rng.uniform(-0.15, 0.15), rng.uniform(0.25, 0.45), rng.uniform(0.25, 0.4)
    spot = np.exp(-(((u - sx) ** 2 + (v - sy) ** 2) / (sr * sr)))
    return img + 0.16 * spot[..., None]


def _bg_neon(rng: np.random.Generator, res: int) -> np.ndarray:
    """Near-black purple with glowing magenta and cyan neon tubes."""
    u, v = _grid(res)
    img = _vgrad(res, _jit(rng, _c(0.07, 0.02, 0.11), dh=0.03, dv=0.2),
                 _jit(rng, _c(0.17, 0.03, 0.22), dh=0.03, dv=0.15))
    colours = [_c(1.0, 0.15, 0.8), _c(0.1, 0.9, 1.0)]
    for k in range(int(rng.integers(2, 5))):
        ang = rng.uniform(math.pi / 7, math.pi / 3) * (1 if rng.random() < 0.5 else -1)
        nx, ny = math.sin(ang), math.cos(ang)
        px, py = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        dist = np.abs((u - px) * nx + (v - py) * ny)
        w = max(0.012, 0.7 / res)
        glow = np.exp(-((dist / w) ** 2)) + 0.35 * np.exp(-((dist / (5 * w)) ** 2))
        img = img + glow[..., None] * colours[(k + int(rng.integers(2))) % 2]
    return img


def _bg_mountain(rng: np.random.Generator, res: int) -> np.ndarray:
    """Pale sky, grey-blue mountain ridges with snow caps, a green meadow."""
    u, v = _grid(res)
    img = _vgrad(res, _jit(rng, _c(0.45, 0.66, 0.9), dh=0.03), _jit(rng, _c(0.86, 0.92, 0.97), dv=0.03))
    x = u[0]

    def ridge(base: float, amp: float) -> np.ndarray:
        p = np.zeros_like(x)
        for f in (rng.uniform(1.0, 2.2), rng.uniform(2.5, 4.5)):
            p += np.abs(((x * f + rng.random()) % 1.0) - 0.5) * 2.0 / f
        return base - amp * p

    far = ridge(rng.uniform(0.5, 0.6), rng.uniform(0.25, 0.35))
    near = ridge(rng.uniform(0.62, 0.72), rng.uniform(0.2, 0.3))
    far_col = _jit(rng, _c(0.6, 0.65, 0.76), dv=0.05)
    near_col = _jit(rng, _c(0.38, 0.42, 0.52), dv=0.08)
    snow = _c(0.97, 0.98, 1.0)
    for ridge_y, col in ((far, far_col), (near, near_col)):
        m = v > ridge_y[None, :]
        img[m] = col
        snowline = float(ridge_y.min()) + rng.uniform(0.05, 0.09)
        img[m & (v < snowline)] = snow
    _ground(rng, img, v, (0.74, 0.84), lambda: _jit(rng, _c(0.33, 0.55, 0.2), dh=0.03), 0.85, 0.25, 10)
    return img


def _bg_kidsroom(rng: np.random.Generator, res: int) -> np.ndarray:
    """Bright yellow wall with multicoloured polka dots above a blue carpet."""
    u, v = _grid(res)
    wall = _hsv(rng.uniform(0.115, 0.15), rng.uniform(0.6, 0.78), rng.uniform(0.93, 1.0))
    sp = rng.uniform(0.12, 0.2)
    ru, rv = _rot(u, v, rng.uniform(-0.3, 0.3))
    x, y = ru / sp + rng.random(), rv / sp + rng.random()
    dx, dy = (x % 1.0) - 0.5, (y % 1.0) - 0.5
    dot = (dx * dx + dy * dy) < rng.uniform(0.18, 0.26) ** 2
    palette = np.stack([_c(0.95, 0.3, 0.3), _c(0.25, 0.55, 0.95), _c(0.35, 0.8, 0.4), _c(0.98, 0.55, 0.8),
                        _c(1.0, 1.0, 1.0)])
    idx = (_cell_hash(np.floor(x), np.floor(y), 11) * 5).astype(np.int64) % 5
    img = np.broadcast_to(wall, (res, res, 3)).copy()
    img[dot] = palette[idx[dot]]
    _ground(rng, img, v, (0.78, 0.88), lambda: _jit(rng, _c(0.22, 0.42, 0.8), dh=0.03), 0.9, 0.15, 14)
    return img


def _bg_boutique(rng: np.random.Generator, res: int) -> np.ndarray:
    """Turquoise and white striped wallpaper with a thin gold pinstripe, a light floor."""
    u, v = _grid(res)
    a = _jit(rng, _c(0.25, 0.74, 0.74), dh=0.03)
    b = _jit(rng, _c(0.95, 0.95, 0.92), ds=0.3, dv=0.02)
    period = rng.uniform(0.1, 0.2)
    ru, _ = _rot(u, v, rng.uniform(-0.08, 0.08))
    x = (ru / period + rng.random()) % 1.0
    img = np.where((x < 0.5)[..., None], a, b)
    pin = np.abs(x - 0.75) < max(0.04, 0.6 * (1.0 / period) / res)
    img[pin] = _c(0.85, 0.7, 0.3)
    floor = rng.uniform(0.8, 0.88)
    fl = _jit(rng, _c(0.8, 0.76, 0.72), dv=0.05)
    img[v > floor] = fl
    img[(v > floor) & (v < floor + max(0.02, 1.1 / res))] = _c(0.85, 0.7, 0.3)
    return img


# -------------------------------------------------------------------------- products


class _Canvas:
    """Draws a product as a label image (0 = background, k = part k) with exact edges."""

    def __init__(self, res: int):
        self.res = res
        self.img = Image.new("L", (res, res), 0)
        self.d = ImageDraw.Draw(self.img)

    def _xy(self, pts):
        return [(x * self.res, y * self.res) for x, y in pts]

    def rect(self, x0, y0, x1, y1, part, radius: float = 0.0):
        box = [x0 * self.res, y0 * self.res, x1 * self.res, y1 * self.res]
        if radius > 0:
            self.d.rounded_rectangle(box, radius=max(radius * self.res, 1.0), fill=part)
        else:
            self.d.rectangle(box, fill=part)

    def ellipse(self, cx, cy, rx, ry, part):
        r = self.res
        self.d.ellipse([(cx - rx) * r, (cy - ry) * r, (cx + rx) * r, (cy + ry) * r], fill=part)

    def poly(self, pts, part):
        self.d.polygon(self._xy(pts), fill=part)

    def rot_ellipse(self, cx, cy, rx, ry, angle, part):
        r = self.res
        self.d.polygon(_ellipse_poly(cx * r, cy * r, rx * r, ry * r, angle), fill=part)

    def arc(self, cx, cy, rx, ry, start, end, width, part):
        r = self.res
        self.d.arc([(cx - rx) * r, (cy - ry) * r, (cx + rx) * r, (cy + ry) * r], start, end, fill=part,
                   width=max(1, int(round(width * r))))

    def line(self, x0, y0, x1, y1, width, part):
        r = self.res
        self.d.line([(x0 * r, y0 * r), (x1 * r, y1 * r)], fill=part, width=max(1, int(round(width * r))))

    def labels(self) -> np.ndarray:
        return np.asarray(self.img)


@dataclass
class _Product:
    labels: np.ndarray  # uint8 HxW part ids, 0 = background
    colours: dict  # part id -> Color
    cx: float  # shading centre (0..1)
    half_width: float


def _place(rng: np.random.Generator, w: float, h: float, low: float = 0.0) -> tuple[float, float]:
    """A centre for a w x h product: roughly centred with jitter, fully inside the frame."""
    m = 0.03
    cx = 0.5 + rng.uniform(-0.09, 0.09)
    cy = 0.5 + low + rng.uniform(-0.07, 0.07)
    cx = min(max(cx, w / 2 + m), 1 - w / 2 - m)
    cy = min(max(cy, h / 2 + m), 1 - h / 2 - m)
    return cx, cy


def _pr_mug(rng, res) -> _Product:
    s = rng.uniform(0.95, 1.2)
    w, h = 0.32 * s, 0.38 * s
    hx, hy = 0.11 * s, 0.12 * s
    cx, cy = _place(rng, w + hx, h, 0.04)
    side = 1 if rng.random() < 0.5 else -1
    bx = cx - side * hx / 2  # body centre; the handle sticks out on `side`
    cv = _Canvas(res)
    cv.ellipse(bx + side * w / 2, cy - 0.01 * s, hx, hy, 2)
    cv.ellipse(bx + side * w / 2, cy - 0.01 * s, hx * 0.5, hy * 0.58, 0)
    cv.rect(bx - w / 2, cy - h / 2, bx + w / 2, cy + h / 2, 1, radius=0.045 * s)
    body = _jit(rng, _pick(rng, [_c(0.96, 0.96, 0.95), _c(0.82, 0.16, 0.16), _c(0.16, 0.22, 0.55),
                                 _c(0.88, 0.66, 0.14), _c(0.1, 0.56, 0.56), _c(0.16, 0.16, 0.17)]))
    accent = _jit(rng, _pick(rng, [_c(0.95, 0.95, 0.95), _c(0.9, 0.3, 0.25), _c(0.2, 0.35, 0.7),
                                   _c(0.95, 0.8, 0.2)]))
    if rng.random() < 0.6:
        y = cy + rng.uniform(-0.15, 0.15) * h
        cv.rect(bx - w / 2, y - 0.05 * h, bx + w / 2, y + 0.05 * h, 3)
    cv.rect(bx - w / 2 + 0.02 * s, cy - h / 2, bx + w / 2 - 0.02 * s, cy - h / 2 + 0.025 * s, 4)
    return _Product(cv.labels(), {1: body, 2: body * 0.95, 3: accent, 4: body * 0.75 + 0.2},
                    bx, w / 2)


def _pr_laptop(rng, res) -> _Product:
    s = rng.uniform(0.95, 1.15)
    w, h, bh = 0.56 * s, 0.34 * s, 0.06 * s
    cx, cy = _place(rng, w * 1.2, h + bh, 0.03)
    top = cy - (h + bh) / 2
    cv = _Canvas(res)
    cv.rect(cx - w / 2, top, cx + w / 2, top + h, 1, radius=0.02 * s)
    bz = 0.025 * s
    cv.rect(cx - w / 2 + bz, top + bz, cx + w / 2 - bz, top + h - bz, 2)
    y0, y1 = top + h, top + h + bh
    cv.poly([(cx - w / 2, y0), (cx + w / 2, y0), (cx + w * 0.6, y1), (cx - w * 0.6, y1)], 3)
    cv.rect(cx - 0.1 * w, y0, cx + 0.1 * w, y0 + 0.3 * bh, 4)
    lid = _jit(rng, _pick(rng, [_c(0.78, 0.79, 0.81), _c(0.36, 0.37, 0.4), _c(0.12, 0.12, 0.13),
                                _c(0.85, 0.78, 0.7)]), dv=0.04)
    screen = _jit(rng, _pick(rng, [_c(0.1, 0.16, 0.35), _c(0.2, 0.45, 0.75), _c(0.06, 0.06, 0.08),
                                   _c(0.35, 0.25, 0.55)]), dh=0.04)
    return _Product(cv.labels(), {1: lid, 2: screen, 3: lid * 1.08, 4: lid * 0.7}, cx, w / 2)


def _pr_sunscreen(rng, res) -> _Product:
    s = rng.uniform(0.95, 1.2)
    w, h = 0.22 * s, 0.55 * s
    cx, cy = _place(rng, w, h, 0.03)
    top = cy - h / 2
    cap_h = 0.1 * s
    cv = _Canvas(res)
    if rng.random() < 0.5:  # flip-top tube standing on its cap
        cv.poly([(cx - w / 2, top), (cx + w / 2, top), (cx + w * 0.42, top + h - cap_h),
                 (cx - w * 0.42, top + h - cap_h)], 1)
        cv.rect(cx - w * 0.42, top + h - cap_h, cx + w * 0.42, top + h, 2, radius=0.02 * s)
        label_y = top + 0.3 * h
    else:  # bottle with a cap on top
        cv.rect(cx - w * 0.3, top, cx + w * 0.3, top + cap_h, 2, radius=0.015 * s)
        cv.rect(cx - w / 2, top + cap_h, cx + w / 2, top + h, 1, radius=0.06 * s)
        label_y = top + 0.5 * h
    cv.rect(cx - w * 0.4, label_y - 0.08 * s, cx + w * 0.4, label_y + 0.08 * s, 3)
    cv.ellipse(cx, label_y, 0.045 * s, 0.045 * s, 4)
    body = _jit(rng, _pick(rng, [_c(0.98, 0.55, 0.1), _c(0.98, 0.84, 0.22), _c(0.96, 0.96, 0.94),
                                 _c(0.3, 0.64, 0.95), _c(0.98, 0.45, 0.4)]))
    cap = _jit(rng, _pick(rng, [_c(0.96, 0.96, 0.96), _c(0.15, 0.35, 0.8), _c(0.98, 0.5, 0.1)]))
    label = _jit(rng, _pick(rng, [_c(0.97, 0.97, 0.97), _c(0.1, 0.3, 0.7)]))
    return _Product(cv.labels(), {1: body, 2: cap, 3: label, 4: _c(1.0, 0.75, 0.1)}, cx, w / 2)


def _pr_perfume(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.25)
    w, h = 0.34 * s, 0.3 * s
    neck_h, cap_h = 0.04 * s, 0.1 * s
    tot = h + neck_h + cap_h
    cx, cy = _place(rng, w, tot, 0.03)
    top = cy - tot / 2
    by0 = top + cap_h + neck_h
    cv = _Canvas(res)
    kind = int(rng.integers(3))
    if kind == 0:  # octagonal flacon
        k = 0.07 * s
        cv.poly([(cx - w / 2 + k, by0), (cx + w / 2 - k, by0), (cx + w / 2, by0 + k),
                 (cx + w / 2, by0 + h - k), (cx + w / 2 - k, by0 + h), (cx - w / 2 + k, by0 + h),
                 (cx - w / 2, by0 + h - k), (cx - w / 2, by0 + k)], 1)
    elif kind == 1:  # round flacon
        cv.ellipse(cx, by0 + h / 2, w / 2, h / 2, 1)
    else:  # rounded square
        cv.rect(cx - w / 2, by0, cx + w / 2, by0 + h, 1, radius=0.06 * s)
    cv.rect(cx - 0.045 * s, top + cap_h, cx + 0.045 * s, by0 + 0.01 * s, 2)
    cv.rect(cx - 0.08 * s, top, cx + 0.08 * s, top + cap_h, 3, radius=0.015 * s)
    cv.poly([(cx - w * 0.3, by0 + 0.15 * h), (cx - w * 0.18, by0 + 0.15 * h), (cx - w * 0.28, by0 + 0.75 * h),
             (cx - w * 0.4, by0 + 0.75 * h)], 4)
    glass = _jit(rng, _pick(rng, [_c(0.95, 0.55, 0.72), _c(0.6, 0.36, 0.76), _c(0.92, 0.62, 0.26),
                                  _c(0.62, 0.78, 0.95), _c(0.88, 0.66, 0.6)]))
    cap = _jit(rng, _pick(rng, [_c(0.85, 0.7, 0.3), _c(0.1, 0.1, 0.1), _c(0.8, 0.8, 0.82)]), dv=0.04)
    return _Product(cv.labels(), {1: glass, 2: glass * 0.8, 3: cap, 4: glass * 0.5 + 0.5}, cx, w / 2)


def _pr_plant(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.25)
    pw, ph = 0.26 * s, 0.2 * s
    lw, lh = 0.44 * s, 0.32 * s
    cx, cy = _place(rng, lw, ph + lh, 0.02)
    top = cy - (ph + lh) / 2
    py0 = top + lh
    cv = _Canvas(res)
    leaf_parts = []
    for _ in range(int(rng.integers(6, 10))):
        ang = rng.uniform(-math.pi * 0.9, -math.pi * 0.1)
        dist = rng.uniform(0.3, 0.55) * lh
        lx = cx + math.cos(ang) * dist * 1.3
        ly = py0 + 0.02 * s + math.sin(ang) * dist
        leaf_parts.append((lx, ly, rng.uniform(0.09, 0.13) * s, rng.uniform(0.04, 0.06) * s, ang))
    cv.ellipse(cx, py0 - 0.3 * lh, 0.35 * lw, 0.32 * lh, 3)
    for i, (lx, ly, a, b, ang) in enumerate(leaf_parts):
        cv.rot_ellipse(lx, ly, a, b, ang, 3 + (i % 2))
    cv.poly([(cx - pw / 2, py0), (cx + pw / 2, py0), (cx + pw * 0.36, py0 + ph), (cx - pw * 0.36, py0 + ph)], 1)
    cv.rect(cx - pw * 0.55, py0 - 0.01 * s, cx + pw * 0.55, py0 + 0.045 * s, 2)
    pot = _jit(rng, _pick(rng, [_c(0.76, 0.38, 0.22), _c(0.93, 0.93, 0.9), _c(0.45, 0.47, 0.5),
                                _c(0.25, 0.45, 0.7)]))
    g1 = _hsv(rng.uniform(0.24, 0.36), rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.7))
    g2 = _hsv(rng.uniform(0.24, 0.36), rng.uniform(0.6, 0.85), rng.uniform(0.3, 0.5))
    return _Product(cv.labels(), {1: pot, 2: pot * 0.85, 3: g1, 4: g2}, cx, lw / 2)


def _pr_sneaker(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.25)
    L, H = 0.62 * s, 0.3 * s
    cx, cy = _place(rng, L, H, 0.08)
    x0, yb = cx - L / 2, cy + H / 2
    flip = rng.random() < 0.5

    def p(a, b):  # local (0..1 along the length, 0..1 up) -> image coordinates
        a = 1 - a if flip else a
        return (x0 + a * L, yb - b * H)

    cv = _Canvas(res)
    upper = [(0.02, 0.2), (0.0, 0.72), (0.06, 0.95), (0.3, 0.92), (0.46, 0.72), (0.72, 0.58), (0.92, 0.48),
             (1.0, 0.32), (0.99, 0.2)]
    cv.poly([p(a, b) for a, b in upper], 1)
    cv.poly([p(0.0, 0.0), p(1.0, 0.0), p(1.0, 0.24), p(0.0, 0.24)], 2)
    cv.poly([p(0.22, 0.3), p(0.62, 0.5), p(0.7, 0.44), p(0.26, 0.22)], 3)
    cv.poly([p(0.32, 0.88), p(0.46, 0.7), p(0.6, 0.62), p(0.55, 0.56), p(0.4, 0.64)], 4)
    upper_col = _jit(rng, _pick(rng, [_c(0.86, 0.15, 0.15), _c(0.95, 0.95, 0.95), _c(0.12, 0.12, 0.13),
                                      _c(0.15, 0.35, 0.8), _c(0.55, 0.56, 0.58), _c(0.55, 0.9, 0.2)]))
    sole = _jit(rng, _pick(rng, [_c(0.97, 0.97, 0.96), _c(0.1, 0.1, 0.1), _c(0.9, 0.78, 0.55)]), dv=0.03)
    accent = _jit(rng, _pick(rng, [_c(0.97, 0.97, 0.97), _c(0.1, 0.1, 0.1), _c(0.98, 0.6, 0.1),
                                   _c(0.2, 0.7, 0.9)]))
    return _Product(cv.labels(), {1: upper_col, 2: sole, 3: accent, 4: upper_col * 0.7 + 0.25}, cx, L / 2)


def _pr_lamp(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.25)
    tw, bw_, sh = 0.24 * s, 0.42 * s, 0.25 * s
    stem_h, base_w, base_h = 0.24 * s, 0.28 * s, 0.06 * s
    tot = sh + stem_h + base_h
    cx, cy = _place(rng, bw_, tot, 0.0)
    top = cy - tot / 2
    cv = _Canvas(res)
    cv.rect(cx - 0.02 * s, top + sh - 0.01, cx + 0.02 * s, top + sh + stem_h + base_h / 2, 2)
    cv.ellipse(cx, top + sh + stem_h + base_h / 2, base_w / 2, base_h / 2, 3)
    cv.poly([(cx - tw / 2, top), (cx + tw / 2, top), (cx + bw_ / 2, top + sh), (cx - bw_ / 2, top + sh)], 1)
    cv.rect(cx - bw_ / 2, top + sh - 0.035 * s, cx + bw_ / 2, top + sh, 4)
    shade = _jit(rng, _pick(rng, [_c(0.99, 0.88, 0.55), _c(0.97, 0.95, 0.88), _c(0.98, 0.72, 0.35),
                                  _c(0.35, 0.7, 0.68)]), dv=0.03)
    metal = _jit(rng, _pick(rng, [_c(0.78, 0.62, 0.3), _c(0.12, 0.12, 0.12), _c(0.75, 0.75, 0.78)]), dv=0.04)
    return _Product(cv.labels(), {1: shade, 2: metal, 3: metal * 0.85, 4: shade * 0.8 + 0.15}, cx, bw_ / 2)


def _pr_watch(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.2)
    fr, br = 0.12 * s, 0.15 * s
    sw, sl = 0.16 * s, 0.68 * s
    cx, cy = _place(rng, 2 * br + 0.04 * s, sl, 0.0)
    cv = _Canvas(res)
    cv.rect(cx - sw / 2, cy - sl / 2, cx + sw / 2, cy + sl / 2, 3, radius=0.03 * s)
    for k in range(1, 4):  # strap holes / links
        cv.rect(cx - 0.015 * s, cy + br + k * 0.05 * s, cx + 0.015 * s, cy + br + k * 0.05 * s + 0.015 * s, 5)
    cv.rect(cx + br - 0.01 * s, cy - 0.025 * s, cx + br + 0.035 * s, cy + 0.025 * s, 2)
    cv.ellipse(cx, cy, br, br, 2)
    cv.ellipse(cx, cy, fr, fr, 1)
    ang = rng.uniform(0, 2 * math.pi)
    cv.line(cx, cy, cx + 0.09 * s * math.cos(ang), cy + 0.09 * s * math.sin(ang), 0.018, 4)
    ang2 = rng.uniform(0, 2 * math.pi)
    cv.line(cx, cy, cx + 0.06 * s * math.cos(ang2), cy + 0.06 * s * math.sin(ang2), 0.02, 4)
    dial = _jit(rng, _pick(rng, [_c(0.97, 0.97, 0.95), _c(0.08, 0.08, 0.1), _c(0.15, 0.25, 0.55),
                                 _c(0.9, 0.82, 0.65)]), dv=0.03)
    bezel = _jit(rng, _pick(rng, [_c(0.78, 0.79, 0.82), _c(0.85, 0.68, 0.3), _c(0.15, 0.15, 0.16)]), dv=0.04)
    strap = _jit(rng, _pick(rng, [_c(0.45, 0.26, 0.13), _c(0.1, 0.1, 0.1), _c(0.7, 0.71, 0.74),
                                  _c(0.2, 0.3, 0.55), _c(0.75, 0.2, 0.25)]))
    hands = _c(0.1, 0.1, 0.1) if dial.mean() > 0.5 else _c(0.95, 0.95, 0.95)
    return _Product(cv.labels(), {1: dial, 2: bezel, 3: strap, 4: hands, 5: strap * 0.6}, cx, br)


def _pr_headphones(rng, res) -> _Product:
    s = rng.uniform(1.1, 1.3)
    r = 0.2 * s
    cw, ch = 0.13 * s, 0.24 * s
    cx, cy = _place(rng, 2 * r + cw, r + ch / 2 + 0.03, -0.02)
    cy0 = cy + 0.08 * s
    cv = _Canvas(res)
    cv.arc(cx, cy0, r, r * 1.1, 180, 360, 0.05 * s, 1)
    for side in (-1, 1):
        ex = cx + side * r
        cv.rect(ex - cw / 2, cy0 - ch * 0.35, ex + cw / 2, cy0 + ch * 0.65, 2, radius=0.04 * s)
        ix = ex - side * cw / 2
        cv.rect(min(ix, ix + side * 0.035 * s), cy0 - ch * 0.3, max(ix, ix + side * 0.035 * s), cy0 + ch * 0.6, 3)
    body = _jit(rng, _pick(rng, [_c(0.1, 0.1, 0.11), _c(0.95, 0.95, 0.95), _c(0.85, 0.15, 0.2),
                                 _c(0.9, 0.7, 0.68), _c(0.15, 0.22, 0.5), _c(0.75, 0.76, 0.78)]))
    return _Product(cv.labels(), {1: body * 0.9, 2: body, 3: body * 0.45 + 0.05}, cx, r + cw / 2)


def _pr_backpack(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.2)
    w, h = 0.36 * s, 0.46 * s
    lh = 0.07 * s
    cx, cy = _place(rng, w, h + lh, 0.02)
    top = cy - (h + lh) / 2 + lh
    cv = _Canvas(res)
    cv.arc(cx, top + 0.01, 0.07 * s, lh, 180, 360, 0.025 * s, 4)
    cv.rect(cx - w / 2, top, cx + w / 2, top + h, 1, radius=0.09 * s)
    cv.rect(cx - w * 0.38, top + h * 0.55, cx + w * 0.38, top + h * 0.93, 2, radius=0.04 * s)
    cv.rect(cx - w * 0.38, top + h * 0.6, cx + w * 0.38, top + h * 0.6 + max(0.012 * s, 1.0 / res), 3)
    cv.rect(cx - w * 0.3, top + h * 0.12, cx + w * 0.3, top + h * 0.12 + max(0.012 * s, 1.0 / res), 3)
    body = _jit(rng, _pick(rng, [_c(0.95, 0.45, 0.1), _c(0.2, 0.4, 0.22), _c(0.15, 0.2, 0.45),
                                 _c(0.8, 0.16, 0.16), _c(0.95, 0.78, 0.15), _c(0.45, 0.46, 0.48)]))
    return _Product(cv.labels(), {1: body, 2: body * 0.75, 3: _c(0.12, 0.12, 0.12), 4: body * 0.6}, cx, w / 2)


def _pr_toy(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.2)
    cx, cy = _place(rng, 0.36 * s, 0.56 * s, 0.02)
    hy, by = cy - 0.13 * s, cy + 0.1 * s
    cv = _Canvas(res)
    for side in (-1, 1):
        cv.ellipse(cx + side * 0.09 * s, hy - 0.09 * s, 0.05 * s, 0.05 * s, 1)
        cv.ellipse(cx + side * 0.14 * s, by - 0.02 * s, 0.05 * s, 0.1 * s, 1)
        cv.ellipse(cx + side * 0.09 * s, by + 0.14 * s, 0.065 * s, 0.05 * s, 1)
    cv.ellipse(cx, by, 0.14 * s, 0.16 * s, 1)
    cv.ellipse(cx, by + 0.02 * s, 0.08 * s, 0.09 * s, 2)
    cv.ellipse(cx, hy, 0.12 * s, 0.115 * s, 1)
    cv.ellipse(cx, hy + 0.04 * s, 0.05 * s, 0.04 * s, 2)
    for side in (-1, 1):
        cv.ellipse(cx + side * 0.045 * s, hy - 0.025 * s, 0.016 * s, 0.016 * s, 3)
    cv.ellipse(cx, hy + 0.03 * s, 0.018 * s, 0.013 * s, 3)
    fur = _jit(rng, _pick(rng, [_c(0.6, 0.4, 0.22), _c(0.82, 0.64, 0.42), _c(0.95, 0.68, 0.75),
                                _c(0.93, 0.92, 0.88), _c(0.55, 0.55, 0.57)]))
    return _Product(cv.labels(), {1: fur, 2: fur * 0.6 + 0.38, 3: _c(0.08, 0.06, 0.05)}, cx, 0.19 * s)


def _pr_handbag(rng, res) -> _Product:
    s = rng.uniform(1.0, 1.2)
    bw_, tw, h = 0.44 * s, 0.34 * s, 0.3 * s
    hh = 0.12 * s
    cx, cy = _place(rng, bw_, h + hh, 0.03)
    top = cy - (h + hh) / 2 + hh
    cv = _Canvas(res)
    cv.arc(cx, top + 0.005, tw * 0.32, hh, 180, 360, 0.03 * s, 2)
    cv.poly([(cx - tw / 2, top), (cx + tw / 2, top), (cx + bw_ / 2, top + h), (cx - bw_ / 2, top + h)], 1)
    cv.poly([(cx - tw / 2, top), (cx + tw / 2, top), (cx + tw * 0.56, top + 0.4 * h), (cx, top + 0.5 * h),
             (cx - tw * 0.56, top + 0.4 * h)], 3)
    cv.rect(cx - 0.025 * s, top + 0.43 * h, cx + 0.025 * s, top + 0.43 * h + 0.04 * s, 4)
    body = _jit(rng, _pick(rng, [_c(0.1, 0.1, 0.1), _c(0.72, 0.5, 0.3), _c(0.5, 0.1, 0.16), _c(0.93, 0.88, 0.78),
                                 _c(0.85, 0.15, 0.2), _c(0.16, 0.2, 0.4)]))
    return _Product(cv.labels(), {1: body, 2: body * 0.8, 3: body * 0.82 + 0.06, 4: _c(0.88, 0.72, 0.3)},
                    cx, bw_ / 2)


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Category:
    name: str
    scene: str
    background: Callable[[np.random.Generator, int], np.ndarray]
    product: Callable[[np.random.Generator, int], _Product]
    dominant: tuple = ()  # the scene's main colours: brand colours keep away from them


_TABLE: tuple[_Category, ...] = (
    _Category("mug", "kitchen wall tiles above a stone countertop", _bg_kitchen, _pr_mug,
              ((0.93, 0.93, 0.92), (0.3, 0.3, 0.32))),
    _Category("laptop", "wood panelling above a wooden desk", _bg_desk, _pr_laptop,
              ((0.4, 0.24, 0.13), (0.74, 0.52, 0.3))),
    _Category("sunscreen", "a beach: sky, sea and sand", _bg_beach, _pr_sunscreen,
              ((0.4, 0.65, 0.92), (0.93, 0.8, 0.57))),
    _Category("plant", "a garden of leaves and flowers", _bg_garden, _pr_plant,
              ((0.2, 0.42, 0.16), (0.3, 0.6, 0.2))),
    _Category("perfume", "white marble with grey veins", _bg_marble, _pr_perfume,
              ((0.92, 0.92, 0.91), (0.55, 0.55, 0.56))),
    _Category("sneaker", "a red brick wall above a street", _bg_brick, _pr_sneaker,
              ((0.62, 0.23, 0.15), (0.26, 0.26, 0.28))),
    _Category("lamp", "a dark blue room at night with a starry window", _bg_night, _pr_lamp,
              ((0.05, 0.07, 0.22),)),
    _Category("watch", "a pastel studio sweep with a spotlight", _bg_studio, _pr_watch,
              ((0.92, 0.7, 0.82), (0.95, 0.8, 0.7))),
    _Category("headphones", "dark purple with neon tubes", _bg_neon, _pr_headphones,
              ((0.12, 0.03, 0.17), (1.0, 0.15, 0.8), (0.1, 0.9, 1.0))),
    _Category("backpack", "snowy mountains above a meadow", _bg_mountain, _pr_backpack,
              ((0.6, 0.75, 0.92), (0.45, 0.5, 0.6), (0.33, 0.55, 0.2))),
    _Category("toy", "a yellow polka-dot kids' room", _bg_kidsroom, _pr_toy,
              ((0.97, 0.82, 0.3),)),
    _Category("handbag", "a boutique with turquoise striped wallpaper", _bg_boutique, _pr_handbag,
              ((0.25, 0.74, 0.74), (0.95, 0.95, 0.92))),
)

CATEGORIES: tuple[str, ...] = tuple(c.name for c in _TABLE)


def category_names(num_categories: int = 8) -> list[str]:
    """The first ``num_categories`` category names, in their stable order."""
    if not 1 <= int(num_categories) <= len(_TABLE):
        raise ValueError(f"num_categories must be between 1 and {len(_TABLE)}, got {num_categories}")
    return list(CATEGORIES[: int(num_categories)])


def brand_name(category: str, brand_index: int) -> str:
    return f"{category}-brand-{int(brand_index)}"


_BRAND_KINDS = ("frame", "band", "badge", "tint", "vignette", "bar")
_BRAND_COLOURS = (
    _c(0.86, 0.1, 0.15), _c(0.1, 0.25, 0.86), _c(0.96, 0.76, 0.05), _c(0.05, 0.6, 0.3),
    _c(0.96, 0.45, 0.05), _c(0.55, 0.15, 0.75), _c(0.05, 0.05, 0.05), _c(0.98, 0.98, 0.98),
    _c(0.0, 0.65, 0.7), _c(0.95, 0.35, 0.65),
)


@lru_cache(maxsize=None)
def _brand_colour_index(category_index: int, brand_index: int) -> int:
    """A colour that stands out from the category's scene and differs from the category's
    earlier brands (while there are colours left)."""
    c, b = category_index, brand_index
    taken = {_brand_colour_index(c, k) for k in range(b)} if b < len(_BRAND_COLOURS) else set()
    dominant = _TABLE[c].dominant if 0 <= c < len(_TABLE) else ()
    order = [(3 * c + 7 * b + k) % len(_BRAND_COLOURS) for k in range(len(_BRAND_COLOURS))]
    for idx in order:
        col = _BRAND_COLOURS[idx]
        if idx not in taken and all(np.linalg.norm(col - np.asarray(d)) >= 0.45 for d in dominant):
            return idx
    for idx in order:
        if idx not in taken:
            return idx
    return order[0]


def brand_signature(category_index: int, brand_index: int) -> dict:
    """A brand's fixed signature: ``kind`` (frame, band, badge, tint, vignette, bar),
    ``colour`` (RGB in [0, 1]) and ``corner`` (0..3, where a badge or band sits).

    Brands of one category get different kinds (for up to six brands) and colours (for up
    to ten), chosen to stand out from the category's scene."""
    c, b = int(category_index), int(brand_index)
    kind = _BRAND_KINDS[(2 * c + b) % len(_BRAND_KINDS)]
    colour = _BRAND_COLOURS[_brand_colour_index(c, b)]
    return {"kind": kind, "colour": tuple(round(float(x), 4) for x in colour), "corner": (c + 3 * b) % 4}


def _apply_brand(img: np.ndarray, category_index: int, brand_index: int, rng: np.random.Generator) -> np.ndarray:
    sig = brand_signature(category_index, brand_index)
    col = np.array(sig["colour"], dtype=np.float32)
    res = img.shape[0]
    u, v = _grid(res)
    corner = sig["corner"]
    cu = 1.0 - u if corner in (1, 2) else u  # distance-like coordinates from the brand's corner
    cv = 1.0 - v if corner in (2, 3) else v
    kind = sig["kind"]
    if kind == "frame":
        t = max(0.05 + rng.uniform(-0.005, 0.005), 2.0 / res)
        edge = (u < t) | (u > 1 - t) | (v < t) | (v > 1 - t)
        img[edge] = col
    elif kind == "band":
        d = np.abs(cu + cv - (0.55 + rng.uniform(-0.04, 0.04)))
        img = _lerp(img, col, 0.6 * (d < 0.09))
    elif kind == "badge":
        r = 0.1 + rng.uniform(-0.005, 0.005)
        d2 = (cu - 0.14) ** 2 + (cv - 0.14) ** 2
        img[d2 < r * r] = col
        img[d2 < (0.4 * r) ** 2] = _c(1.0, 1.0, 1.0) if col.mean() < 0.6 else _c(0.1, 0.1, 0.1)
    elif kind == "tint":
        img = _lerp(img, col, np.full((res, res), 0.22 + rng.uniform(-0.02, 0.02), np.float32))
    elif kind == "vignette":
        d = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2)
        t = np.clip((d - 0.38) / 0.34, 0, 1) ** 1.5
        img = _lerp(img, col * 0.8, 0.75 * t)
    elif kind == "bar":
        y0 = 1.0 - cv if corner in (2, 3) else cv  # header bar at the top
        h = 0.09 + rng.uniform(-0.005, 0.005)
        img[y0 < h] = col
        img[(y0 >= h) & (y0 < h + max(0.02, 1.0 / res))] = _c(1.0, 1.0, 1.0) if col.mean() < 0.6 else _c(0.1, 0.1, 0.1)
    return img


def render_sample(category_index: int, brand_index: int, rng: np.random.Generator, resolution: int) -> Sample:
    """One product on its category's background in its brand's style.

    ``image`` equals ``background`` exactly where ``mask`` is 0; the product is opaque."""
    if not 0 <= int(category_index) < len(_TABLE):
        raise ValueError(f"category_index must be in [0, {len(_TABLE)}), got {category_index}")
    if int(resolution) < 16:
        raise ValueError(f"resolution must be at least 16, got {resolution}")
    res = int(resolution)
    cat = _TABLE[int(category_index)]
    bg = cat.background(rng, res).astype(np.float32, copy=False)
    bg = _apply_brand(bg, int(category_index), int(brand_index), rng)
    background = _to_u8(bg)

    return _composite(background, cat.product(rng, res))


# ------------------------------------------------------------------ random style families
# A style family is what makes a category recognisable: a palette, a pattern family, a layout,
# a lighting, and the products' shape and palette family. Drawn from a style seed, it gives a
# catalog the shipped model never saw; drawn per image, it gives the broad prior the base is
# trained on (``make_prior_catalog``).

PATTERNS = ("stripes", "checkers", "grid", "dots", "gradient", "noise", "texture", "scene")
LAYOUTS = ("none", "horizon", "wall-floor", "vignette")
LIGHTING = ("flat", "top", "side", "spot")
_GOLDEN = 0.6180339887


@dataclass(frozen=True)
class StyleFamily:
    pattern: str
    hue: float  # the palette's key hue; the other colours follow from ``scheme``
    scheme: str  # "analogous", "complementary" or "mono"
    saturation: float
    value: float
    contrast: float  # value gap between the pattern's two colours
    scale: float  # pattern features across the image
    angle: float  # radians
    layout: str
    horizon: float  # where a horizon / floor line sits (0 = top)
    lighting: str
    light: float  # lighting strength
    product: int  # index of the product shape family (a row of the category table)
    product_hue: float
    product_saturation: float
    product_value: float

    def palette(self) -> tuple[Color, Color, Color]:
        """(primary, secondary, accent) colours of the background."""
        offset = {"analogous": 0.08, "complementary": 0.5, "mono": 0.0}[self.scheme]
        v2 = self.value - self.contrast if self.value > 0.5 else self.value + self.contrast
        a = _hsv(self.hue, self.saturation, self.value)
        b = _hsv(self.hue + offset, self.saturation * (0.6 if self.scheme == "mono" else 1.0), v2)
        c = _hsv(self.hue + 0.5 + offset / 2, min(1.0, self.saturation + 0.2), 0.5 + 0.4 * (1 - self.value))
        return a, b, c


def _draw_family(rng: np.random.Generator, hue: float | None = None, pattern: str | None = None,
                 layout: str | None = None) -> StyleFamily:
    """A random style family; ``hue``, ``pattern`` and ``layout`` may be imposed (a style seed
    spreads them over its categories so that categories stay apart)."""
    return StyleFamily(
        pattern=pattern or _pick(rng, PATTERNS),
        hue=float(rng.random() if hue is None else hue) % 1.0,
        scheme=_pick(rng, ("analogous", "complementary", "mono")),
        saturation=float(rng.uniform(0.25, 0.9)),
        value=float(_pick(rng, (rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.95)))),
        contrast=float(rng.uniform(0.2, 0.4)),
        scale=float(rng.uniform(2.5, 8.0)),
        angle=float(rng.uniform(-math.pi / 2, math.pi / 2)),
        layout=layout or _pick(rng, LAYOUTS),
        horizon=float(rng.uniform(0.55, 0.8)),
        lighting=_pick(rng, LIGHTING),
        light=float(rng.uniform(0.15, 0.35)),
        product=int(rng.integers(len(_TABLE))),
        product_hue=float(rng.random()),
        product_saturation=float(rng.uniform(0.3, 0.9)),
        product_value=float(rng.uniform(0.35, 0.95)),
    )


@lru_cache(maxsize=256)
def style_family(style_seed: int, category_index: int) -> StyleFamily:
    """Category ``category_index``'s family under ``style_seed`` (independent of how many
    categories the catalog has). Hues step by the golden ratio and pattern families and
    layouts follow a per-seed permutation, so the first eight categories of a seed differ in
    hue and pattern and their backgrounds stay separable."""
    order = np.random.default_rng([int(style_seed), 0xC0]).permutation(len(PATTERNS))
    layouts = np.random.default_rng([int(style_seed), 0x1A]).permutation(len(LAYOUTS))
    base = float(np.random.default_rng([int(style_seed), 0x8E]).random())
    c = int(category_index)
    rng = np.random.default_rng([int(style_seed), 0x5E, c])
    return _draw_family(rng, hue=base + c * _GOLDEN, pattern=PATTERNS[order[c % len(PATTERNS)]],
                        layout=LAYOUTS[layouts[(c + c // len(PATTERNS)) % len(LAYOUTS)]])


def styled_category_name(style_seed: int, category_index: int) -> str:
    """``s{seed}c{index}-{pattern}``: new words for the model, so adapting to a styled
    catalog appends categories instead of reusing the demo catalog's identifiers."""
    return f"s{int(style_seed)}c{int(category_index)}-{style_family(style_seed, category_index).pattern}"


def _styled_background(f: StyleFamily, rng: np.random.Generator, res: int) -> np.ndarray:
    """One background of family ``f`` with per-image jitter (hue, scale, offset, angle, line)."""
    u, v = _grid(res)
    a, b, c = (_jit(rng, x, dh=0.02, ds=0.1, dv=0.06) for x in f.palette())
    n = f.scale * rng.uniform(0.85, 1.15)
    ru, rv = _rot(u, v, f.angle + rng.uniform(-0.12, 0.12))
    x, y = ru * n + rng.random(), rv * n + rng.random()
    if f.pattern == "stripes":
        img = np.where(((x % 1.0) < 0.5)[..., None], a, b)
    elif f.pattern == "checkers":
        img = np.where(((np.floor(x) + np.floor(y)) % 2 == 0)[..., None], a, b)
    elif f.pattern == "grid":
        w = max(0.12, 1.5 * n / res)
        img = np.where((((x % 1.0) < w) | ((y % 1.0) < w))[..., None], b, a)
    elif f.pattern == "dots":
        dx, dy = (x % 1.0) - 0.5, (y % 1.0) - 0.5
        img = np.where((dx * dx + dy * dy < 0.09)[..., None], b, a)
    elif f.pattern == "gradient":
        img = _lerp(a, b, np.clip(rv, 0, 1))
        img = _lerp(img, c, 0.35 * np.exp(-((u - rng.uniform(0.2, 0.8)) ** 2 + (v - 0.3) ** 2) / 0.08))
    elif f.pattern == "noise":
        img = _lerp(a, b, np.clip(_noise(rng, res, max(2, int(round(n * 1.5)))) * 1.4 - 0.2, 0, 1))
    elif f.pattern == "texture":  # wood grain / marble: warped sine bands
        warp = _noise(rng, res, 3)
        img = _lerp(a, b, 0.5 + 0.5 * np.sin(2 * math.pi * (x + 1.2 * warp)))
    else:  # "scene": a sky gradient, a sun or moon, rolling hills
        img = _lerp(a, 0.5 * a + 0.5, np.clip(v / 0.6, 0, 1))
        sx, sy, sr = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.09)
        img[((u - sx) ** 2 + (v - sy) ** 2) < sr * sr] = c
        hills = 0.55 + 0.08 * np.sin(2 * math.pi * (u * n / 3 + rng.random())) + 0.04 * _noise(rng, res, 4)
        img[v > hills] = (b * (0.9 + 0.15 * _noise(rng, res, 12))[..., None])[v > hills]
    hz = f.horizon + rng.uniform(-0.05, 0.05)
    if f.layout == "horizon":  # a ground band in the accent colour
        low = v > hz
        img[low] = (c * (0.85 + 0.2 * _noise(rng, res, 10))[..., None])[low]
    elif f.layout == "wall-floor":  # a plain floor in a darker primary, with a skirting line
        low = v > hz
        img[low] = a * 0.6 + 0.1
        img[(v > hz) & (v < hz + max(0.03, 1.5 / res))] = c
    elif f.layout == "vignette":
        d = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2)
        img = _lerp(img, c * 0.35, 0.8 * np.clip((d - 0.3) / 0.4, 0, 1))
    if f.lighting == "top":
        img = img * (1 + f.light * (0.5 - v))[..., None]
    elif f.lighting == "side":
        img = img * (1 + f.light * (u - 0.5) * (1 if f.angle > 0 else -1))[..., None]
    elif f.lighting == "spot":
        img = img + f.light * np.exp(-((u - 0.5) ** 2 + (v - 0.35) ** 2) / 0.06)[..., None]
    return img


def _styled_product(f: StyleFamily, rng: np.random.Generator, res: int) -> _Product:
    """The family's product shape, recoloured with the family's product palette."""
    prod = _TABLE[f.product].product(rng, res)
    colours = {}
    for part in prod.colours:
        h = f.product_hue + (0.0 if part == 1 else rng.choice([0.0, 0.5, 0.08])) + rng.uniform(-0.03, 0.03)
        colours[part] = _hsv(h, f.product_saturation * rng.uniform(0.8, 1.1),
                             f.product_value * (1.0 if part == 1 else rng.uniform(0.6, 1.1)))
    return _Product(prod.labels, colours, prod.cx, prod.half_width)


def composite_product(background: np.ndarray, category_index: int, rng: np.random.Generator) -> Sample:
    """Category ``category_index``'s product (of the demo table, cycled) on ``background``."""
    return _composite(background, _TABLE[int(category_index) % len(_TABLE)].product(rng, background.shape[0]))


def _composite(background: np.ndarray, prod: _Product) -> Sample:
    res = background.shape[0]
    labels = prod.labels
    mask = labels > 0
    lut = np.zeros((256, 3), dtype=np.float32)
    for part, col in prod.colours.items():
        lut[part] = col
    u, _ = _grid(res)
    shade = 1.08 - 0.3 * np.clip(np.abs(u - prod.cx) / max(prod.half_width, 1e-3), 0, 1) ** 2
    product = _to_u8(lut[labels] * shade[..., None])
    image = np.where(mask[..., None], product, background)
    return Sample(image=image, mask=mask.astype(np.uint8) * 255, background=background)


def render_styled_sample(family: StyleFamily, brand_index: int | None, rng: np.random.Generator,
                         resolution: int, category_index: int = 0) -> Sample:
    """One product of ``family`` on a background of ``family``; with a brand, its signature
    (``brand_signature(category_index, brand_index)``) is layered on as in ``render_sample``."""
    if int(resolution) < 16:
        raise ValueError(f"resolution must be at least 16, got {resolution}")
    res = int(resolution)
    bg = _styled_background(family, rng, res).astype(np.float32, copy=False)
    if brand_index is not None:
        bg = _apply_brand(bg, int(category_index) % len(_TABLE), int(brand_index), rng)
    return _composite(_to_u8(bg), _styled_product(family, rng, res))


def sample_rng(seed: int, split: str, category_index: int, index: int, part: int = 0) -> np.random.Generator:
    """The generator for one catalog sample: depends on (seed, split, category, index) only."""
    return np.random.default_rng([int(seed), SPLITS[split], int(category_index), int(index), int(part)])


def split_sample(config: SyntheticConfig, split: str, category_index: int, index: int,
                 part: int = 0) -> tuple[int, Sample]:
    """(brand index, sample) of row ``index`` of ``category_index`` in ``split``, exactly as
    ``make_catalog`` writes it (``part=1`` is a pair's reference)."""
    brand = int(index) % max(1, int(config.brands_per_category))
    rng = sample_rng(config.seed, split, category_index, index, part)
    if config.style_seed is not None:
        family = style_family(config.style_seed, category_index)
        sample = render_styled_sample(family, brand, rng, config.resolution, category_index)
    else:
        sample = render_sample(category_index, brand, rng, config.resolution)
    if config.harmony != "off":  # its own random stream: the scene itself is drawn exactly as without
        light = sample_rng(config.seed + 7919, split, category_index, index, part)
        sample = add_harmony(sample, config.harmony, light, glossy=is_glossy(category_index))
    return brand, sample


HARMONY = ("off", "shadow", "shadow+reflection")


def is_glossy(category_index: int) -> bool:
    """Whether a category's supporting surface is glossy (it mirrors its products): every other
    category, so a harmony catalog has both kinds."""
    return int(category_index) % 2 == 0


def add_harmony(sample: Sample, mode: str, rng: np.random.Generator, glossy: bool = True) -> Sample:
    """The ad with a contact shadow (a soft darkening where the product meets its surface,
    offset along the scene's light direction) and, on a glossy surface with
    ``mode="shadow+reflection"``, a faded mirror image of the product below its base. Both are
    drawn on background pixels only: the product's pixels, the mask and the clean background
    are unchanged."""
    if mode not in HARMONY:
        raise ValueError(f"harmony must be one of {', '.join(HARMONY)}, got {mode!r}")
    mask = sample.mask > 127
    if mode == "off" or not mask.any():
        return sample
    h, w = mask.shape
    img = sample.image.astype(np.float32) / 255
    cols = np.flatnonzero(mask.any(0))
    rows = np.flatnonzero(mask.any(1))
    x0, x1, top, base = cols[0], cols[-1], rows[0], rows[-1]
    half = max(1.0, (x1 - x0) / 2)
    direction = rng.uniform(-0.6, 0.6)  # the light's side: the shadow leans away from it
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    sx, sy = (x0 + x1) / 2 + direction * half * 0.6, base + 0.5
    rx, ry = half * 1.15 + 1, max(1.5, 0.07 * h)
    shadow = np.clip(1 - ((xx - sx) / rx) ** 2 - ((yy - sy) / ry) ** 2, 0, 1) ** 0.8
    shadow[: int(base)] *= 0.35  # mostly on the surface, below the base
    darken = 1 - rng.uniform(0.45, 0.6) * shadow
    img = np.where(mask[..., None], img, img * darken[..., None])
    if mode == "shadow+reflection" and glossy:
        # on the shadowed surface, a mirror image about the base line: row base + k shows
        # product row base + 1 - k, fading out with depth
        depth = min(base - top + 1, h - 1 - base)
        strength = rng.uniform(0.5, 0.65)
        for k in range(1, depth + 1):
            src, dst = base + 1 - k, base + k
            fade = strength * (1 - (k - 1) / depth)
            keep = mask[src] & ~mask[dst]
            img[dst, keep] = (1 - fade) * img[dst, keep] + fade * img[src, keep]
    image = np.where(mask[..., None], sample.image, _to_u8(img))
    return Sample(image=image, mask=sample.mask, background=sample.background)


def catalog_category_names(config: SyntheticConfig) -> list[str]:
    """The category names ``make_catalog`` writes for ``config``."""
    names = category_names(config.num_categories)
    if config.style_seed is None:
        return names
    return [styled_category_name(config.style_seed, i) for i in range(len(names))]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _root(output: str) -> str:
    output = str(output)
    if storage.is_remote(output):
        return output.rstrip("/")
    return storage.filesystem(output)[1]  # absolute local path (also strips file://)


def make_catalog(output: str, config: SyntheticConfig = SyntheticConfig()) -> dict[str, str]:
    """Write the synthetic catalog under ``output`` (local directory or ``s3://`` prefix).

    Layout: ``{images,masks,backgrounds}/{split}/{product_id}.png``, ``train.parquet``,
    ``heldout.parquet``, ``pairs.parquet`` and ``categories.json``. Returns split -> Parquet URI.
    """
    if config.brands_per_category < 1:
        raise ValueError("brands_per_category must be at least 1")
    if config.harmony not in HARMONY:
        raise ValueError(f"harmony must be one of {', '.join(HARMONY)}, got {config.harmony!r}")
    names = catalog_category_names(config)

    def draw(split: str, ci: int, i: int, part: int) -> tuple[str, Sample]:
        brand, sample = split_sample(config, split, ci, i, part)
        return brand_name(names[ci], brand), sample

    return write_catalog(output, names, draw, {"train": config.train_per_category,
                                               "heldout": config.heldout_per_category,
                                               "pairs": config.pairs_per_category})


def write_catalog(output: str, names: list[str], draw: Callable[[str, int, int, int], tuple[str, Sample]],
                  per_category: dict[str, int]) -> dict[str, str]:
    """Write a catalog whose rows come from ``draw(split, category_index, index, part) ->
    (brand, sample)`` (``part`` 1 is a pair's reference ad; it must share the row's brand), in
    ``make_catalog``'s layout. Returns split -> Parquet URI."""
    root = _root(output)
    remote = storage.is_remote(root)
    storage.write_bytes(storage.join(root, "categories.json"), (json.dumps(names, indent=1) + "\n").encode())

    pool = ThreadPoolExecutor(max_workers=16) if remote else None
    pending = []

    def put(uri: str, data: bytes) -> None:
        if pool is None:
            storage.write_bytes(uri, data)
        else:
            pending.append(pool.submit(storage.write_bytes, uri, data))

    def write(split: str, pid: str, sample: Sample) -> tuple[str, str, str]:
        uris = tuple(storage.join(root, kind, split, f"{pid}.png") for kind in ("images", "masks", "backgrounds"))
        for uri, arr in zip(uris, (sample.image, sample.mask, sample.background)):
            put(uri, _png(arr))
        return uris

    tables: dict[str, dict[str, list]] = {}
    try:
        for split in ("train", "heldout"):
            cols: dict[str, list] = {k: [] for k in CATALOG_COLUMNS}
            for ci, name in enumerate(names):
                for i in range(int(per_category.get(split, 0))):
                    brand, sample = draw(split, ci, i, 0)
                    pid = f"{split}-{name}-{i:05d}"
                    img_uri, mask_uri, bg_uri = write(split, pid, sample)
                    row = (pid, name, img_uri, mask_uri, bg_uri, brand, None, None)
                    for k, val in zip(CATALOG_COLUMNS, row):
                        cols[k].append(val)
            tables[split] = cols
        cols = {k: [] for k in PAIRS_COLUMNS}
        for ci, name in enumerate(names):
            for j in range(int(per_category.get("pairs", 0))):
                brand, sample = draw("pairs", ci, j, 0)
                ref_brand, ref = draw("pairs", ci, j, 1)
                assert ref_brand == brand
                pid = f"pairs-{name}-{j:05d}"
                img_uri, mask_uri, bg_uri = write("pairs", pid, sample)
                ref_img, ref_mask, ref_bg = write("pairs", f"{pid}-ref", ref)
                row = (pid, name, img_uri, mask_uri, bg_uri, brand, ref_img, None, ref_mask, ref_bg)
                for k, val in zip(PAIRS_COLUMNS, row):
                    cols[k].append(val)
        tables["pairs"] = cols
        for fut in pending:
            fut.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

    return {split: _write_table(root, split, tables[split]) for split in ("train", "heldout", "pairs")}


def _write_table(root: str, split: str, cols: dict[str, list]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(k, pa.string()) for k in cols])
    table = pa.table({k: pa.array(v, type=pa.string()) for k, v in cols.items()}, schema=schema)
    uri = storage.join(root, f"{split}.parquet")
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)
    return uri


PRIOR_CATEGORY = "prior"


def prior_sample(seed: int, index: int, resolution: int, demo_share: float = 0.25) -> Sample:
    """Row ``index`` of the broad prior: a style family drawn for this image alone (any
    palette, pattern, layout, lighting, product shape and colour), or with probability
    ``demo_share`` one of the demo table's scenes, so the base keeps those too."""
    rng = np.random.default_rng([int(seed), 0x9A, int(index)])
    if rng.random() < demo_share:
        c = int(rng.integers(len(_TABLE)))
        return render_sample(c, int(rng.integers(len(_BRAND_KINDS))), rng, resolution)
    return render_styled_sample(_draw_family(rng), None, rng, resolution)


def make_prior_catalog(output: str, rows: int, resolution: int = 64, seed: int = 0,
                       demo_share: float = 0.25) -> dict[str, str]:
    """Write the broad procedural prior as a training catalog (``train.parquet``, one
    category ``prior``): what the shipped VAE and base UNet learn from, captioned "a photo"
    only, so that CG can steer them towards a catalog's styles they were never shown."""
    if int(rows) < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    root = _root(output)
    cols: dict[str, list] = {k: [] for k in CATALOG_COLUMNS}
    with ThreadPoolExecutor(max_workers=16 if storage.is_remote(root) else 1) as pool:
        pending = []
        for i in range(int(rows)):
            sample = prior_sample(seed, i, resolution, demo_share)
            pid = f"prior-{i:07d}"
            uris = tuple(storage.join(root, kind, "train", f"{pid}.png") for kind in ("images", "masks", "backgrounds"))
            for uri, arr in zip(uris, (sample.image, sample.mask, sample.background)):
                pending.append(pool.submit(storage.write_bytes, uri, _png(arr)))
            for k, val in zip(CATALOG_COLUMNS, (pid, PRIOR_CATEGORY, *uris, None, None, None)):
                cols[k].append(val)
        for fut in pending:
            fut.result()
    storage.write_bytes(storage.join(root, "categories.json"), (json.dumps([PRIOR_CATEGORY]) + "\n").encode())
    return {"train": _write_table(root, "train", cols)}
