"""The logic behind the Gradio app's image tabs, without gradio: steered generation, fitting, evaluations of DSAS
against plain steering, uploads.

Concepts are addressed by *name* in a :class:`dsas_core.registry.ConceptRegistry` (uploads validated there, then
checked against the denoiser here); models by the names given at launch. No function here takes a file path from
a caller.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dsas_core import Concept, DsasError
from dsas_core.files import prompt_lines, strength_list
from dsas_core.registry import MAX_STRENGTH, ConceptRegistry, StudioBase, check_strengths, check_sweep

from .alpha import overlay
from .evaluate import (Curves, EvalSettings, compare, image_grid, plot_pareto, score_curves, settings_dict, sweep,
                       verdicts, write_results)
from .pipeline import check_concept_fits, steer
from .scoring import load_clip
from .sites import denoiser_of
from .sweep import labelled_grid, sweep_rows

SWEEP_CELL = 128  # pixels: the app's sweep shows small images (the demo's 32²) enlarged, large ones at most twice this

__all__ = ["MAX_STRENGTH", "ConceptRegistry", "Request", "Result", "Studio"]  # the first two from dsas_core.registry


@dataclass
class Request:
    """Everything that determines an image."""

    model: str
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    plain: bool = False  # plain steering: α ≡ 1
    strengths: dict[str, float] = field(default_factory=dict)

    def unsteered_key(self) -> tuple[Any, ...]:
        return (self.model, self.prompt, self.negative_prompt, self.seed, self.steps, self.guidance)


@dataclass
class Result:
    """A steered image and where it was steered."""

    image: Image.Image
    heat: Image.Image | None  # α heat map over the image (the largest α of the concepts at each position)
    profile: list[tuple[str, str, float]]  # (concept, site, mean α)
    words: list[tuple[str, str, float]] = field(default_factory=list)  # prompt scaler: (concept, word, α it added)


@dataclass
class ImageEval:
    """One evaluation sweep: curves per score family and method, comparisons, verdict lines, the files written."""

    curves: dict[str, Curves]
    comparison: dict[str, dict[str, Any]]
    verdicts: list[str]
    files: list[str]  # pareto.png, grid.png, results.csv, results.json
    seconds: float


class Studio(StudioBase):
    """Text-to-image pipelines by launch name, a concept registry, and a cache of unsteered images."""

    default_scorers = ("demo", "ViT-L-14:openai")  # CLIPs for evaluations

    def validate(self, req: Request) -> None:
        """Refuse out-of-range or malformed requests (API callers included)."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise DsasError("the prompt is empty: type what to draw, e.g. 'a red circle on a blue background'.")
        if not 1 <= int(req.steps) <= 200:
            raise DsasError(f"steps must be between 1 and 200, got {req.steps}.")
        if not 0 <= float(req.guidance) <= 30:
            raise DsasError(f"guidance must be between 0 and 30, got {req.guidance}.")
        check_strengths(req.strengths, self.registry)

    def _run(self, pipe: Any, req: Request) -> Image.Image:
        gen = torch.Generator(device="cpu").manual_seed(int(req.seed))
        return pipe(req.prompt, negative_prompt=req.negative_prompt or None, num_inference_steps=int(req.steps),
                    guidance_scale=float(req.guidance), generator=gen).images[0]

    def unsteered(self, req: Request) -> Image.Image:
        """The image without steering (cached: a slider move does not recompute it)."""

        def run() -> Image.Image:
            with self.pool(req.model).borrow() as pipe:
                return self._run(pipe, req)

        return self.cached(req.unsteered_key(), run)

    def steered(self, req: Request) -> Result:
        """The image with every non-zero strength applied, its α heat map and per-site α profile."""
        active = {self.registry.get(n): float(v) for n, v in req.strengths.items() if float(v) != 0.0}
        if not active:
            return Result(self.unsteered(req), None, [], [])
        words: list[tuple[str, str, float]] = []
        with self.pool(req.model).borrow() as pipe:
            with steer(pipe, active, adaptive=not req.plain, record_alpha=True) as handle:
                image = self._run(pipe, req)
            for concept in active:  # re-reads the prompt with this worker's text encoders
                if concept.config.scaler == "prompt" and not req.plain:
                    words += [(concept.name, w, a) for w, a in handle.prompt_alpha(req.prompt, concept=concept.name)]
        heats, profile = [], []
        for concept in active:
            heats.append(handle.alpha_heatmap(concept.name)[0])
            for site, maps in handle.alpha_maps(concept.name)[concept.name].items():
                profile.append((concept.name, site, float(maps.mean())))
        heat = overlay(image, torch.stack(heats).amax(0))  # where any concept steered, as hard as the strongest
        return Result(image, heat, profile, words)

    def sweep(self, req: Request, values: str) -> Image.Image:
        """The Steer tab's strength sweep: the request's image with every strength set × each of ``values``
        (comma-separated; 0, the unsteered image, always among them), DSAS's row above plain steering's, as one
        labelled picture (each image at least :data:`SWEEP_CELL` pixels)."""
        concepts, strengths = self.sweep_plan(req.strengths, values)
        with self.pool(req.model).borrow() as pipe:
            rows, _ = sweep_rows(pipe, concepts, strengths, lambda: self._run(pipe, req))
        side = max(rows[0][1][0].size)
        return labelled_grid(rows, [f"{v:g}" for v in strengths], cell=max(SWEEP_CELL, min(side, 2 * SWEEP_CELL)))

    def fit(self, model: str, source: str, target: str, control: str, name: str, transform: str, scaler: str,
            source_text: str = "", target_text: str = "") -> tuple[Concept, bool]:
        """Fit a concept from three newline-separated prompt lists and save it in the user folder; returns it and
        whether it replaced a concept of the user folder with its name."""
        from .fit import fit_concept

        replaces = self.check_new(name, transform, scaler)  # before the work, not after it
        with self.pool(model).borrow() as pipe:
            lists = [prompt_lines(t or "") for t in (source, target, control)]
            concept = fit_concept(pipe, *lists, transform=transform, scaler=scaler, name=name,
                                  source_text=source_text or None, target_text=target_text or None)
        self.registry.add(concept)
        return concept, replaces

    def evaluate(self, model: str, concept: str, steer_prompts: str, control_prompts: str, strengths: str,
                 seeds: int = 1, steps: int = 20, clip: str = "", oracle: str = "", source_text: str = "",
                 target_text: str = "") -> ImageEval:
        """``dsas eval`` on text boxes: for every strength, images of the steer and control prompts (one per line)
        with DSAS and with plain steering, scored by ``clip`` ('demo' or ARCH:PRETRAINED) and/or the demo world's
        ``oracle`` (e.g. 'background=black'); the verdicts, a Pareto plot, an image grid and result files."""
        if not 1 <= int(seeds) <= 8 or not 1 <= int(steps) <= 200:
            raise DsasError(f"seeds must be between 1 and 8 and steps between 1 and 200, got {seeds} and {steps}.")
        clip, oracle = (clip or "").strip(), (oracle or "").strip()
        if not clip and not oracle:
            raise DsasError("nothing to score: give a CLIP ('demo' or ARCH:PRETRAINED such as ViT-L-14:openai) "
                            "and/or a demo-world oracle target (e.g. background=black).")
        steered = self.registry.get(concept)
        sets = {k: prompt_lines(v or "") for k, v in (("steer", steer_prompts), ("control", control_prompts))}
        empty = [k for k, v in sets.items() if not v]
        if empty:
            raise DsasError(f"no {' or '.join(empty)} prompts: give one prompt per line (steer: where the concept "
                            "should act; control: where nothing should change).")
        settings = EvalSettings(strengths=strength_list(strengths or "", "strengths", "0,1,2,4"), seeds=int(seeds),
                                steps=int(steps), source_text=source_text or None, target_text=target_text or None,
                                oracle=oracle or None)
        check_sweep(sets, settings.strengths)
        start = time.perf_counter()
        with self.pool(model).borrow() as pipe:
            check_concept_fits(steered, denoiser_of(pipe))
            scorer = self.scorer(clip, lambda: load_clip(clip, device=pipe.device)) if clip else None
            rows, images = sweep(pipe, steered, sets["steer"], sets["control"], settings, clip=scorer)
        seconds = time.perf_counter() - start
        curves = score_curves(rows, oracle=bool(oracle), clip=bool(clip))
        comparison = {k: compare(v) for k, v in curves.items()}
        out = Path(tempfile.mkdtemp(prefix="dsas-eval-"))
        plot_pareto(curves, out / "pareto.png", f"{steered.name}: DSAS vs plain steering")
        image_grid(images, settings.strengths, out / "grid.png")
        write_results(out, rows, {"concept": steered.name, "model": model, "clip": clip or None,
                                  "settings": settings_dict(settings), "seconds": round(seconds, 2),
                                  "curves": curves, "comparison": comparison})
        return ImageEval(curves, comparison, verdicts(comparison),
                         [str(out / n) for n in ("pareto.png", "grid.png", "results.csv", "results.json")], seconds)

    def checker(self, model: str) -> Callable[[Concept], object]:
        """Refuses a concept that does not fit the model's denoiser (language-model concepts among them)."""
        denoiser = self.denoiser(model)
        return lambda concept: check_concept_fits(concept, denoiser)

    def denoiser(self, model: str) -> torch.nn.Module:
        """The denoiser of a model (to check uploads against)."""
        return denoiser_of(self.pool(model).reference)

