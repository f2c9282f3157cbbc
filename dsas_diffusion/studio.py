"""The logic behind the Gradio app, without gradio: concept registry, pipeline pool, steered generation.

Safety rules the app relies on: concepts are addressed by *name* only, and a name is looked up in the registry
(the bundled concepts plus the user's concept folder); uploads are validated (one JSON config + one safetensors
file, checked against the model) before they are saved under the concept's own name. Models are addressed by the
names given at launch. No function here takes a file path from a caller.
"""

from __future__ import annotations

import copy
import json
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from dsas_core import Concept, ConceptConfig, DsasError
from dsas_core.concept import CONFIG_NAME

from .alpha import overlay
from .pipeline import check_concept_fits, steer
from .sites import denoiser_of


# strengths the app and its API accept: the demo world's concepts act between λ = 2 and 12, real checkpoints
# mostly within ±2
MAX_STRENGTH = 16.0


class ConceptRegistry:
    """Concepts by name: read-only bundled folders plus one writable user folder (later folders win)."""

    def __init__(self, bundled: Sequence[Path], user_dir: Path) -> None:
        self.bundled = [Path(p) for p in bundled]
        self.user_dir = Path(user_dir)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[float, Concept]] = {}
        self._lock = threading.Lock()

    def _folders(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in [*self.bundled, self.user_dir]:
            if root.is_dir():
                for sub in sorted(root.iterdir()):
                    if (sub / CONFIG_NAME).is_file():
                        found[sub.name] = sub
        return found

    def names(self) -> list[str]:
        """Every available concept name, sorted."""
        return sorted(self._folders())

    def get(self, name: str) -> Concept:
        """The concept called ``name``; anything not in the registry (a path, say) is refused."""
        folders = self._folders()
        if not isinstance(name, str) or name not in folders:
            raise DsasError(f"unknown concept {name!r}: choose one of {sorted(folders)} (concepts are picked by "
                            "name from the app's concept folder, or uploaded).")
        path = folders[name]
        stamp = (path / CONFIG_NAME).stat().st_mtime
        with self._lock:
            hit = self._cache.get(name)
            if hit is None or hit[0] != stamp:
                hit = (stamp, Concept.from_pretrained(path))
                self._cache[name] = hit
        return hit[1]

    def check_new_name(self, name: str) -> bool:
        """Refuse a bundled concept's name for a new concept (it would hide the bundled one); True when a concept
        of the user folder has it (saving replaces that one)."""
        if any((root / name / CONFIG_NAME).is_file() for root in self.bundled):
            raise DsasError(f"{name!r} is the name of a bundled example concept: give the new concept another name.")
        return (self.user_dir / name / CONFIG_NAME).is_file()

    def add(self, concept: Concept) -> str:
        """Save a concept into the user folder under its own (validated) name; returns the name."""
        self.check_new_name(concept.name)
        concept.save_pretrained(self.user_dir / concept.name)
        return concept.name

    def add_upload(self, files: Sequence[str | Path], denoiser: torch.nn.Module) -> str:
        """Validate an uploaded concept (its JSON config and safetensors weights), check it fits ``denoiser``,
        then save it in the user folder. Returns the concept's name."""
        paths = [Path(f) for f in files or []]
        configs = [p for p in paths if p.suffix.lower() == ".json"]
        weights = [p for p in paths if p.suffix.lower() == ".safetensors"]
        others = [p.name for p in paths if p not in configs and p not in weights]
        if others or len(configs) != 1 or len(weights) != 1:
            raise DsasError(
                "upload exactly the two files of a saved concept: dsas_config.json and dsas_model.safetensors "
                f"(got {[p.name for p in paths]}). Other file types are refused."
            )
        try:
            data = json.loads(configs[0].read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            tensors = load_file(str(weights[0]))
        except (ValueError, UnicodeDecodeError, SafetensorError, OSError) as err:
            raise DsasError(f"the uploaded concept is not a valid dsas concept ({err}); upload the two files "
                            "written by save_pretrained / dsas fit.") from None
        concept = Concept.from_tensors(ConceptConfig.from_dict(data), tensors, source="the uploaded weights")
        check_concept_fits(concept, denoiser)
        return self.add(concept)


class PipelinePool:
    """Independent copies of one pipeline, so simultaneous requests never share hooks or strengths."""

    def __init__(self, pipe: Any, size: int) -> None:
        self.free: queue.Queue[Any] = queue.Queue()
        self.free.put(pipe)
        for _ in range(size - 1):
            self.free.put(copy.deepcopy(pipe))
        self.reference = pipe

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        """Check one copy out for the duration of a request."""
        pipe = self.free.get()
        try:
            yield pipe
        finally:
            self.free.put(pipe)


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


class Studio:
    """Models by launch name, a concept registry, and a cache of unsteered images."""

    def __init__(self, loaders: dict[str, Callable[[], Any]], registry: ConceptRegistry, workers: int = 2,
                 cache_size: int = 64) -> None:
        if not loaders:
            raise DsasError("the app needs at least one model (e.g. 'demo').")
        self.loaders = loaders
        self.registry = registry
        self.workers = workers
        self._pools: dict[str, PipelinePool] = {}
        self._lock = threading.Lock()
        self._unsteered: OrderedDict[tuple[Any, ...], Image.Image] = OrderedDict()
        self.cache_size = cache_size

    def models(self) -> list[str]:
        """Model names offered by the app."""
        return list(self.loaders)

    def pool(self, model: str) -> PipelinePool:
        """The pipeline pool of a launch-listed model (loaded on first use)."""
        if model not in self.loaders:
            raise DsasError(f"unknown model {model!r}: this app serves {self.models()} (add models at launch: "
                            "python app.py --model NAME).")
        with self._lock:
            if model not in self._pools:
                self._pools[model] = PipelinePool(self.loaders[model](), self.workers)
            return self._pools[model]

    def validate(self, req: Request) -> None:
        """Refuse out-of-range or malformed requests (API callers included)."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise DsasError("the prompt is empty: type what to draw, e.g. 'a red circle on a blue background'.")
        if not 1 <= int(req.steps) <= 200:
            raise DsasError(f"steps must be between 1 and 200, got {req.steps}.")
        if not 0 <= float(req.guidance) <= 30:
            raise DsasError(f"guidance must be between 0 and 30, got {req.guidance}.")
        for name, value in req.strengths.items():
            self.registry.get(name)
            if not -MAX_STRENGTH <= float(value) <= MAX_STRENGTH:
                raise DsasError(f"strength of {name!r} must be between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
                                f"got {value}.")

    def _run(self, pipe: Any, req: Request) -> Image.Image:
        gen = torch.Generator(device="cpu").manual_seed(int(req.seed))
        return pipe(req.prompt, negative_prompt=req.negative_prompt or None, num_inference_steps=int(req.steps),
                    guidance_scale=float(req.guidance), generator=gen).images[0]

    def unsteered(self, req: Request) -> Image.Image:
        """The image without steering (cached: a slider move does not recompute it)."""
        key = req.unsteered_key()
        with self._lock:
            if key in self._unsteered:
                self._unsteered.move_to_end(key)
                return self._unsteered[key]
        with self.pool(req.model).borrow() as pipe:
            image = self._run(pipe, req)
        with self._lock:
            self._unsteered[key] = image
            while len(self._unsteered) > self.cache_size:
                self._unsteered.popitem(last=False)
        return image

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

    def fit(self, model: str, source: str, target: str, control: str, name: str, transform: str, scaler: str,
            source_text: str = "", target_text: str = "") -> tuple[Concept, bool]:
        """Fit a concept from three newline-separated prompt lists and save it in the user folder; returns it and
        whether it replaced a concept of the user folder with its name."""
        from .fit import fit_concept

        def lines(text: str) -> list[str]:
            return [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.strip().startswith("#")]

        ConceptConfig(name=name, transform=transform, scaler=scaler, sites=["_"], site_widths={"_": 1})
        replaces = self.registry.check_new_name(name)  # before the work, not after it
        with self.pool(model).borrow() as pipe:
            concept = fit_concept(pipe, lines(source), lines(target), lines(control), transform=transform,
                                  scaler=scaler, name=name, source_text=source_text or None,
                                  target_text=target_text or None)
        self.registry.add(concept)
        return concept, replaces

    def export(self, name: str) -> list[str]:
        """Copies of a concept's two files in a fresh temporary folder, for download."""
        concept = self.registry.get(name)
        out = Path(tempfile.mkdtemp(prefix="dsas-concept-")) / concept.name
        concept.save_pretrained(out)
        return [str(p) for p in sorted(out.iterdir())]

    def concepts_for(self, model: str) -> list[str]:
        """Names of the registry's concepts that fit ``model`` (language-model concepts and others are left out)."""
        denoiser = self.denoiser(model)
        names = []
        for name in self.registry.names():
            try:
                check_concept_fits(self.registry.get(name), denoiser)
            except DsasError:
                continue
            names.append(name)
        return names

    def denoiser(self, model: str) -> torch.nn.Module:
        """The denoiser of a model (to check uploads against)."""
        return denoiser_of(self.pool(model).reference)

