"""Strength sweeps of DSAS against plain steering: images, scores, results files, Pareto plots, image grids.

For every strength λ, every prompt of the *steer* set (where the concept should act) and of the *control* set
(where nothing should change), and every seed, one image with DSAS and one with plain steering (α ≡ 1 at every
fitted site) from the same seed; λ = 0 is the shared unsteered image. Work items (set, prompt, seed) are split
across processes when launched with several (``torchrun --nproc_per_node 2 ...`` on CPU, ``accelerate launch`` on
GPUs) and gathered on the main process.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from dsas_core import Concept, DsasError
from dsas_core.files import write_json
from dsas_core.plots import Axis, Panel, plot_panels

from .pipeline import steer
from .scoring import ClipScorer, OracleTarget, read_attributes, unchanged_fraction

METHODS = ("dsas", "plain")
FIELDS = ["method", "strength", "set", "prompt_index", "prompt", "seed", "process", "seconds", "image_digest", "clip_concept",
          "clip_prompt", "clip_image_sim", "oracle_hit", "oracle_unchanged"]


@dataclass
class EvalSettings:
    """What one evaluation sweeps and how it generates."""

    strengths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    seeds: int = 1
    steps: int = 20
    guidance: float = 5.0
    batch_size: int = 16
    source_text: str | None = None
    target_text: str | None = None
    oracle: str | None = None  # e.g. "colour=blue": the shapes-world oracle's concept target


def _items(steer_prompts: list[str], control_prompts: list[str], seeds: int) -> list[tuple[str, int, str, int]]:
    """(set, prompt index, prompt, seed) for every image position of the sweep."""
    return [(name, i, p, s) for name, prompts in (("steer", steer_prompts), ("control", control_prompts))
            for i, p in enumerate(prompts) for s in range(seeds)]


def _generate(pipe: Any, items: list[tuple[str, int, str, int]], settings: EvalSettings) -> list[Image.Image]:
    """Images for ``items`` (one generator per image: results do not depend on how items are batched)."""
    out: list[Image.Image] = []
    for start in range(0, len(items), settings.batch_size):
        batch = items[start:start + settings.batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(1000 * seed + idx) for _, idx, _, seed in batch]
        result = pipe([p for _, _, p, _ in batch], num_inference_steps=settings.steps,
                      guidance_scale=settings.guidance, generator=gens)
        out.extend(result.images)
    return out


def sweep(pipe: Any, concept: Concept, steer_prompts: Sequence[str], control_prompts: Sequence[str],
          settings: EvalSettings, clip: ClipScorer | None = None, state: Any = None, keep_images: int = 4,
          progress: bool = True) -> tuple[list[dict[str, Any]], dict[tuple[str, float, str, int, int], Image.Image]]:
    """Generate and score the whole sweep on this process's share of the items.

    Returns (rows, images keyed by (method, strength, set, prompt index, seed)); only seed-0 images of the first
    ``keep_images`` prompts of each set are kept (for the grid). With ``state`` (an accelerate ``PartialState``),
    each process takes a disjoint share and the caller gathers the rows.
    """
    items = _items(list(steer_prompts), list(control_prompts), settings.seeds)
    process = 0
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(items) as share:
            items = list(share)
        process = state.process_index
    target = OracleTarget.parse(settings.oracle) if settings.oracle else None
    src_text = settings.source_text or concept.config.source_text
    tgt_text = settings.target_text or concept.config.target_text
    if clip is not None and not (src_text and tgt_text):
        raise DsasError("CLIP concept scores need --source-text and --target-text (or a concept fitted with them).")
    nonzero = [s for s in settings.strengths if s != 0.0]
    configs = [("none", 0.0)] + [(m, s) for s in nonzero for m in METHODS]
    rows: list[dict[str, Any]] = []
    images: dict[tuple[str, float, str, int, int], Image.Image] = {}
    base_emb = base_attr = None
    for method, strength in tqdm(configs, desc=f"evaluating {concept.name}", disable=not progress):
        start = time.perf_counter()
        if method == "none":
            imgs = _generate(pipe, items, settings)
        else:
            with steer(pipe, {concept: strength}, adaptive=(method == "dsas")):
                imgs = _generate(pipe, items, settings)
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        emb = clip.images(imgs) if clip is not None else None
        attrs = [read_attributes(im) for im in imgs] if target is not None else None
        if method == "none":
            base_emb, base_attr = emb, attrs
        concept_p = clip.zero_shot(emb, src_text, tgt_text) if clip is not None else None
        prompt_cos = clip.cosine(emb, clip.texts([p for _, _, p, _ in items])) if clip is not None else None
        for k, (set_name, idx, prompt, seed) in enumerate(items):
            if seed == 0 and idx < keep_images:
                images[(method, strength, set_name, idx, seed)] = imgs[k]
            row: dict[str, Any] = {"method": method, "strength": strength, "set": set_name, "prompt_index": idx,
                                   "prompt": prompt, "seed": seed, "process": process, "seconds": round(seconds, 4),
                                   "image_digest": hashlib.sha1(imgs[k].tobytes()).hexdigest()[:16]}
            if clip is not None:
                row |= {"clip_concept": float(concept_p[k]), "clip_prompt": float(prompt_cos[k]),
                        "clip_image_sim": float(clip.cosine(emb[k:k + 1], base_emb[k:k + 1])[0])}
            if target is not None:
                row |= {"oracle_hit": float(target.hit(attrs[k])),
                        "oracle_unchanged": unchanged_fraction(attrs[k], base_attr[k])}
            rows.append(row)
    return rows, images


# --------------------------------------------------------------------------------------------- summaries
def summarize(rows: list[dict[str, Any]], concept_key: str, preserve_key: str) -> dict[str, list[dict[str, float]]]:
    """Per method, one point per strength: mean concept score on the steer set, mean preservation on control.
    The unsteered λ = 0 point starts both curves."""
    def mean(method: str, strength: float, set_name: str, key: str) -> float:
        vals = [r[key] for r in rows if r["method"] == method and r["strength"] == strength and r["set"] == set_name]
        return sum(vals) / len(vals) if vals else math.nan

    strengths = sorted({r["strength"] for r in rows if r["method"] != "none"})
    curves: dict[str, list[dict[str, float]]] = {}
    for method in METHODS:
        points = [{"strength": 0.0, "concept": mean("none", 0.0, "steer", concept_key),
                   "preservation": mean("none", 0.0, "control", preserve_key)}]
        points += [{"strength": s, "concept": mean(method, s, "steer", concept_key),
                    "preservation": mean(method, s, "control", preserve_key)} for s in strengths]
        curves[method] = points
    return curves


def _interp(points: list[dict[str, float]], concept: float) -> float | None:
    """Preservation of a curve at a given concept score, interpolated linearly along λ; None outside its range."""
    for a, b in zip(points, points[1:]):
        lo, hi = sorted((a["concept"], b["concept"]))
        if lo <= concept <= hi:
            if hi == lo:
                return max(a["preservation"], b["preservation"])
            t = (concept - a["concept"]) / (b["concept"] - a["concept"])
            return a["preservation"] + t * (b["preservation"] - a["preservation"])
    return None


def compare(curves: dict[str, list[dict[str, float]]], keep: float = 0.95) -> dict[str, Any]:
    """The two acceptance figures: preservation gained at matched concept score, and the concept reach of DSAS
    while preserving at least ``keep``."""
    plain, dsas = curves["plain"], curves["dsas"]
    gains = []
    for p in plain[1:]:
        if p["concept"] <= plain[0]["concept"]:
            continue  # no concept change yet: nothing to match (any method keeps everything at λ = 0)
        d = _interp(dsas, p["concept"])
        if d is not None:
            gains.append({"concept": p["concept"], "plain": p["preservation"], "dsas": d, "gain": d - p["preservation"]})
    best_plain = max(p["concept"] for p in plain)
    reach = max((p["concept"] for p in dsas if p["preservation"] >= keep), default=math.nan)
    return {
        "matched": gains,
        "mean_gain_at_matched_concept": sum(g["gain"] for g in gains) / len(gains) if gains else math.nan,
        "best_plain_concept": best_plain,
        f"dsas_best_concept_keeping_{keep}": reach,
        "dsas_reach_ratio": reach / best_plain if best_plain > 0 else math.nan,
    }


Curves = dict[str, list[dict[str, float]]]  # per method ("dsas", "plain"): one point per strength


def score_curves(rows: list[dict[str, Any]], oracle: bool, clip: bool) -> dict[str, Curves]:
    """The curves of each score family that was measured: ``oracle`` (target reached / attributes kept) and
    ``clip`` (zero-shot concept score / image similarity to the unsteered image)."""
    scores = {}
    if oracle:
        scores["oracle"] = summarize(rows, "oracle_hit", "oracle_unchanged")
    if clip:
        scores["clip"] = summarize(rows, "clip_concept", "clip_image_sim")
    return scores


def verdicts(comparison: dict[str, dict[str, Any]]) -> list[str]:
    """One line per score family: preservation gained at matched concept score, and DSAS's reach."""
    return [f"[{family}] mean preservation gain at matched concept score: {cmp['mean_gain_at_matched_concept']:+.3f}; "
            f"DSAS reach at >=95% preserved: {cmp['dsas_reach_ratio']:.2f} of plain's best concept score"
            for family, cmp in comparison.items()]


