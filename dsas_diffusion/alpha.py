"""α heat maps as images: a colour map and an overlay on the generated picture."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def heat_colours(heat: Tensor) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8, black → red → yellow → white."""
    a = heat.detach().float().clamp(0, 1).cpu().numpy()
    rgb = np.stack([np.clip(3 * a, 0, 1), np.clip(3 * a - 1, 0, 1), np.clip(3 * a - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def heat_image(heat: Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """The heat map alone as a PIL image, resized (nearest) to ``size`` = (width, height) if given."""
    img = Image.fromarray(heat_colours(heat))
    return img.resize(size, Image.NEAREST) if size else img


def overlay(image: Image.Image, heat: Tensor, opacity: float = 0.6) -> Image.Image:
    """Blend the α heat map (h, w), upsampled bilinearly to the image, over ``image``."""
    up = torch.nn.functional.interpolate(heat.float()[None, None], size=(image.height, image.width), mode="bilinear",
                                         align_corners=False)[0, 0]
    colours = heat_colours(up).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = opacity * up.clamp(0, 1).cpu().numpy()[..., None]
    return Image.fromarray((base * (1 - weight) + colours * weight).round().astype(np.uint8))
