"""Driving corruptions of camera images, severities 1..5 (ImageNet-C style), applied consistently per scene.

Every corruption is a function ``fn(x, severity, rng, ctx) -> x`` on an ``HxWx3`` float32 RGB image in [0, 1],
registered under a name in :data:`CORRUPTIONS`. Users call :func:`corrupt` (any uint8 / float image, severity 0
is the identity) or :func:`apply_to_agent_input` (a NAVSIM ``AgentInput``, all cameras and history frames).

Randomness comes in two streams so that a scene stays consistent over its frames:

- ``rng`` draws the *scene parameters* (blur direction, dirt and drop layout, flare position, colour cast, drift
  rotation, whether a camera is dead). :func:`apply_to_agent_input` seeds it from ``(seed, seed_key, camera)``
  only, so every history frame of a camera gets the same parameters.
- ``ctx.noise_rng`` draws what changes from frame to frame (sensor noise, rain and snow particles); it is seeded
  from ``(seed, seed_key, camera, frame index)``.

Parameters are drawn for the strongest severity and the severity only selects how much of them is used (first
``n`` dirt blobs, noise scaled by sigma, ...), so for one seed a higher severity is always a stronger version of
the same corruption; this is what makes the degradation grow monotonically.

Spatial sizes (blur radii, streak lengths) are given for ImageNet-C's 224-pixel images and scaled by the short
side of the image, so a corruption looks the same at 1920x1080 as on a 64x96 test image.

Gallery: ``python -m rap_backbone.corruptions show [--image PATH] [--out FILE.png]`` (a drawn road scene by
default; ``python -m navsim_agents.corruption_gallery show`` uses the synthetic world's cameras).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rap_backbone.nuplan_rig import CAMERA_NAMES

log = logging.getLogger(__name__)

# ---- reference constants ---------------------------------------------------------------------------------
# Severity tables marked "ImageNet-C" are the values of Hendrycks & Dietterich (ICLR 2019),
# hendrycks/robustness: ImageNet-C/create_c/make_imagenet_c.py, on 224-pixel images.
IMAGENET_C_SIZE = 224
GAUSSIAN_NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # ImageNet-C gaussian_noise
SHOT_NOISE_PHOTONS = (60.0, 25.0, 12.0, 5.0, 3.0)  # ImageNet-C shot_noise (photons at full scale)
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # ImageNet-C motion_blur (radius, sigma)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # ImageNet-C defocus_blur (radius, alias)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # ImageNet-C contrast
JPEG_QUALITY = (25, 18, 15, 10, 7)  # ImageNet-C jpeg_compression
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)  # ImageNet-C pixelate
SNOW_BLEND = (0.8, 0.7, 0.7, 0.65, 0.55)  # ImageNet-C snow: weight of the image against the whitened image
FOG_VISIBILITY_CONSTANT = 3.912  # Koschmieder: extinction beta = -ln(0.02)/V for meteorological visibility V

# Our own calibration (no reference): chosen so that severity 1 is mild and 5 is severe, steps roughly even.
SRGB_GAMMA = 2.2  # linear light <-> display values
OVEREXPOSURE_STOPS = (0.5, 1.0, 1.5, 2.0, 2.5)
NIGHT_STOPS = (1.0, 2.0, 3.0, 4.0, 5.0)  # light lost at the sensor
NIGHT_AUTO_GAIN = 0.5  # fraction of the lost stops the camera's gain (ISO) recovers, amplifying noise
NIGHT_FULL_WELL = 1000.0  # electrons at full scale for the clean exposure
NIGHT_READ_NOISE = 3.0  # electrons
FOG_VISIBILITY_M = (400.0, 200.0, 100.0, 50.0, 25.0)
FOG_AIRLIGHT = 0.82
FOG_DENSITY_VARIATION = 0.3  # relative, low-frequency variation of the extinction coefficient
FOG_IMAGE_MAX_DEPTH_M = 100.0  # image-based fog: depth given to everything at and above the horizon
CAMERA_HEIGHT_M = 1.6  # image-based fog: ground-plane depth below the horizon (nuPlan cameras ~1.5-1.8 m)
DEFAULT_FOCAL_PER_WIDTH = 0.805  # nuPlan CAM_F0: fx ~1545 px at 1920 px width; used when no intrinsics given
RAIN = (  # (image share covered by streaks, streak length @224, streak brightness, scene dimming)
    (0.02, 6.0, 0.35, 0.95), (0.04, 8.0, 0.45, 0.90), (0.07, 10.0, 0.55, 0.85),
    (0.10, 12.0, 0.65, 0.80), (0.14, 14.0, 0.75, 0.72))
RAIN_WIDTH = 0.3  # streak width @224 (px)
SNOW = (  # (image share covered by flakes, flake radius @224, flake brightness)
    (0.03, 0.6, 0.6), (0.06, 0.8, 0.7), (0.10, 1.0, 0.8), (0.15, 1.2, 0.9), (0.22, 1.5, 1.0))
GLARE_INTENSITY = (0.5, 0.75, 1.0, 1.3, 1.7)
LENS_DIRT = ((3, 0.45), (6, 0.6), (10, 0.72), (15, 0.85), (22, 1.0))  # (blobs, opacity scale)
DIRT_COLOUR = (0.22, 0.18, 0.13)
DIRT_TRANSLUCENCY = 0.35  # share of (blurred) scene light that passes a fully opaque dirt blob
WATER_DROPS = ((4, 0.6), (8, 0.75), (14, 0.9), (22, 1.0), (32, 1.15))  # (drops, radius scale)
COLOUR_SHIFT = (0.15, 0.3, 0.45, 0.6, 0.8)  # log-gain of the white-balance error in linear light
ROLLING_SHUTTER = ((0.02, 0.0), (0.04, 0.002), (0.06, 0.004), (0.09, 0.006), (0.12, 0.01))  # (skew, wobble)/W
FRAME_DELAY_S = (0.25, 0.5, 0.75, 1.0, 1.5)
NAVSIM_FRAME_INTERVAL_S = 0.5  # navsim: 2 Hz history frames (navsim/common/dataclasses.py, SceneFilter)
DROP_PROBABILITY = (0.2, 0.4, 0.6, 0.8, 1.0)  # per camera and scene
DRIFT_ANGLE_DEG = (0.5, 1.0, 2.0, 3.0, 5.0)

MAX_SEVERITY = 5


# ---- context and registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorruptionContext:
    """What a corruption may use besides the image.

    Attributes:
        noise_rng: randomness that changes per frame (defaults to the scene ``rng``).
        depth: ``HxW`` metric depth along the optical axis (e.g. from the rasterizer); non-finite or <= 0 is sky.
        history: earlier frames of the same camera, oldest first (the frame itself not included).
        intrinsics: 3x3 camera matrix of the image (a nuPlan-like default is assumed when missing).
        frame_interval_s: time between history frames.
        rerender: ``rerender(R) -> image`` renders the scene from the camera rotated by ``R``
            (``X_drifted = R @ X_nominal``); calibration drift uses it instead of the homography warp.
    """

    noise_rng: np.random.Generator | None = None
    depth: np.ndarray | None = None
    history: Sequence[np.ndarray] | None = None
    intrinsics: np.ndarray | None = None
    frame_interval_s: float = NAVSIM_FRAME_INTERVAL_S
    rerender: Callable[[np.ndarray], np.ndarray] | None = None


CorruptionFn = Callable[[np.ndarray, int, np.random.Generator, CorruptionContext], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: ``fn(x float32 HxWx3 in [0,1], severity 1..5, rng, ctx) -> same``."""

    name: str
    fn: CorruptionFn
    description: str


