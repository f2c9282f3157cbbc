"""Loaders of the bundled demo models (offline, from ``assets/``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dsas_core.errors import DsasError
from dsas_core.paths import assets_dir, require_checkout

RETRAIN = "Rebuild them with `OMP_NUM_THREADS=1 python -m dsas_diffusion.demo.train` (about an hour of one CPU core)."


def demo_sd_dir() -> Path:
    """Folder of the bundled text-to-image model (diffusers layout)."""
    return assets_dir() / "demo-sd"


def demo_clip_dir() -> Path:
    """Folder of the bundled open_clip model (``local-dir:`` layout)."""
    return assets_dir() / "demo-clip"


def _require(path: Path, files: tuple[str, ...]) -> None:
    if path.parent == assets_dir():  # the bundled folder, not one the caller named
        require_checkout("the bundled demo model")
    missing = [f for f in files if not (path / f).exists()]
    if missing:
        raise DsasError(f"The bundled demo model in {path} is missing {', '.join(missing)}. {RETRAIN}")


def load_demo_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None):
    """The tiny shapes-world ``StableDiffusionPipeline`` (32×32 images, safety checker off), loaded offline.

    Prompts look like ``"a red circle on a blue background"``; 20 steps at guidance 5 take well under a second on CPU.
    ``path`` overrides the bundled folder (e.g. the output of a training run).
    """
    from diffusers import StableDiffusionPipeline

    from ..loading import dtype_kwargs

    path = Path(path) if path is not None else demo_sd_dir()
    _require(path, ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), **dtype_kwargs(dtype), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_demo_clip(device: str | torch.device = "cpu", path: str | Path | None = None):
    """The tiny shapes-world open_clip model: ``(model, preprocess, tokenizer)``, loaded offline, in eval mode.

    Zero-shot prompts look like ``"a red shape"``, ``"a circle"``, ``"a blue background"`` or full captions.
    ``path`` overrides the bundled folder.
    """
    import open_clip

    path = Path(path) if path is not None else demo_clip_dir()
    _require(path, ("open_clip_config.json", "open_clip_model.safetensors"))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    return model.eval(), preprocess, tokenizer
