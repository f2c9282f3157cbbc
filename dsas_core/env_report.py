"""``dsas env``: what this installation runs on, to paste into a bug report — versions, devices, whether the
one-kernel GPU update can run, where the bundled demo is. Reads package versions from their metadata (nothing
but torch is imported)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

from . import fused
from .paths import assets_dir

PACKAGES = ("dsas-steer", "torch", "triton", "diffusers", "transformers", "accelerate", "safetensors",
            "open-clip-torch", "gradio", "huggingface-hub", "peft")


def version(package: str) -> str:
    """A distribution's installed version, or 'not installed'."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict[str, str]:
    """What ``dsas env`` prints, by label."""
    out = {"python": f"{platform.python_version()} ({sys.executable})", "platform": platform.platform()}
    out |= {name: version(name) for name in PACKAGES}
    out["torch threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            device = torch.device("cuda", i)
            kernel = "yes" if fused.available(device) else "no (Triton missing or unusable: torch ops instead)"
            name = torch.cuda.get_device_name(i)
            out[f"cuda device {i}"] = f"{name}, CUDA {torch.version.cuda}; one-kernel update: {kernel}"
    else:
        out["cuda"] = "not available (steering runs as torch ops on the CPU)"
    if torch.backends.mps.is_available():
        out["mps"] = "available (steering runs as torch ops)"
    out["bundled demo"] = str(assets_dir()) if assets_dir().is_dir() else (
        "not here: an installed package without the repository (the demo and the app ship with the clone)")
    out |= {key: os.environ[key] for key in ("HF_HUB_OFFLINE", "HF_HOME", "OMP_NUM_THREADS") if key in os.environ}
    return out