# --------------------------------------------------------------------------------------------- outputs
def write_results(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``results.json`` (meta + rows + summaries) and ``results.csv`` (one row per image)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_json(out / "results.json", {**meta, "rows": rows})


def plot_pareto(curves_by_score: dict[str, dict[str, list[dict[str, float]]]], path: Path, title: str) -> None:
    """One panel per score family (oracle, CLIP): DSAS and plain steering of one concept."""
    names = {"plain": "plain steering", "dsas": "DSAS"}
    _plot({label: {names[m]: curves[m] for m in ("plain", "dsas")} for label, curves in curves_by_score.items()},
          path, title)


def plot_methods(curves: dict[str, list[dict[str, float]]], path: Path, title: str, label: str = "oracle") -> None:
    """Several methods' curves (e.g. plain, DSAS with two scalers, E2E-DSAS) in one Pareto plot."""
    _plot({label: curves}, path, title)


def _plot(panels: dict[str, dict[str, list[dict[str, float]]]], path: Path, title: str) -> None:
    """Concept score (y) against preservation (x), one panel per score family, one curve per method, λ labelled."""
    plot_panels([Panel(curves, Axis("preservation", f"preservation on control prompts ({label})"),
                       Axis("concept", f"concept score on steer prompts ({label})"))
                 for label, curves in panels.items()], path, title, size=(5.4, 4.4), dpi=110)


def image_grid(images: dict[tuple[str, float, str, int, int], Image.Image], strengths: list[float], path: Path,
               per_set: int = 3, cell: int = 64) -> None:
    """Rows: a few steer and control prompts (seed 0); columns: unsteered, then plain and DSAS at each λ ≠ 0."""
    nonzero = [s for s in strengths if s != 0.0]
    cols = [("none", 0.0)] + [("plain", s) for s in nonzero] + [("dsas", s) for s in nonzero]
    keys = sorted({(k[2], k[3]) for k in images if k[4] == 0}, key=lambda x: (x[0] != "steer", x[1]))
    rows = [k for k in keys if k[0] == "steer"][:per_set] + [k for k in keys if k[0] == "control"][:per_set]
    grid = Image.new("RGB", (cell * len(cols), cell * len(rows)), "white")
    for r, (set_name, idx) in enumerate(rows):
        for c, (method, s) in enumerate(cols):
            img = images.get((method, s, set_name, idx, 0))
            if img is not None:
                grid.paste(img.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, r * cell))
    grid.save(path)


def settings_dict(settings: EvalSettings) -> dict[str, Any]:
    """JSON-ready settings."""
    return asdict(settings)
