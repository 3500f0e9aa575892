"""ToyShapes: a procedural, seeded 10-class data set of 32x32 RGB images.

The class fixes the kind of object; everything else varies per sample: the object's colour, position,
scale and rotation, and a textured background (a coloured sinusoidal grating plus smooth noise in a
second colour). Objects are rendered at 4x resolution and area-downsampled, so edges are anti-aliased
and images carry real high-frequency detail. Sample i of a data set with seed s depends only on (s, i).

Two versions differ only in how much of the image the object takes and how loud the background is:
- "v1": objects 0.45-0.8 of the half-width, centred within +-0.25, the grating 60% of the background mix.
  An object is 7-13 px across (4-6 tokens of a 16x16 grid), so a square and a triangle differ in a few
  corner tokens while most tokens spell out the grating; tiny generators learn the background first.
- "v2" (the default): objects 0.62-0.85 of the half-width within +-0.12 (10-14 px, 5-7 tokens), the
  grating 20% of the mix. Classes still differ only by shape, colours and poses vary as before, and the
  object's own detail (stripes, checks, anti-aliased edges, shading) still sits in the last scales.
The same (seed, index) draws the same colours, angle and background in both versions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ("disk", "square", "triangle", "plus", "ring", "striped_disk", "checker_square", "star", "crescent",
           "dumbbell")
NUM_CLASSES = len(CLASSES)
SIZE = 32
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Version:
    scale: tuple[float, float]  # object radius relative to the half-width of the image
    center: float  # the object's centre is uniform in [-center, center]^2
    grating: float  # the grating's share of the background mix (the rest is smooth noise)


VERSIONS = {"v1": Version(scale=(0.45, 0.8), center=0.25, grating=0.6),
            "v2": Version(scale=(0.62, 0.85), center=0.12, grating=0.2)}
DEFAULT_VERSION = "v2"


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], axis=-1)


def sample_params(seed: int, index: int, label: int, version: str = DEFAULT_VERSION) -> dict[str, np.ndarray | float]:
    """Every random choice of one sample, from a generator keyed by (seed, index)."""
    v = VERSIONS[version]
    rng = np.random.default_rng([seed, index, 7919])
    hue = rng.uniform()
    obj = _hsv_to_rgb(np.array(hue), np.array(rng.uniform(0.6, 1.0)), np.array(rng.uniform(0.75, 1.0)))
    bg_hue = (hue + rng.uniform(0.25, 0.75)) % 1.0  # background hue kept away from the object's
    bg1 = _hsv_to_rgb(np.array(bg_hue), np.array(rng.uniform(0.2, 0.6)), np.array(rng.uniform(0.15, 0.45)))
    bg2 = _hsv_to_rgb(np.array((bg_hue + 0.1) % 1.0), np.array(rng.uniform(0.2, 0.6)), np.array(rng.uniform(0.3, 0.6)))
    return {
        "label": label,
        "color": obj, "bg1": bg1, "bg2": bg2,
        "scale": rng.uniform(*v.scale),
        "angle": rng.uniform(0, 2 * math.pi),
        "center": rng.uniform(-v.center, v.center, size=2),
        "grating": v.grating,
        "grating_freq": rng.uniform(2.0, 6.0), "grating_angle": rng.uniform(0, math.pi),
        "grating_phase": rng.uniform(0, 2 * math.pi),
        "noise": rng.standard_normal((4, 4)),
    }


def _shape_mask(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of the object in its own frame (radius ~1), as float {0, 1}."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    name = CLASSES[label]
    if name == "disk":
        m = r < 1.0
    elif name == "square":
        m = (u.abs() < 0.8) & (v.abs() < 0.8)
    elif name == "triangle":
        m = (v > -0.6) & (v < 1.0 - 1.8 * u.abs())
    elif name == "plus":
        m = ((u.abs() < 0.3) & (v.abs() < 1.0)) | ((v.abs() < 0.3) & (u.abs() < 1.0))
    elif name == "ring":
        m = (r < 1.0) & (r > 0.6)
    elif name == "striped_disk":
        m = (r < 1.0) & (torch.sin(u * 3 * math.pi) > 0)
    elif name == "checker_square":
        m = (u.abs() < 0.9) & (v.abs() < 0.9) & ((torch.floor(u * 2.2) + torch.floor(v * 2.2)) % 2 == 0)
    elif name == "star":
        m = r < 0.45 + 0.5 * torch.clamp(torch.cos(5 * theta), min=0) ** 2
    elif name == "crescent":
        m = (r < 1.0) & (torch.sqrt((u - 0.45) ** 2 + v ** 2) > 0.75)
    elif name == "dumbbell":
        m = (torch.sqrt((u - 0.6) ** 2 + v ** 2) < 0.4) | (torch.sqrt((u + 0.6) ** 2 + v ** 2) < 0.4) \
            | ((u.abs() < 0.6) & (v.abs() < 0.12))
    else:  # pragma: no cover - CLASSES and this table are kept together
        raise ValueError(name)
    return m.float()


def render(params: dict) -> np.ndarray:
    """One sample's parameters -> float32 image [3, 32, 32] in [-1, 1]."""
    n = SIZE * SUPERSAMPLE
    lin = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    # background: a grating in one colour over smooth noise in another
    ga = params["grating_angle"]
    grating = 0.5 + 0.5 * torch.sin(params["grating_freq"] * math.pi * (x * math.cos(ga) + y * math.sin(ga))
                                     + params["grating_phase"])
    noise = torch.from_numpy(params["noise"]).view(1, 1, 4, 4)
    noise = F.interpolate(noise, size=(n, n), mode="bicubic", align_corners=True)[0, 0]
    w = params["grating"]
    mix = (w * grating + (1 - w) * torch.sigmoid(2 * noise)).clamp(0, 1)
    bg1 = torch.from_numpy(params["bg1"]).view(3, 1, 1)
    bg2 = torch.from_numpy(params["bg2"]).view(3, 1, 1)
    img = bg1 * (1 - mix) + bg2 * mix
    # object: rotate, scale and move the frame
    cx, cy = params["center"]
    a, s = params["angle"], params["scale"]
    u = ((x - cx) * math.cos(a) + (y - cy) * math.sin(a)) / s
    v = (-(x - cx) * math.sin(a) + (y - cy) * math.cos(a)) / s
    mask = _shape_mask(int(params["label"]), u, v)
    shade = 0.85 + 0.15 * (1 - torch.sqrt(u * u + v * v).clamp(max=1))  # slight shading: not a flat fill
    color = torch.from_numpy(params["color"]).view(3, 1, 1) * shade
    img = img * (1 - mask) + color * mask
    img = F.avg_pool2d(img.unsqueeze(0), SUPERSAMPLE)[0]
    return (img * 2 - 1).clamp(-1, 1).float().numpy()


def label_of(index: int, num_classes: int = NUM_CLASSES) -> int:
    """Class-balanced: sample i has class i mod 10."""
    return index % num_classes


class ToyShapes(torch.utils.data.Dataset):
    """`ToyShapes(seed, length, version)[i]` -> (image float32 [3, 32, 32] in [-1, 1], label)."""

    def __init__(self, seed: int = 0, length: int = 50_000, version: str = DEFAULT_VERSION):
        if version not in VERSIONS:
            raise ValueError(f"ToyShapes version {version!r} is not one of {sorted(VERSIONS)}")
        self.seed, self.length, self.version = int(seed), int(length), version

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        label = label_of(index)
        return torch.from_numpy(render(sample_params(self.seed, index, label, self.version))), label

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self[i] for i in range(start, start + count)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] [N, 3, H, W] -> uint8 [N, H, W, 3], by argen's one quantisation rule."""
    from accel.generator import to_uint8

    return to_uint8(x)
