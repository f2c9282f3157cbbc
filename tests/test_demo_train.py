"""The demo trainer: --help with an example, and checkpoints that resume to the same weights."""

from __future__ import annotations

import pytest
import torch

from dsas_diffusion.demo import train as T


def _args(tmp_path, **kw):
    a = T.parse_args(["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"), "--ckpt-every", "2"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_train_help_shows_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        T.parse_args(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "python -m dsas_diffusion.demo.train" in out and "--unet-steps" in out


def _interrupt_at(monkeypatch, call: int) -> None:
    """Make the trainer die inside the ``call``-th batch draw (KeyboardInterrupt), as a killed run would."""
    calls = {"n": 0}
    real = T.sample_batch

    def interrupted(rng, n, *rest):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(rng, n, *rest)

    monkeypatch.setattr(T, "sample_batch", interrupted)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def test_vae_stage_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    kw = dict(vae_steps=4, vae_batch=2)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full, sf_full = T.train_vae(_args(tmp_path / "a", **kw), tmp_path / "a")
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)  # dies in step 3, after the step-2 checkpoint
        with pytest.raises(KeyboardInterrupt):
            T.train_vae(_args(tmp_path / "b", **kw), tmp_path / "b")
    assert T.load_ckpt(tmp_path / "b" / "vae.safetensors")[1]["step"] == 2
    resumed, sf_resumed = T.train_vae(_args(tmp_path / "b", **kw), tmp_path / "b")
    assert _max_diff(full, resumed) == 0.0 and sf_full == sf_resumed


def test_unet_stage_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    kw = dict(vae_steps=1, vae_batch=2, unet_steps=4, unet_batch=2)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    vae, sf = T.train_vae(_args(tmp_path / "a", **kw), tmp_path / "a")
    full_unet, full_te = T.train_unet(_args(tmp_path / "a", **kw), tmp_path / "a", vae, sf)
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)
        with pytest.raises(KeyboardInterrupt):
            T.train_unet(_args(tmp_path / "b", **kw), tmp_path / "b", vae, sf)
    assert T.load_ckpt(tmp_path / "b" / "unet.safetensors")[1]["step"] == 2
    unet, te = T.train_unet(_args(tmp_path / "b", **kw), tmp_path / "b", vae, sf)
    assert _max_diff(full_unet, unet) == 0.0 and _max_diff(full_te, te) == 0.0