CORRUPTIONS: dict[str, Corruption] = {}


def _register(name: str, description: str, *aliases: str) -> Callable[[CorruptionFn], CorruptionFn]:
    def wrap(fn: CorruptionFn) -> CorruptionFn:
        for key in (name, *aliases):
            CORRUPTIONS[key] = Corruption(name=key, fn=fn, description=description)
        return fn

    return wrap


def corruption_names(*, aliases: bool = False) -> list[str]:
    """Registered names (without aliases such as ``night`` unless asked)."""
    if aliases:
        return list(CORRUPTIONS)
    seen: set[CorruptionFn] = set()
    names = []
    for name, c in CORRUPTIONS.items():
        if c.fn not in seen:
            seen.add(c.fn)
            names.append(name)
    return names


# ---- small helpers ---------------------------------------------------------------------------------------
def _spatial_scale(x: np.ndarray) -> float:
    """Pixels of this image per pixel of a 224-pixel ImageNet-C image."""
    return min(x.shape[:2]) / IMAGENET_C_SIZE


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), SRGB_GAMMA, dtype=np.float32)


def _to_display(lin: np.ndarray) -> np.ndarray:
    return np.power(np.clip(lin, 0.0, 1.0), 1.0 / SRGB_GAMMA, dtype=np.float32)


def _screen(x: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Screen blend: adds light without exceeding 1 (layer HxW or HxWx3 in [0,1])."""
    if layer.ndim == 2:
        layer = layer[..., None]
    return 1.0 - (1.0 - x) * (1.0 - layer)


def _resize(x: np.ndarray, width: int, height: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    out = cv2.resize(x, (int(width), int(height)), interpolation=interpolation)
    return out[..., None] if x.ndim == 3 and out.ndim == 2 else out


def _low_frequency_field(h: int, w: int, rng: np.random.Generator, *, cells: int = 4, octaves: int = 3) -> np.ndarray:
    """Smooth random field HxW, zero mean, unit-ish std (a cheap plasma fractal: upsampled noise octaves)."""
    field = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = cells * 2**o
        grid = rng.standard_normal((max(2, round(n * h / max(h, w))) + 1, n + 1)).astype(np.float32)
        field += amp * _resize(grid, w, h, cv2.INTER_CUBIC)
        total += amp**2
        amp *= 0.5
    return field / np.sqrt(total)


def _line_kernel(length: float, angle: float, *, sigma: float | None = None, one_sided: bool = True,
                 peak_one: bool = False, width: float = 1.0) -> np.ndarray:
    """Anti-aliased line kernel of ``length`` px at ``angle`` (rad), Gaussian-weighted along it when ``sigma``."""
    r = max(1, int(np.ceil(length)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    lo = 0.0 if one_sided else -length / 2
    hi = length if one_sided else length / 2
    w = np.clip(np.minimum(along - lo, hi - along) + 0.5, 0.0, 1.0) * np.clip(width / 2 + 0.5 - np.abs(across), 0.0, 1.0)
    if sigma:
        w *= np.exp(-0.5 * (along / sigma) ** 2)
    return (w / w.max() if peak_one else w / w.sum()).astype(np.float32)


def _disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased disk (area-normalised); its weight grows smoothly with ``radius``."""
    r = max(1, int(np.ceil(radius)) + 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    w = np.clip(radius + 0.5 - np.sqrt(xx**2 + yy**2), 0.0, 1.0)
    return (w / w.sum()).astype(np.float32)


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)
    return out[..., None] if x.ndim == 3 and out.ndim == 2 else out


def _coarse_blur(x: np.ndarray, factor: float) -> np.ndarray:
    """Strong blur via down- and upsampling by ``factor`` (cheap stand-in for a wide Gaussian)."""
    h, w = x.shape[:2]
    small = _resize(x, max(1, round(w / factor)), max(1, round(h / factor)), cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    return _resize(small, w, h, cv2.INTER_LINEAR)


def _default_intrinsics(h: int, w: int) -> np.ndarray:
    f = DEFAULT_FOCAL_PER_WIDTH * w
    return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])


