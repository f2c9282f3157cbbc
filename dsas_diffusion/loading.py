"""Loading pipelines and prompt files for the CLI and the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dsas_core import DsasError
from dsas_core.errors import loading_failed
from dsas_core.files import prompt_lines, read_text


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(model: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """``"demo"`` (the bundled tiny model), a local diffusers folder, or a hub id (for users who can reach one)."""
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if model == "demo":
        from .demo import load_demo_pipeline

        return load_demo_pipeline(device=device, dtype=dtype)
    from diffusers import DiffusionPipeline

    local = Path(model).exists()
    if not local and (model.startswith((".", "/")) or model.count("/") != 1):
        raise DsasError(f"no pipeline at {model!r}: give 'demo', a local diffusers folder (with model_index.json), "
                        "or a hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'.")
    try:
        pipe = DiffusionPipeline.from_pretrained(model, local_files_only=local, **dtype_kwargs(dtype))
    except (OSError, ValueError) as err:
        raise loading_failed(f"the pipeline {model!r}", err, "Give 'demo', a hub id you can reach (e.g. "
                             "stable-diffusion-v1-5/stable-diffusion-v1-5) or a local diffusers folder holding "
                             "model_index.json") from None
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, torch.dtype | None]:
    """The dtype keyword of diffusers' ``from_pretrained``: ``dtype`` from diffusers 0.42 on (``torch_dtype``, the
    older name, then warns), ``torch_dtype`` before."""
    import diffusers

    new_api = tuple(int(x) for x in diffusers.__version__.split(".")[:2]) >= (0, 42)
    return {"dtype" if new_api else "torch_dtype": dtype}


def read_prompts(path: str | Path, what: str = "prompt") -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with '#' are ignored."""
    prompts = prompt_lines(read_text(path, what))
    if len(prompts) < 2:
        raise DsasError(f"{what} file {str(path)!r} holds {len(prompts)} prompt(s); give at least 2 (32 is a good "
                        "default).")
    return prompts
