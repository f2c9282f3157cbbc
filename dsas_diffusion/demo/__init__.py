"""The bundled "shapes world": procedural captioned images, pixel oracles, and tiny trained models.

``load_demo_pipeline()`` returns a 32×32 ``StableDiffusionPipeline`` and ``load_demo_clip()`` an open_clip model,
both trained on this world and loaded offline from ``assets/``. ``python -m dsas_diffusion.demo.train`` rebuilds
them; ``python -m dsas_diffusion.demo.evaluate`` prints their acceptance figures.
"""

from .loading import demo_clip_dir, demo_sd_dir, load_demo_clip, load_demo_pipeline
from .world import (
    BACKGROUNDS, COLOURS, HELD_OUT, PALETTE, SHAPES, TRAIN_COMBOS, Scene, caption, read_image, render, sample_scene,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "HELD_OUT", "PALETTE", "SHAPES", "TRAIN_COMBOS", "Scene", "caption", "demo_clip_dir",
    "demo_sd_dir", "load_demo_clip", "load_demo_pipeline", "read_image", "render", "sample_scene",
]
