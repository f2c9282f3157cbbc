"""A strength sweep as one picture: the same seed at several strengths, DSAS and plain steering in rows.

```python
from dsas_diffusion.sweep import labelled_grid, sweep_rows
run = lambda: pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
rows, _ = sweep_rows(pipe, {concept: 1.0}, [0, 1, 2], run)  # DSAS's row, then plain steering's
labelled_grid(rows, ["0", "1", "2"]).save("sweep.png")
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from dsas_core import Concept, DsasError
from dsas_core.sweep import scaled_runs, steering_rows

from .alpha import overlay
from .pipeline import steer

CORNER = "strength"  # the grid's top-left label: the headers are strengths


def sweep_images(pipe: Any, concepts: Mapping[Concept, float], values: Sequence[float],
                 generate: Callable[[], Image.Image], adaptive: bool = True,
                 record_alpha: bool = False) -> tuple[list[Image.Image], list[Image.Image]]:
    """(images, α overlays) from ``generate()`` at each of ``values``, every concept at its strength × the value,
    attached once (only the strengths move between images). ``adaptive=False``: plain steering (α ≡ 1). With
    ``record_alpha`` each image's α heat map over it (the first image's of a batch), else no overlays."""
    strengths = {concept.name: strength for concept, strength in concepts.items()}
    images, overlays = [], []
    with steer(pipe, dict(concepts), adaptive=adaptive, record_alpha=record_alpha) as handle:
        for _, image in scaled_runs(handle, strengths, values, generate):
            images.append(image)
            if record_alpha:  # this image's α only: the records were cleared before it
                overlays.append(overlay(image, handle.alpha_heatmap()[0]))
    return images, overlays


def sweep_rows(pipe: Any, concepts: Mapping[Concept, float], values: Sequence[float],
               generate: Callable[[], Image.Image], methods: Sequence[str] = ("DSAS", "plain"),
               record_alpha: bool = False) -> tuple[list[tuple[str, list[Image.Image]]], list[Image.Image]]:
    """``([(method, images)], α overlays)``: :func:`sweep_images` for each of ``methods`` ("DSAS", "plain"), ready
    for :func:`labelled_grid`. The image at 0 (the unsteered image) is made by the first method and shared by the
    others; α overlays (with ``record_alpha``) are the first method's."""
    adaptive = steering_rows(methods)
    zero = list(values).index(0.0) if 0.0 in values else None
    rows: list[tuple[str, list[Image.Image]]] = []
    overlays: list[Image.Image] = []
    for i, method in enumerate(methods):
        again = [v for v in values if v != 0.0] if i and zero is not None else list(values)
        images, alphas = sweep_images(pipe, concepts, again, generate, adaptive=adaptive[i],
                                      record_alpha=record_alpha and not i)
        if len(again) < len(values):
            images.insert(zero, rows[0][1][zero])
        rows.append((method, images))
        overlays = overlays or alphas
    return rows, overlays


def labelled_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], headers: Sequence[str],
                  cell: int | None = None) -> Image.Image:
    """One picture: each row's images side by side behind its label, ``headers`` above the columns (white bands,
    black text). Every image the size of the first; every row as long as ``headers``. ``cell``: each image resized
    to that many pixels on its longer side (nearest pixel when enlarging), else as it is."""
    if not rows or any(len(images) != len(headers) for _, images in rows):
        raise DsasError(f"a labelled grid needs rows of {len(headers)} images, one per header.")
    if cell is not None and cell < 1:
        raise DsasError(f"a grid cell must be at least 1 pixel, got {cell}.")
    width, height = size0 = rows[0][1][0].size
    if cell is not None:
        width, height = max(1, round(width * cell / max(size0))), max(1, round(height * cell / max(size0)))
    font = ImageFont.load_default(size=max(10, height // 8))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad = 4
    band = max(size(t)[1] for t in [*headers, CORNER]) + 2 * pad  # header band height
    margin = max(size(t)[0] for t in [*(label for label, _ in rows), CORNER]) + 2 * pad  # label band width
    grid = Image.new("RGB", (margin + width * len(headers), band + height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, pad), CORNER, fill="black", font=font)
    for c, text in enumerate(headers):
        draw.text((margin + c * width + (width - size(text)[0]) // 2, pad), text, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = band + r * height
        draw.text((pad, y + (height - size(label)[1]) // 2), label, fill="black", font=font)
        for c, image in enumerate(images):
            if image.size != size0:
                raise DsasError(f"grid images differ in size: {image.size} against {size0}.")
            if image.size != (width, height):
                enlarge = width > image.width
                image = image.resize((width, height), Image.NEAREST if enlarge else Image.LANCZOS)
            grid.paste(image.convert("RGB"), (margin + c * width, y))
    return grid