def _intrinsics(ctx: CorruptionContext, h: int, w: int) -> np.ndarray:
    if ctx.intrinsics is None:
        return _default_intrinsics(h, w)
    k = np.asarray(ctx.intrinsics, dtype=np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise ValueError(f"intrinsics must be a finite 3x3 camera matrix, got shape {k.shape}")
    return k


# ---- noise -----------------------------------------------------------------------------------------------
@_register("gaussian_noise", "additive Gaussian sensor noise")
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    noise = (ctx.noise_rng or rng).standard_normal(x.shape, dtype=np.float32)
    return x + GAUSSIAN_NOISE_SIGMA[severity - 1] * noise


@_register("shot_noise", "photon (Poisson) noise, signal-dependent")
def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    # Poisson(x*c)/c by its normal approximation: mean x, std sqrt(x/c); 10x faster than drawing Poisson.
    noise = (ctx.noise_rng or rng).standard_normal(x.shape, dtype=np.float32)
    return x + np.sqrt(np.maximum(x, 0.0) / SHOT_NOISE_PHOTONS[severity - 1]) * noise


# ---- blur ------------------------------------------------------------------------------------------------
@_register("motion_blur", "camera shake / ego-motion blur along a random direction")
def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-45.0, 45.0))  # ImageNet-C's angle range
    radius, sigma = MOTION_BLUR[severity - 1]
    s = _spatial_scale(x)
    return _filter(x, _line_kernel(radius * s, angle, sigma=sigma * s))


@_register("defocus_blur", "out-of-focus lens (disk kernel)")
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    radius, alias = DEFOCUS_BLUR[severity - 1]
    s = _spatial_scale(x)
    out = _filter(x, _disk_kernel(radius * s))
    return cv2.GaussianBlur(out, (0, 0), alias * s).reshape(x.shape)


# ---- exposure and colour ---------------------------------------------------------------------------------
@_register("brightness", "over-exposure: too much light, highlights clip", "overexposure")
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    return _to_display(_to_linear(x) * 2.0 ** OVEREXPOSURE_STOPS[severity - 1])


@_register("contrast", "low contrast (haze-free flat light, dirty windshield)")
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * CONTRAST_FACTOR[severity - 1] + mean


