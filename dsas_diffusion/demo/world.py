"""The "shapes world": a procedural renderer of captioned images and the pixel oracles that read them back.

An image is one flat-coloured shape on a flat-coloured background, e.g. "a red circle on a blue background".
Everything is exact: the renderer draws palette colours only (no anti-aliasing), keeps a 2-pixel background
frame around the shape, and is deterministic per seed.

Oracle rules (``read_background``, ``read_shape_colour``, ``read_shape_kind``, ``read_image``):

1. every pixel is snapped to its nearest palette colour (Euclidean RGB);
2. background = the most common snapped colour of the 2-pixel border frame;
3. shape colour = the most common snapped colour among the remaining pixels that differ from the background;
   (``None`` if fewer than ``MIN_SHAPE_PIXELS`` pixels differ: no shape was drawn);
4. shape kind = the shape mask (pixels snapped to the shape colour) is cropped to its bounding box, resampled to
   a 12×12 coverage grid and compared with the ideal 12×12 template of each kind; the nearest template (L2) wins.

The (colour, kind, background) combinations in ``HELD_OUT`` never appear in training; evaluation prompts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsas_core.errors import DsasError

IMAGE_SIZE = 32
BORDER = 2
MIN_SHAPE_PIXELS = 12

# name -> RGB; pairwise distances are large, so snapping to the nearest colour is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 230),
    "yellow": (245, 225, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 10),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUNDS: tuple[str, ...] = COLOURS  # same palette; never equal to the shape colour within one image
_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # (K, 3)

# Combinations never rendered for training: each colour appears 3× as shape colour and 3× as background,
# each kind 6×, so every word is learnt from other combinations and these test composition.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "blue"), ("red", "triangle", "white"), ("red", "cross", "green"),
    ("green", "square", "red"), ("green", "cross", "yellow"), ("green", "circle", "purple"),
    ("blue", "triangle", "orange"), ("blue", "square", "black"), ("blue", "cross", "white"),
    ("yellow", "circle", "black"), ("yellow", "square", "purple"), ("yellow", "triangle", "green"),
    ("purple", "cross", "orange"), ("purple", "triangle", "red"), ("purple", "square", "yellow"),
    ("orange", "circle", "green"), ("orange", "cross", "blue"), ("orange", "square", "white"),
    ("white", "triangle", "black"), ("white", "circle", "red"), ("white", "cross", "purple"),
    ("black", "square", "blue"), ("black", "triangle", "yellow"), ("black", "circle", "orange"),
)
_HELD_OUT_SET = frozenset(HELD_OUT)
ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS if b != c
)
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(x for x in ALL_COMBOS if x not in _HELD_OUT_SET)


@dataclass(frozen=True)
class Scene:
    """One image's content: shape colour, shape kind, background colour, centre (x, y) and half-size in pixels."""

    colour: str
    shape: str
    background: str
    cx: float
    cy: float
    r: float

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    """The training caption, e.g. ``"a red circle on a blue background"``."""
    return f"a {colour} {shape} on a {background} background"


def _check(colour: str, shape: str, background: str) -> None:
    for value, allowed, what in ((colour, COLOURS, "colour"), (shape, SHAPES, "shape"), (background, BACKGROUNDS, "background")):
        if value not in allowed:
            raise DsasError(f"Unknown {what} {value!r}: the shapes world knows {', '.join(allowed)}.")
    if colour == background:
        raise DsasError(f"Shape colour and background are both {colour!r}: the shape would be invisible; pick two colours.")


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of one shape; pixel centres are at integer + 0.5."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex up, base at the bottom; half-width grows from 0 to r
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":  # plus sign, arms one third of the width
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise DsasError(f"Unknown shape {shape!r}: the shapes world knows {', '.join(SHAPES)}.")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw a scene: uint8 array (size, size, 3)."""
    _check(scene.colour, scene.shape, scene.background)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = PALETTE[scene.background]
    img[shape_mask(scene.shape, scene.cx, scene.cy, scene.r, size)] = PALETTE[scene.colour]
    return img


def sample_scene(rng: np.random.Generator, combo: tuple[str, str, str] | None = None,
                 combos: tuple[tuple[str, str, str], ...] = TRAIN_COMBOS) -> Scene:
    """A random scene: a combination from ``combos`` (unless given), half-size 5-10 px, random position inside
    the border frame."""
    colour, shape, background = combo if combo is not None else combos[int(rng.integers(len(combos)))]
    r = float(rng.uniform(5.0, 10.0))
    lo, hi = BORDER + r + 0.5, IMAGE_SIZE - BORDER - r - 0.5
    cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    return Scene(colour, shape, background, cx, cy, r)


def sample_batch(rng: np.random.Generator, n: int, combos: tuple[tuple[str, str, str], ...] = TRAIN_COMBOS
                 ) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes rendered: uint8 (n, 32, 32, 3) and their scenes."""
    scenes = [sample_scene(rng, combos=combos) for _ in range(n)]
    return np.stack([render(s) for s in scenes]), scenes


# ---------------------------------------------------------------- oracles

_GRID = 12


def _coverage(mask: np.ndarray) -> np.ndarray:
    """Crop a boolean mask to its bounding box and resample to a (12, 12) coverage grid in [0, 1]."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    # area resampling by repeating each pixel 12 times, then block-averaging
    big = np.repeat(np.repeat(crop, _GRID, axis=0), _GRID, axis=1)
    return big.reshape(_GRID, h, _GRID, w).mean(axis=(1, 3))


def _templates() -> np.ndarray:
    """Ideal coverage grid of every kind, drawn large (96 px) then resampled: (n_shapes, 12, 12)."""
    big = 96
    return np.stack([_coverage(shape_mask(s, big / 2, big / 2, big / 2 - 1, size=big)) for s in SHAPES])


_TEMPLATES = _templates()


def snap(img: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of every pixel: (H, W) int array."""
    d = ((img.astype(np.float32)[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _border(idx: np.ndarray) -> np.ndarray:
    frame = np.ones(idx.shape, dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    return idx[frame]


def read_image(img: np.ndarray) -> tuple[str | None, str | None, str]:
    """(shape colour, shape kind, background) measured from an (H, W, 3) uint8 image; None where no shape is found."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise DsasError(f"Oracles read (H, W, 3) RGB images; got shape {img.shape}. Convert with np.asarray(pil.convert('RGB')).")
    idx = snap(img)
    bg = int(np.bincount(_border(idx), minlength=len(COLOURS)).argmax())
    inside = idx != bg
    if inside.sum() < MIN_SHAPE_PIXELS:
        return None, None, COLOURS[bg]
    fg = int(np.bincount(idx[inside], minlength=len(COLOURS)).argmax())
    cov = _coverage(idx == fg)
    kind = int(((_TEMPLATES - cov[None]) ** 2).sum(axis=(1, 2)).argmin())
    return COLOURS[fg], SHAPES[kind], COLOURS[bg]


def read_background(img: np.ndarray) -> str:
    """Background colour measured from pixels (oracle rule 2)."""
    return read_image(img)[2]


def read_shape_colour(img: np.ndarray) -> str | None:
    """Shape colour measured from pixels (oracle rule 3)."""
    return read_image(img)[0]


def read_shape_kind(img: np.ndarray) -> str | None:
    """Shape kind measured from pixels (oracle rule 4)."""
    return read_image(img)[1]
