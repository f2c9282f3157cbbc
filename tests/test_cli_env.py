"""`dsas env`: the versions and devices a bug report needs, as lines or JSON."""

import json
from importlib import metadata

import torch

from dsas_core import fused
from dsas_core.cli import main
from dsas_core.paths import assets_dir


def lines(capsys) -> dict[str, str]:
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("- ") for line in out)
    return {key: value.strip() for key, value in (line[2:].split(":", 1) for line in out)}


def test_env_names_each_library_version_the_devices_and_the_demo(capsys, monkeypatch):
    assert main(["env"]) == 0
    got = lines(capsys)
    assert got["torch"] == metadata.version("torch") and got["diffusers"] == metadata.version("diffusers")
    assert got["dsas-steer"] == metadata.version("dsas-steer") and got["torch threads"] == str(torch.get_num_threads())
    assert got["bundled demo"] == str(assets_dir())
    assert got["cuda"] == "not available (steering runs as torch ops on the CPU)"
    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == got

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two stand-in GPUs, the kernel on the second
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Stand-in {i}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(fused, "available", lambda device: device.index == 1)
    assert main(["env"]) == 0
    got = lines(capsys)
    assert "cuda" not in got
    assert got["cuda device 0"] == (
        "Stand-in 0, CUDA 13.0; one-kernel update: no (Triton missing or unusable: torch ops instead)")
    assert got["cuda device 1"] == "Stand-in 1, CUDA 13.0; one-kernel update: yes"
