"""Acceptance figures of the bundled demo models, measured with the pixel oracles.

Example:

    OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.evaluate            # prints the figures
    python -m dsas_diffusion.demo.evaluate --seeds 10 --guidance 5 --json /tmp/demo_eval.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .world import ALL_COMBOS, COLOURS, HELD_OUT, SHAPES, caption, read_image, sample_batch


def generate(pipe, combos: list[tuple[str, str, str]], seeds: list[int], steps: int = 20, guidance: float = 5.0,
             batch: int = 48) -> list[np.ndarray]:
    """One image per (combo, seed) pair, in that order: uint8 (32, 32, 3) arrays. Seeded per image, so the
    result does not depend on the batch size."""
    jobs = [(c, s) for c in combos for s in seeds]
    device = pipe.unet.device
    out: list[np.ndarray] = []
    for i in range(0, len(jobs), batch):
        part = jobs[i: i + batch]
        gens = [torch.Generator("cpu").manual_seed(s) for _, s in part]
        lat = torch.stack([torch.randn((4, 16, 16), generator=g) for g in gens]).to(device, pipe.unet.dtype)
        res = pipe([caption(*c) for c, _ in part], num_inference_steps=steps, guidance_scale=guidance,
                   latents=lat, output_type="np")
        out += list((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8))
    return out


def oracle_accuracy(images: list[np.ndarray], combos: list[tuple[str, str, str]]) -> dict[str, float]:
    """Fraction of images whose measured shape colour / kind / background match the prompted ones."""
    hits = np.array([[a == b for a, b in zip(read_image(img), combo)] for img, combo in zip(images, combos)])
    return {"colour": float(hits[:, 0].mean()), "shape": float(hits[:, 1].mean()),
            "background": float(hits[:, 2].mean()), "all_three": float(hits.all(1).mean())}


def evaluate_held_out(pipe, seeds_per_combo: int = 10, steps: int = 20, guidance: float = 5.0) -> dict[str, float]:
    """Oracle accuracy on generations of the held-out combinations (never seen in training)."""
    seeds = list(range(seeds_per_combo))
    combos = list(HELD_OUT)
    images = generate(pipe, combos, seeds, steps, guidance)
    acc = oracle_accuracy(images, [c for c in combos for _ in seeds])
    return {**acc, "n": len(images)}


def time_one_image(pipe, steps: int = 20, guidance: float = 5.0, repeats: int = 7) -> float:
    """Median seconds for one 32×32 image (batch of one prompt, CFG on)."""
    prompt = caption(*HELD_OUT[0])
    pipe(prompt, num_inference_steps=2, guidance_scale=guidance, output_type="np")  # warm-up
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
             generator=torch.Generator("cpu").manual_seed(i))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def clip_zero_shot(model, preprocess, tokenizer, n: int = 1000, seed: int = 123) -> dict[str, float]:
    """Zero-shot accuracy of the CLIP model on rendered images of every combination (held-out ones included):
    colour in the full caption (the 7 captions that differ only in the shape colour), colour alone ("a red shape" ...),
    kind ("a circle" ...), background ("a blue background" ...), full caption (among all 224)."""
    from PIL import Image

    imgs, scenes = sample_batch(np.random.default_rng(seed), n, ALL_COMBOS)
    x = torch.stack([preprocess(Image.fromarray(im)) for im in imgs])
    fi = model.encode_image(x, normalize=True)

    def pick(texts: list[str]) -> np.ndarray:
        ft = model.encode_text(tokenizer(texts), normalize=True)
        return (fi @ ft.T).argmax(1).numpy()

    full = [caption(*c) for c in ALL_COMBOS]
    # colour caption among full captions that differ only in the shape colour (shape and background as shown)
    ft_all = model.encode_text(tokenizer(full), normalize=True)
    sims = fi @ ft_all.T  # (n, len(ALL_COMBOS))
    col_hits = []
    for i, s in enumerate(scenes):
        cands = [j for j, (c, k, b) in enumerate(ALL_COMBOS) if k == s.shape and b == s.background]
        col_hits.append(ALL_COMBOS[max(cands, key=lambda j: float(sims[i, j]))][0] == s.colour)
    return {
        "colour_in_caption": float(np.mean(col_hits)),
        "colour": float(np.mean(pick([f"a {c} shape" for c in COLOURS]) == [COLOURS.index(s.colour) for s in scenes])),
        "shape": float(np.mean(pick([f"a {s}" for s in SHAPES]) == [SHAPES.index(s.shape) for s in scenes])),
        "background": float(np.mean(pick([f"a {c} background" for c in COLOURS]) == [COLOURS.index(s.background) for s in scenes])),
        "full_caption": float(np.mean(pick(full) == [full.index(s.caption) for s in scenes])),
        "n": n,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dsas_diffusion.demo.evaluate", description=__doc__.split("\n\n")[0],
                                epilog="example:\n  OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.evaluate --seeds 10",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds per held-out combination (24 combinations)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-threads", type=int, default=1, help="threads for the one-image timing (default 1: a conservative figure for 2 cores)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sd-dir", type=Path, help="evaluate this pipeline folder instead of assets/demo-sd")
    p.add_argument("--clip-dir", type=Path, help="evaluate this open_clip folder instead of assets/demo-clip")
    p.add_argument("--no-timing", action="store_true")
    a = p.parse_args(argv)
    from .loading import load_demo_clip, load_demo_pipeline

    torch.set_num_threads(a.threads)
    pipe = load_demo_pipeline(a.device, path=a.sd_dir)
    res: dict[str, object] = {"held_out": evaluate_held_out(pipe, a.seeds, a.steps, a.guidance),
                              "steps": a.steps, "guidance": a.guidance}
    print(f"held-out generations (n={res['held_out']['n']}, {a.steps} steps, guidance {a.guidance}): " +
          ", ".join(f"{k} {v:.1%}" for k, v in res["held_out"].items() if k != "n"), flush=True)
    res["clip_zero_shot"] = clip_zero_shot(*load_demo_clip(path=a.clip_dir))
    print("demo CLIP zero-shot on rendered images: " +
          ", ".join(f"{k} {v:.1%}" for k, v in res["clip_zero_shot"].items() if k != "n"), flush=True)
    if a.no_timing:
        return _dump(a.json, res)
    torch.set_num_threads(a.timing_threads)
    res["seconds_per_image"] = time_one_image(pipe, a.steps, a.guidance)
    print(f"one image ({a.steps} steps, CFG, {a.timing_threads} threads): {res['seconds_per_image']:.3f} s (median of 7)")
    _dump(a.json, res)


def _dump(path: Path | None, res: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