@_register("low_light", "night: less light, camera gain, photon and read noise", "night")
def low_light(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    stops = NIGHT_STOPS[severity - 1]
    electrons = _to_linear(x) * (NIGHT_FULL_WELL * 2.0 ** -stops)
    noise = (ctx.noise_rng or rng).standard_normal(x.shape, dtype=np.float32)
    electrons += np.sqrt(electrons + NIGHT_READ_NOISE**2) * noise
    return _to_display(electrons * (2.0 ** (stops * NIGHT_AUTO_GAIN) / NIGHT_FULL_WELL))


@_register("color_shift", "white-balance error: colour cast in a random hue direction", "colour_shift")
def color_shift(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    phi = rng.uniform(0.0, 2.0 * np.pi)
    # two orthonormal zero-sum directions in RGB: the gain change keeps grey-level brightness roughly fixed
    a = np.array([2.0, -1.0, -1.0]) / np.sqrt(6.0)
    b = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)
    gains = np.exp(COLOUR_SHIFT[severity - 1] * (np.cos(phi) * a + np.sin(phi) * b)).astype(np.float32)
    return _to_display(_to_linear(x) * gains)


# ---- weather ---------------------------------------------------------------------------------------------
def _pseudo_depth(h: int, w: int, k: np.ndarray) -> np.ndarray:
    """Ground-plane depth per row (flat road, level camera); at and above the horizon a far constant."""
    v = np.arange(h, dtype=np.float32) - float(k[1, 2])
    with np.errstate(divide="ignore"):
        d = np.where(v > 0, CAMERA_HEIGHT_M * float(k[1, 1]) / np.maximum(v, 1e-6), np.inf)
    d = np.minimum(d, FOG_IMAGE_MAX_DEPTH_M).astype(np.float32)
    return np.broadcast_to(d[:, None], (h, w))


@_register("fog", "fog (Koschmieder); depth-aware with a depth map, else ground-plane depth from the image rows")
def fog(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    variation = _low_frequency_field(h, w, rng, cells=3)
    if ctx.depth is not None:
        depth = np.asarray(ctx.depth, dtype=np.float32)
        if depth.shape != (h, w):
            raise ValueError(f"fog: depth map has shape {depth.shape}, the image is {h}x{w}; pass a matching depth")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.inf)
    else:
        depth = _pseudo_depth(h, w, _intrinsics(ctx, h, w))
    beta = FOG_VISIBILITY_CONSTANT / FOG_VISIBILITY_M[severity - 1]
    with np.errstate(invalid="ignore"):
        t = np.exp(-beta * depth * np.clip(1.0 + FOG_DENSITY_VARIATION * variation, 0.3, None))
    t = np.nan_to_num(t, nan=0.0)[..., None].astype(np.float32)
    return x * t + FOG_AIRLIGHT * (1.0 - t)


@_register("rain", "rain streaks, dimmed overcast light and slight blur")
def rain(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    density, length, bright, dim = RAIN[severity - 1]
    h, w = x.shape[:2]
    s = _spatial_scale(x)
    angle = np.deg2rad(90.0 + rng.uniform(-20.0, 20.0))  # mostly vertical, wind-tilted, same for the scene
    kernel = _line_kernel(max(1.5, length * s), angle, one_sided=False, peak_one=True,
                          width=max(1.0, RAIN_WIDTH * s))
    seeds = ((ctx.noise_rng or rng).random((h, w), dtype=np.float32) < density / kernel.sum()).astype(np.float32)
    streaks = np.clip(_filter(seeds, kernel), 0.0, 1.0)
    blurred = cv2.GaussianBlur(x, (0, 0), 0.3 + 0.25 * severity * s).reshape(x.shape)
    return _screen(blurred * dim, bright * streaks)


@_register("snow", "falling snow flakes and whitened scene")
def snow(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    density, radius, bright = SNOW[severity - 1]
    h, w = x.shape[:2]
    s = _spatial_scale(x)
    angle = np.deg2rad(90.0 + rng.uniform(-30.0, 30.0))
    r = max(0.6, radius * s)
    rr = int(np.ceil(3 * r)) + 1
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1].astype(np.float32)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    kernel = np.exp(-0.5 * ((along / (1.8 * r)) ** 2 + (across / r) ** 2)).astype(np.float32)  # falling flake
    seeds = ((ctx.noise_rng or rng).random((h, w), dtype=np.float32) < density / kernel.sum()).astype(np.float32)
    flakes = np.clip(_filter(seeds, kernel), 0.0, 1.0)
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    c = SNOW_BLEND[severity - 1]
    whitened = c * x + (1.0 - c) * np.maximum(x, gray * 1.5 + 0.5)  # ImageNet-C snow's whitening
    return _screen(np.clip(whitened, 0.0, 1.0), bright * flakes)


# ---- optics ----------------------------------------------------------------------------------------------
@_register("glare", "sun glare: bright source, veiling halo and lens-flare ghosts", "lens_flare")
def glare(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    sun = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.05, 0.4) * h])
    ghost_t = rng.uniform(0.3, 1.6, size=5)
    ghost_r = rng.uniform(0.02, 0.07, size=5) * min(h, w)
    ghost_colour = rng.uniform(0.4, 1.0, size=(5, 3)).astype(np.float32)
    k = GLARE_INTENSITY[severity - 1]
    f = max(1, min(h, w) // 128)  # the layer is smooth: render it at low resolution
    hs, ws = max(2, h // f), max(2, w // f)
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    yy, xx = (yy + 0.5) * (h / hs), (xx + 0.5) * (w / ws)
    diag = np.hypot(h, w)
    r2 = ((xx - sun[0]) ** 2 + (yy - sun[1]) ** 2) / diag**2
    core = np.exp(-r2 / (2 * 0.03**2))
    halo = 0.35 / (1.0 + r2 / 0.02)
    layer = (k * (core + halo))[..., None] * np.array([1.0, 0.95, 0.8], np.float32)
    centre = np.array([w / 2, h / 2])
    pos = centre + (centre - sun)[None] * ghost_t[:, None]  # ghosts lie on the line through the image centre
    d = np.sqrt((xx[None] - pos[:, 0, None, None]) ** 2 + (yy[None] - pos[:, 1, None, None]) ** 2)
    discs = np.clip((ghost_r[:, None, None] - d) / (0.3 * ghost_r[:, None, None]), 0.0, 1.0)
    layer += 0.25 * k * np.einsum("nhw,nc->hwc", discs, ghost_colour)
    layer += 0.06 * k  # veiling glare lifts the blacks everywhere
    return _screen(x, np.clip(_resize(layer.astype(np.float32), w, h), 0.0, 1.0))


def _blob_layout(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (n, 2) in [0,1]^2, radii (n,) relative to the short side, opacities (n,)."""
    return rng.random((n, 2)), rng.uniform(0.03, 0.11, n), rng.uniform(0.5, 1.0, n)


@_register("lens_dirt", "mud / dust on the lens: soft dark translucent blobs")
def lens_dirt(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    centres, radii, opacity = _blob_layout(rng, LENS_DIRT[-1][0])
    n, scale = LENS_DIRT[severity - 1]
    f = max(1, min(h, w) // 96)
    hs, ws = max(2, h // f), max(2, w // f)
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    yy, xx = (yy + 0.5) / hs, (xx + 0.5) / ws
    aspect = w / h
    r = radii[:n, None, None] * min(h, w) / h
    d2 = ((xx[None] - centres[:n, 0, None, None]) * aspect) ** 2 + (yy[None] - centres[:n, 1, None, None]) ** 2
    cover = np.clip(scale * opacity[:n, None, None], 0.0, 1.0) * np.exp(-0.5 * d2 / r**2)
    mask = 1.0 - np.prod(1.0 - cover, axis=0)
    mask = _resize(mask.astype(np.float32), w, h)[..., None]
    behind = DIRT_TRANSLUCENCY * _coarse_blur(x, max(2.0, min(h, w) / 40)) + (1 - DIRT_TRANSLUCENCY) * np.array(
        DIRT_COLOUR, np.float32)
    return x * (1.0 - mask) + behind * mask


@_register("water_drops", "water drops on the lens: blurred, inverted views inside round drops")
def water_drops(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    n_max = WATER_DROPS[-1][0]
    centres = rng.random((n_max, 2)) * np.array([w, h])
    base_r = rng.uniform(0.02, 0.06, n_max) * min(h, w)
    n, rscale = WATER_DROPS[severity - 1]
    blurred = _coarse_blur(x, max(2.0, min(h, w) / 60))
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    weight = np.zeros((h, w), np.float32)
    for (cx, cy), r in zip(centres[:n], base_r[:n] * rscale, strict=True):  # <= 32 drops, each vectorised over its box
        r = max(r, 1.0)
        x0, x1 = int(max(0, cx - r)), int(min(w, cx + r + 1))
        y0, y1 = int(max(0, cy - r)), int(min(h, cy + r + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        gx, gy = map_x[y0:y1, x0:x1] - cx, map_y[y0:y1, x0:x1] - cy
        rho = np.sqrt(gx**2 + gy**2) / r
        inside = np.clip((1.0 - rho) * r / 1.5, 0.0, 1.0)  # soft rim
        take = inside > weight[y0:y1, x0:x1]
        # a drop is a tiny fish-eye lens: it shows a wider, inverted view of what is around it
        map_x[y0:y1, x0:x1] = np.where(take, cx - 2.5 * gx * (1.0 + rho), map_x[y0:y1, x0:x1])
        map_y[y0:y1, x0:x1] = np.where(take, cy - 2.5 * gy * (1.0 + rho), map_y[y0:y1, x0:x1])
        weight[y0:y1, x0:x1] = np.maximum(weight[y0:y1, x0:x1], inside)
    seen = cv2.remap(blurred, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).reshape(x.shape)
    weight = weight[..., None]
    rim = 1.0 - 0.2 * weight * (1.0 - weight) * 4.0  # darker drop edges
    return (x * (1.0 - weight) + seen * weight) * rim


# ---- digital ---------------------------------------------------------------------------------------------
def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@_register("jpeg", "JPEG compression artefacts", "jpeg_compression")
def jpeg(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    bgr = np.ascontiguousarray(_to_uint8(x)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[severity - 1]])
    if not ok:
        raise RuntimeError("jpeg: OpenCV could not encode the image")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def pixelate_block_sizes(short_side: int) -> tuple[int, ...]:
    """Integer block sizes (px) of severities 1..5 for an image with this short side.

    ImageNet-C keeps ``224*factor`` px of a 224-px image, i.e. blocks of ``1/factor`` px; a larger image keeps
    the same number of blocks across (blocks of ``short/224/factor`` px). Blocks are whole pixels and strictly
    growing with severity (fractional blocks alias and can make a higher severity look sharper).
    """
    sizes: list[int] = []
    for factor in PIXELATE_FACTOR:
        b = max(2, round(max(short_side, IMAGENET_C_SIZE) / IMAGENET_C_SIZE / factor))
        sizes.append(max(b, sizes[-1] + 1) if sizes else b)
    return tuple(sizes)


@_register("pixelate", "low resolution: block averages shown as blocks")
def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    b = pixelate_block_sizes(min(h, w))[severity - 1]
    hp, wp = -(-h // b) * b, -(-w // b) * b
    padded = np.pad(x, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    blocks = padded.reshape(hp // b, b, wp // b, b, x.shape[2]).mean(axis=(1, 3))
    return np.repeat(np.repeat(blocks, b, axis=0), b, axis=1)[:h, :w]


# ---- timing ----------------------------------------------------------------------------------------------
@_register("rolling_shutter", "rolling-shutter skew and wobble (rows read out while the camera turns)")
def rolling_shutter(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    sign = rng.choice([-1.0, 1.0])
    phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.0)
    skew, wobble = ROLLING_SHUTTER[severity - 1]
    t = np.linspace(-0.5, 0.5, h, dtype=np.float32)
    shift = w * (sign * skew * t + wobble * np.sin(2 * np.pi * cycles * t + phase))
    map_x = np.arange(w, dtype=np.float32)[None, :] + shift[:, None].astype(np.float32)
    map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    return cv2.remap(x, map_x, np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(x.shape)


@_register("frame_delay", "the camera delivers an old frame (latency); needs the history frames")
def frame_delay(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    if ctx.history is None:
        raise ValueError("frame_delay needs the earlier frames of the camera: pass history=[oldest, ..., previous] "
                         "(apply_to_agent_input does this from AgentInput.cameras)")
    frames = [x] + [_as_float(f) for f in reversed(ctx.history)]  # frames[k] = k frames ago
    delay = FRAME_DELAY_S[severity - 1] / ctx.frame_interval_s
    k0 = min(int(np.floor(delay)), len(frames) - 1)  # clamp to the oldest frame there is
    k1 = min(k0 + 1, len(frames) - 1)
    a = np.float32(delay - np.floor(delay)) if k1 > k0 else np.float32(0.0)
    for f in frames[k0], frames[k1]:
        if f.shape != x.shape:
            raise ValueError(f"frame_delay: history frame has shape {f.shape}, the image is {x.shape}")
    # between two frames: a cross-fade (no optical flow here), exact at whole-frame delays
    return frames[k0] * (1 - a) + frames[k1] * a


# ---- sensor failures -------------------------------------------------------------------------------------
@_register("dropped_camera", "dead camera: black frames for the whole scene (probability grows with severity)")
def dropped_camera(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    dead = rng.random() < DROP_PROBABILITY[severity - 1]  # one draw per camera and scene: all frames agree
    return np.zeros_like(x) if dead else x


def drift_rotation(severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation ``R`` (3x3) of a drifted camera: random axis, angle ``DRIFT_ANGLE_DEG[severity-1]``.

    Convention: a point in the nominal camera frame ``X_n`` is ``X_d = R @ X_n`` in the drifted camera frame.
    The axis is drawn first and the same for every severity, so one seed drifts the same way, only further.
    """
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    rvec = axis * np.deg2rad(DRIFT_ANGLE_DEG[severity - 1])
    return cv2.Rodrigues(rvec.reshape(3, 1))[0]


def drift_homography(intrinsics: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``H = K R K^-1``: maps a nominal pixel (homogeneous) to where the drifted camera sees the same ray."""
    k = np.asarray(intrinsics, dtype=np.float64)
    return k @ np.asarray(rotation, dtype=np.float64) @ np.linalg.inv(k)


@_register("calibration_drift", "camera rotated by a small unknown angle; the planner keeps the nominal calibration")
def calibration_drift(x: np.ndarray, severity: int, rng: np.random.Generator, ctx: CorruptionContext) -> np.ndarray:
    h, w = x.shape[:2]
    rotation = drift_rotation(severity, rng)
    if ctx.rerender is not None:  # a synthetic scene rendered again from the drifted pose: no black borders
        out = _as_float(np.asarray(ctx.rerender(rotation)))
        if out.shape != x.shape:
            raise ValueError(f"calibration_drift: rerender returned shape {out.shape}, expected {x.shape}")
        return out
    hom = drift_homography(_intrinsics(ctx, h, w), rotation)
    return cv2.warpPerspective(x, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0).reshape(x.shape)


# ---- public entry points ---------------------------------------------------------------------------------
def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise TypeError(f"image dtype {image.dtype} not supported: pass uint8 (0..255) or float (0..1) RGB")


def _like(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if reference.dtype == np.uint8:
        return _to_uint8(x)
    return np.clip(x, 0.0, 1.0).astype(reference.dtype, copy=False)


def make_rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator seeded from ``seed`` and any strings / ints (stable across processes, unlike ``hash``)."""
    words = [int(seed) & 0xFFFFFFFF]
    for key in keys:
        digest = hashlib.sha256(str(key).encode()).digest()
        words.extend(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def corrupt(image: np.ndarray, name: str, severity: int, *, seed: int = 0, rng: np.random.Generator | None = None,
            noise_rng: np.random.Generator | None = None, depth: np.ndarray | None = None,
            history: Sequence[np.ndarray] | None = None, intrinsics: np.ndarray | None = None,
            frame_interval_s: float = NAVSIM_FRAME_INTERVAL_S,
            rerender: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Corrupt one RGB image.

    Args:
        image: ``HxWx3`` RGB, uint8 (0..255) or float (0..1).
        name: a name of :data:`CORRUPTIONS` or ``"none"``.
        severity: 0 (identity) .. 5.
        seed: seeds ``rng`` and ``noise_rng`` when they are not given (a given ``rng`` also serves as
            ``noise_rng``).
        rng, noise_rng, depth, history, intrinsics, frame_interval_s, rerender: see :class:`CorruptionContext`.

    Returns:
        a new array with the shape and dtype of ``image``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"corrupt: expected an HxWx3 RGB image, got shape {image.shape}")
    if name != "none" and name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; choose one of: none, {', '.join(corruption_names())}")
    if not (isinstance(severity, (int, np.integer)) and 0 <= severity <= MAX_SEVERITY):
        raise ValueError(f"corruption severity must be an integer 0..{MAX_SEVERITY}, got {severity!r}")
    if name == "none" or severity == 0:
        return image.copy()
    if noise_rng is None:  # per-frame noise: from the given rng, else its own stream of the seed
        noise_rng = rng if rng is not None else make_rng(seed, "noise")
    rng = rng if rng is not None else make_rng(seed)
    ctx = CorruptionContext(noise_rng=noise_rng,
                            depth=depth, history=history, intrinsics=intrinsics,
                            frame_interval_s=frame_interval_s, rerender=rerender)
    x = _as_float(image)
    if not np.all(np.isfinite(x)):
        raise ValueError("corrupt: image contains NaN or inf")
    out = CORRUPTIONS[name].fn(x, int(severity), rng, ctx)
    return _like(out.reshape(image.shape), image)


# ---- NAVSIM AgentInput -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorruptionConfig:
    """Typed view of ``configs/corruption/*.yaml``: ``name``, ``severity``, ``cameras`` ("all" or names), ``seed``."""

    name: str = "none"
    severity: int = 0
    cameras: tuple[str, ...] = CAMERA_NAMES
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Any) -> CorruptionConfig:
        """From a DictConfig, a mapping, a :class:`CorruptionConfig` or anything with those attributes."""
        if isinstance(cfg, CorruptionConfig):
            return cfg
        if cfg is None:
            return cls()
        fields = {}
        for key in ("name", "severity", "cameras", "seed"):
            if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
                if key in cfg:
                    fields[key] = cfg[key]
            elif hasattr(cfg, key):
                fields[key] = getattr(cfg, key)
        name = str(fields.get("name", "none"))
        if name != "none" and name not in CORRUPTIONS:
            raise KeyError(f"corruption.name={name!r} is unknown; choose one of: none, {', '.join(corruption_names())}")
        severity = int(fields.get("severity", 0))
        if not 0 <= severity <= MAX_SEVERITY:
            raise ValueError(f"corruption.severity must be 0..{MAX_SEVERITY}, got {severity}")
        cams = fields.get("cameras", "all")
        if cams is None or (isinstance(cams, str) and cams == "all"):
            cameras = CAMERA_NAMES
        else:
            cameras = tuple(str(c).lower() for c in ([cams] if isinstance(cams, str) else cams))
            bad = [c for c in cameras if c not in CAMERA_NAMES]
            if bad:
                raise KeyError(f"corruption.cameras has unknown camera(s) {bad}; use 'all' or names of {CAMERA_NAMES}")
        return cls(name=name, severity=severity, cameras=cameras, seed=int(fields.get("seed", 0)))

    @property
    def active(self) -> bool:
        return self.name != "none" and self.severity > 0


def _replace(obj: Any, **changes: Any) -> Any:
    """A shallow copy of a dataclass (or plain object) with some fields changed."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **changes)
    new = copy.copy(obj)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


DepthFn = Callable[[str, int], "np.ndarray | None"]
RerenderFn = Callable[[str, int, np.ndarray], np.ndarray]


RASTER_CORRUPTIONS = ("fog", "calibration_drift")  # the ones that use a scene's depth / re-render


def apply_to_agent_input(agent_input: Any, cfg_corruption: Any, seed_key: str = "", *,
                         depth_fn: DepthFn | None = None, rerender_fn: RerenderFn | None = None) -> Any:
    """A copy of a NAVSIM ``AgentInput`` whose camera images are corrupted.

    Args:
        agent_input: ``AgentInput`` with ``cameras: list[Cameras]`` over the history frames (oldest first).
        cfg_corruption: the ``corruption`` config (``name``, ``severity``, ``cameras``, ``seed``).
        seed_key: usually the scene token; the parameters of each camera are seeded from
            ``(seed, seed_key, camera)`` and so are the same for every history frame of the scene.
        depth_fn: optional ``depth_fn(camera_name, frame_index) -> HxW depth | None`` (depth-aware fog).
        rerender_fn: optional ``rerender_fn(camera_name, frame_index, R) -> image`` (calibration drift on
            synthetic scenes rendered from the drifted pose). ``navsim_agents.data.scene_raster`` builds both
            from a NAVSIM scene.

    Returns:
        a new ``AgentInput``; corrupted cameras are new ``Camera`` objects with a new ``image`` and the *same*
        calibration (rotation, translation, intrinsics, distortion): the planner keeps the nominal calibration.
        Cameras without an image (not loaded) are left as they are. The input is not modified.
    """
    cfg = CorruptionConfig.from_cfg(cfg_corruption)
    frames = list(agent_input.cameras)
    if not cfg.active:
        return _replace(agent_input, cameras=frames)
    new_frames = list(frames)
    for cam_name in cfg.cameras:
        clean = [getattr(f, cam_name, None) for f in frames]
        history: list[np.ndarray] = []
        for i, camera in enumerate(clean):
            if camera is None or getattr(camera, "image", None) is None:
                continue
            image = np.asarray(camera.image)
            rerender = None
            if rerender_fn is not None:
                rerender = functools.partial(rerender_fn, cam_name, i)
            out = corrupt(image, cfg.name, cfg.severity,
                          rng=make_rng(cfg.seed, seed_key, cam_name),
                          noise_rng=make_rng(cfg.seed, seed_key, cam_name, f"frame{i}"),
                          depth=depth_fn(cam_name, i) if depth_fn is not None else None,
                          history=list(history), intrinsics=getattr(camera, "intrinsics", None),
                          rerender=rerender)
            history.append(image)
            new_frames[i] = _replace(new_frames[i], **{cam_name: _replace(camera, image=out)})
    return _replace(agent_input, cameras=new_frames)


# ---- gallery ---------------------------------------------------------------------------------------------
def procedural_road_scene(width: int = 960, height: int = 540, *, ego_forward_m: float = 0.0,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A drawn front-camera road scene (sky, road, lane marks, cars, buildings) with its depth map.

    ``ego_forward_m`` moves the camera along the road (earlier frames of a driving ego: negative values).
    Returns ``(image HxWx3 uint8 RGB, depth HxW float32 metres with inf for sky, intrinsics 3x3)``.
    """
    rng = np.random.default_rng(seed)
    k = _default_intrinsics(height, width)
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    img = np.zeros((height, width, 3), np.float32)
    depth = np.full((height, width), np.inf, np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None]
    sky_t = np.clip(rows / max(cy, 1), 0, 1)
    img[:] = (np.array([0.35, 0.55, 0.85]) * (1 - sky_t[..., None]) + np.array([0.8, 0.85, 0.9]) * sky_t[..., None])
    below = rows[:, 0] > cy + 0.5
    ground_z = CAMERA_HEIGHT_M * f / np.maximum(rows[:, 0] - cy, 1e-3)
    img[below] = np.array([0.33, 0.45, 0.25], np.float32)  # grass verge
    depth[below] = ground_z[below, None]

    def project(points: np.ndarray) -> np.ndarray:  # (n, 3) X right, Y down, Z forward (camera frame)
        z = np.maximum(points[:, 2], 0.5)
        return np.stack([cx + f * points[:, 0] / z, cy + f * points[:, 1] / z], 1)

    def quad(points: np.ndarray, colour: Sequence[float], z: float | None = None) -> None:
        poly = np.round(project(points) * 16).astype(np.int32)[None]  # 4 fractional bits
        cv2.fillPoly(img, poly, tuple(float(c) for c in colour), lineType=cv2.LINE_AA, shift=4)
        if z is not None:
            cv2.fillPoly(depth, poly, float(z), shift=4)

    y0, far, z0 = CAMERA_HEIGHT_M, 200.0, 1.0
    quad(np.array([[-7, y0, z0], [7, y0, z0], [7, y0, far], [-7, y0, far]]), (0.3, 0.3, 0.32))  # road
    for xl in (-7.0, 7.0):
        quad(np.array([[xl - 0.15, y0, z0], [xl + 0.15, y0, z0], [xl + 0.15, y0, far], [xl - 0.15, y0, far]]),
             (0.9, 0.9, 0.9))
    dash0 = -(ego_forward_m % 6.0)
    for zs in np.arange(dash0 + 2.0, far, 6.0):  # dashed centre line moves with the ego
        quad(np.array([[-0.12, y0, zs], [0.12, y0, zs], [0.12, y0, zs + 3], [-0.12, y0, zs + 3]]),
             (0.95, 0.85, 0.3))
    objects = []
    for side in (-1, 1):  # buildings along both sides
        z = 10.0
        while z < 160:
            length, tall = rng.uniform(8, 18), rng.uniform(6, 25)
            objects.append(("box", side * rng.uniform(12, 16), z, length, tall, rng.uniform(0.3, 0.8, 3)))
            z += length + rng.uniform(2, 8)
    for lane_x, z, colour in ((3.5, 18.0, (0.7, 0.1, 0.1)), (-3.5, 30.0, (0.1, 0.2, 0.6)),
                              (3.5, 45.0, (0.85, 0.85, 0.85)), (-3.5, 9.0, (0.15, 0.15, 0.15))):
        objects.append(("car", lane_x, z, 4.5, 1.6, np.array(colour)))
    for kind, ox, oz, length, tall, colour in sorted(objects, key=lambda o: -o[2]):  # painter: far to near
        zn, zf = oz - ego_forward_m, oz + length - ego_forward_m
        if zf < 1.0:
            continue
        zn = max(zn, 1.0)
        half = 0.9 if kind == "car" else 0.0
        xa, xb = ox - half, ox + half
        if kind == "car":
            quad(np.array([[xa, y0 - tall, zn], [xb, y0 - tall, zn], [xb, y0, zn], [xa, y0, zn]]), colour, zn)
            side_x = xa if ox > 0 else xb
            quad(np.array([[side_x, y0 - tall, zn], [side_x, y0 - tall, zf], [side_x, y0, zf], [side_x, y0, zn]]),
                 colour * 0.7, (zn + zf) / 2)
        else:
            quad(np.array([[ox, y0 - tall, zn], [ox, y0 - tall, zf], [ox, y0, zf], [ox, y0, zn]]), colour,
                 (zn + zf) / 2)
    return _to_uint8(img), depth, k


GalleryImage = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None", "list[np.ndarray] | None", str]
"""(image, depth, intrinsics, history, description) of the gallery's camera image."""


def procedural_gallery_image() -> GalleryImage:
    """The drawn road scene with its depth and three history frames (ego at 10 m/s, 2 Hz)."""
    image, depth, k = procedural_road_scene()
    history = [procedural_road_scene(ego_forward_m=-5.0 * j)[0] for j in (3, 2, 1)]
    return image, depth, k, history, "procedural road scene (depth-aware fog)"


def gallery(image: np.ndarray, *, depth: np.ndarray | None = None, intrinsics: np.ndarray | None = None,
            history: Sequence[np.ndarray] | None = None, names: Sequence[str] | None = None,
            thumb_width: int = 320, seed: int = 0) -> np.ndarray:
    """A grid (uint8 RGB): one row per corruption, columns severity 0..5, labelled."""
    names = list(names or corruption_names())
    h, w = image.shape[:2]
    tw = thumb_width
    th = round(h * tw / w)
    label_w, head_h = 150, 24
    grid = np.full((head_h + len(names) * th, label_w + (MAX_SEVERITY + 1) * tw, 3), 255, np.uint8)
    for s in range(MAX_SEVERITY + 1):
        cv2.putText(grid, f"severity {s}", (label_w + s * tw + 8, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for row, name in enumerate(names):
        y = head_h + row * th
        cv2.putText(grid, name, (6, y + th // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for s in range(MAX_SEVERITY + 1):
            if name == "frame_delay" and history is None:
                out = image.copy()
                note = "needs history"
            else:
                out = corrupt(image, name, s, seed=seed, depth=depth, intrinsics=intrinsics, history=history)
                note = ""
            thumb = cv2.resize(out, (tw, th), interpolation=cv2.INTER_AREA)
            if note:
                cv2.putText(thumb, note, (6, th - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
            grid[y:y + th, label_w + s * tw:label_w + (s + 1) * tw] = thumb
    return grid


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m rap_backbone.corruptions",
         sources: Mapping[str, Callable[[], GalleryImage]] | None = None) -> None:
    """The gallery / list CLI. ``sources``: named default images for ``show`` (the first is the default);
    ``navsim_agents.corruption_gallery`` adds the synthetic world's camera images."""
    sources = dict(sources or {"procedural": procedural_gallery_image})
    parser = argparse.ArgumentParser(prog=prog, description="Driving corruptions: gallery and list.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="write a PNG grid of every corruption x severity on one camera image")
    show.add_argument("--image", type=Path, help="camera image (default: the --source image)")
    show.add_argument("--out", type=Path, default=Path("corruptions_gallery.png"))
    show.add_argument("--source", choices=list(sources), default=next(iter(sources)),
                      help="default image when no --image is given")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--thumb-width", type=int, default=320)
    show.add_argument("--names", nargs="*", help="subset of corruptions (default: all)")
    sub.add_parser("list", help="print the registered corruptions")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in corruption_names():
            print(f"{name:20s} {CORRUPTIONS[name].description}")
        return
    history = depth = k = None
    if args.image is not None:
        bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {args.image}: give a JPEG/PNG camera image")
        image, source = bgr[..., ::-1].copy(), str(args.image)
    else:
        image, depth, k, history, source = sources[args.source]()
    grid = gallery(image, depth=depth, intrinsics=k, history=history, names=args.names,
                   thumb_width=args.thumb_width, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), grid[..., ::-1]):
        raise OSError(f"could not write {args.out}")
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}) from {source}")


if __name__ == "__main__":
    main()
