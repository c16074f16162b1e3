"""The toy concept world: procedural 32x32 images of objects x styles.

Why procedural: the world must be regenerated bit for bit from a seed on any laptop, with no
download, so that the tiny text-to-image model and the classifier trained on it (and every
unlearning result measured with them) can be reproduced exactly.

An image is one object (its shape) drawn in one style (how its area is filled) on a plain
background; colour, size and position are jittered. Prompts follow UnlearnCanvas:
``A {object} image in {style} style.``
"""

from __future__ import annotations

import numpy as np

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
STYLES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "outline")
SIZE = 32
PROMPT_TEMPLATE = "A {object} image in {style} style."

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def prompt_for(obj: str, style: str) -> str:
    """The UnlearnCanvas-form prompt for one (object, style) pair."""
    return PROMPT_TEMPLATE.format(object=obj, style=style)


def all_prompts() -> list[tuple[str, str, str]]:
    """Every (object, style, prompt) of the world, objects outer, styles inner."""
    return [(o, s, prompt_for(o, s)) for o in OBJECTS for s in STYLES]


def _shape_mask(obj: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of a filled shape of 'radius' r centred at (cx, cy)."""
    dx, dy = _XX - cx, _YY - cy
    if obj == "circle":
        return dx * dx + dy * dy <= r * r
    if obj == "square":
        h = r * 0.85
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj == "triangle":
        # Upright isosceles triangle: apex at top, base at bottom.
        top, bottom = -r, r * 0.8
        t = (dy - top) / (bottom - top)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if obj == "cross":
        arm = r * 0.38
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if obj == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown object {obj!r}; known: {', '.join(OBJECTS)}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a (2k+1)-square, written out to avoid a scipy dependency."""
    out = mask.copy()
    padded = np.pad(mask, k, constant_values=False)
    for oy in range(-k, k + 1):
        for ox in range(-k, k + 1):
            out &= padded[k + oy : k + oy + SIZE, k + ox : k + ox + SIZE]
    return out


def _style_pattern(style: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where, inside the shape's mask, the foreground colour is painted."""
    if style == "solid":
        return mask
    if style == "striped":
        period = 6.0
        phase = rng.uniform(0, period)
        return mask & (((_XX + _YY + phase) % period) < period / 2)
    if style == "dotted":
        period = 4.0
        ox, oy = rng.uniform(0, period, size=2)
        fx = (_XX + ox) % period - period / 2
        fy = (_YY + oy) % period - period / 2
        return mask & (fx * fx + fy * fy <= 1.2**2)
    if style == "checkered":
        cell = 3
        ox, oy = rng.integers(0, 2 * cell, size=2)
        return mask & ((((_XX.astype(int) + ox) // cell) + ((_YY.astype(int) + oy) // cell)) % 2 == 0)
    if style == "outline":
        return mask & ~_erode(mask, 1)
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, mid-to-dark colour (distinct from the pale backgrounds)."""
    hue = rng.uniform(0, 1)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1)  # HSV with s = v = 1
    return rgb * rng.uniform(0.55, 0.9)


def render(obj: str, style: str, rng: np.random.Generator) -> np.ndarray:
    """One image as float32 HxWx3 in [0, 1]."""
    return render_with_mask(obj, style, rng)[0]


def render_with_mask(obj: str, style: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (as ``render``, the same random draws) and the object's exact filled shape as a
    boolean HxW mask (the region a segmenter of the object would return; methods that erase
    within a concept's segmentation mask, MACE, use it)."""
    r = rng.uniform(9.0, 12.5)
    cx, cy = rng.uniform(16 - 3.5, 16 + 3.5, size=2)
    bg = rng.uniform(0.82, 1.0, size=3).astype(np.float32)
    fg = _random_colour(rng).astype(np.float32)
    shape = _shape_mask(obj, cx, cy, r)
    paint = _style_pattern(style, shape, rng)
    img = np.where(paint[..., None], fg, bg)
    return img.astype(np.float32), shape


def sample(n: int, seed: int, objects=OBJECTS, styles=STYLES):
    """n random (image, object index, style index) triples, deterministic from seed.

    Returns images as uint8 (n, 32, 32, 3) and two int64 label arrays (indices into OBJECTS /
    STYLES). The labels are drawn uniformly from the given subsets.
    """
    rng = np.random.default_rng(seed)
    obj_idx = rng.integers(0, len(objects), size=n)
    sty_idx = rng.integers(0, len(styles), size=n)
    imgs = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        imgs[i] = np.round(render(objects[obj_idx[i]], styles[sty_idx[i]], rng) * 255)
    o = np.array([OBJECTS.index(objects[j]) for j in obj_idx], dtype=np.int64)
    s = np.array([STYLES.index(styles[j]) for j in sty_idx], dtype=np.int64)
    return imgs, o, s


def reference_images(obj: str | None, style: str | None, n: int, seed: int) -> np.ndarray:
    """n images of one concept (an object, a style, or a pair); the other factor varies."""
    objects = (obj,) if obj else OBJECTS
    styles = (style,) if style else STYLES
    return sample(n, seed, objects, styles)[0]
