"""A grid of demo generations of the held-out combinations: each row holds two combinations × ``--seeds`` seeds.

Example:

    OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.grid            # writes assets/demo_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dsas_core.paths import assets_dir

from .evaluate import generate
from .world import HELD_OUT


def make_grid(images: list[np.ndarray], cols: int, gap: int = 2, scale: int = 2) -> Image.Image:
    """Tile (32, 32, 3) uint8 images row by row, upscaled ``scale``× (nearest), on a grey canvas."""
    rows = (len(images) + cols - 1) // cols
    h, w = images[0].shape[:2]
    canvas = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = img
    big = Image.fromarray(canvas)
    return big.resize((big.width * scale, big.height * scale), Image.NEAREST)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dsas_diffusion.demo.grid", description=__doc__.split("\n\n")[0],
                                epilog="example:\n  OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.grid --seeds 4",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=assets_dir() / "demo_grid.png")
    p.add_argument("--seeds", type=int, default=4, help="images per held-out combination")
    p.add_argument("--guidance", type=float, default=5.0)
    a = p.parse_args(argv)
    from .loading import load_demo_pipeline

    torch.set_num_threads(1)
    combos = list(HELD_OUT)
    images = generate(load_demo_pipeline(), combos, list(range(a.seeds)), 20, a.guidance)
    grid = make_grid(images, cols=2 * a.seeds)
    grid.quantize(64, method=Image.Quantize.MEDIANCUT).save(a.out, optimize=True)  # flat colours: ~50 KB
    print(f"wrote {a.out} ({len(images)} images of the held-out combinations, 20 steps, guidance {a.guidance})")


if __name__ == "__main__":
    main()
