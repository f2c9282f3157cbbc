"""fit_concept(height=, width=): the fitting runs make images of that size, and the concept records it."""

import pytest

from dsas_core import DsasError
from dsas_core.cli import main
from dsas_diffusion import fit_concept
from tiny_diffusion import tiny_flux, tiny_sd, tiny_sd3

SOURCE = [f"a ripe yellow banana fruit beside a {t}" for t in ("cat", "dog", "house")]
TARGET = [f"a ripe green pear fruit beside a {t}" for t in ("cat", "dog", "house")]
CONTROL = [f"a plain photo of a {t} at night" for t in ("cat", "dog", "house")]


def _fit_seeing_latents(pipe, **size):
    """Fit with the prompt scaler; returns the concept and the latent input's shape at every denoiser call."""
    seen = []

    def see(module, args, kwargs):
        latent = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        seen.append(tuple(latent.shape))

    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    handle = denoiser.register_forward_pre_hook(see, with_kwargs=True)
    try:
        concept = fit_concept(pipe, SOURCE, TARGET, CONTROL, scaler="prompt", num_inference_steps=1, n_components=2,
                              progress=False, **size)
    finally:
        handle.remove()
    return concept, set(seen)


@pytest.mark.parametrize("build, latent", [
    (tiny_sd, lambda h, w: (6, 4, h // 2, w // 2)),  # CFG doubles the 3 prompts; the VAE downscales by 2
    (tiny_sd3, lambda h, w: (6, 4, h // 2, w // 2)),
    (tiny_flux, lambda h, w: (3, (h // 4) * (w // 4), 16)),  # 2×2 latent cells packed into one token
])
def test_the_fitting_runs_make_images_of_the_asked_size_and_the_concept_records_it(build, latent):
    pipe = build()
    concept, seen = _fit_seeing_latents(pipe, height=32, width=16)
    assert seen == {latent(32, 16)}
    assert (concept.config.fitted_on["height"], concept.config.fitted_on["width"]) == (32, 16)
    concept, seen = _fit_seeing_latents(pipe)  # the pipeline's default: 16×16 for the tiny pipelines
    assert seen == {latent(16, 16)}
    assert (concept.config.fitted_on["height"], concept.config.fitted_on["width"]) == (16, 16)


@pytest.mark.parametrize("build, size, multiple", [
    (tiny_sd, {"height": 15}, 8),  # not a multiple of the VAE's downscaling (2)
    (tiny_sd, {"height": 12}, 8),  # a multiple of it, but SD pipelines check multiples of 8
    (tiny_sd, {"width": 0}, 8),
    (tiny_sd, {"width": 16.0}, 8),
    (tiny_flux, {"height": 18}, 4),  # FLUX packs 2×2 latent cells: diffusers would round 18 down silently
    (tiny_sd3, {"width": 22}, 4),
])
def test_an_image_size_the_pipeline_cannot_make_is_refused_before_anything_runs(build, size, multiple):
    pipe = build()
    calls = []
    handle = (pipe.transformer if hasattr(pipe, "transformer") else pipe.unet).register_forward_pre_hook(
        lambda *a: calls.append(1))
    try:
        with pytest.raises(DsasError, match=rf"{next(iter(size))}=.*must be positive multiples of {multiple} "):
            fit_concept(pipe, SOURCE, TARGET, CONTROL, num_inference_steps=1, progress=False, **size)
    finally:
        handle.remove()
    assert calls == []


def test_dsas_fit_takes_the_image_size(tmp_path):
    tiny_sd().save_pretrained(tmp_path / "pipe")
    for name, prompts in (("src", SOURCE), ("tgt", TARGET)):
        (tmp_path / f"{name}.txt").write_text("\n".join(prompts) + "\n")
    assert main(["fit", "--model", str(tmp_path / "pipe"), "--source", str(tmp_path / "src.txt"), "--target",
                 str(tmp_path / "tgt.txt"), "--scaler", "constant", "--steps", "1", "--height", "24", "--width", "32",
                 "--out", str(tmp_path / "c")]) == 0
    from dsas_core import Concept

    fitted_on = Concept.from_pretrained(tmp_path / "c").config.fitted_on
    assert (fitted_on["height"], fitted_on["width"]) == (24, 32)
    assert main(["fit", "--model", str(tmp_path / "pipe"), "--source", str(tmp_path / "src.txt"), "--target",
                 str(tmp_path / "tgt.txt"), "--scaler", "constant", "--height", "25", "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()
