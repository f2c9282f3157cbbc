"""The diffusion handle across pipeline calls: pipelines sharing the denoiser, pausing, maps of the last call."""

import numpy as np
import pytest
import torch

from dsas_core import DsasError
from dsas_core.paths import assets_dir
from dsas_diffusion import load_concept, steer
from dsas_diffusion.demo import load_demo_pipeline

CIRCLE, SQUARE = "a red circle on a white background", "a blue square on a yellow background"


@pytest.fixture(scope="module")
def demo():
    pipe = load_demo_pipeline()
    return pipe, load_concept(assets_dir() / "concepts" / "circles-on-black")


def run(pipe, prompt, **kwargs):
    image = pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(0), **kwargs).images[0]
    return np.asarray(image)


def test_an_img2img_pipeline_built_from_the_components_is_read_as_itself(demo):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe, concept = demo
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    init = pipe(CIRCLE, num_inference_steps=2, guidance_scale=7.5).images[0]  # the text-to-image call guided
    results = {}
    for attached in (pipe, i2i):
        with steer(attached, {concept: 3.0}, record_alpha=True) as handle:
            image = i2i([CIRCLE, SQUARE], image=[init, init], guidance_scale=1.0, num_inference_steps=6,
                        strength=0.8, generator=torch.Generator().manual_seed(0)).images  # unguided
            results[attached is pipe] = ([np.asarray(i) for i in image], handle.alpha_heatmap().mean((1, 2)))
    (via_pipe, alpha), (via_i2i, alpha_i2i) = results[True], results[False]
    assert alpha[0] > 0.9 and alpha[1] < 0.1  # each prompt its own α: no CFG pairing of two prompts
    assert torch.equal(alpha, alpha_i2i)
    assert all(np.array_equal(a, b) for a, b in zip(via_pipe, via_i2i))


def test_enabled_false_pauses_steering_and_true_resumes_it(demo):
    pipe, concept = demo
    plain = run(pipe, CIRCLE)
    with steer(pipe, {concept: 3.0}, step_window=(0, 3)) as handle:
        steered = run(pipe, CIRCLE)
        handle.enabled = False
        paused = run(pipe, CIRCLE)
        handle.enabled = True
        again = run(pipe, CIRCLE)
    assert np.array_equal(paused, plain) and np.array_equal(again, steered)
    assert np.abs(steered.astype(int) - plain.astype(int)).max() > 50


def test_alpha_maps_and_heat_maps_are_those_of_the_last_call(demo):
    pipe, concept = demo
    with steer(pipe, {concept: 3.0}, record_alpha=True) as handle:
        run(pipe, CIRCLE)
        run(pipe, [CIRCLE, SQUARE], height=64, width=64)  # another batch and size: only this call counts
        heat = handle.alpha_heatmap()
        maps = handle.alpha_maps()
    assert tuple(heat.shape) == (2, 32, 32)  # the demo VAE halves the image side
    assert heat[0].mean() > 0.9 and heat[1].mean() < 0.1
    site = next(iter(maps["circles-on-black"].values()))
    assert site.shape[:2] == (4, 4)  # 4 steps of this call; CFG batch of 2 prompts


def test_alpha_maps_cover_every_concept_and_unknown_names_are_refused(demo):
    pipe, concept = demo
    other = load_concept(assets_dir() / "concepts" / "no-green")
    with steer(pipe, {concept: 1.0, other: 1.0}, record_alpha=True) as handle:
        run(pipe, CIRCLE)
        assert sorted(handle.alpha_maps()) == ["circles-on-black", "no-green"]
        for method in (handle.alpha_maps, handle.alpha_heatmap):
            with pytest.raises(DsasError, match="no concept 'nope' is attached here"):
                method("nope")


def test_a_concept_gated_off_everywhere_maps_to_zeros(demo):
    pipe, concept = demo
    gated = load_concept(assets_dir() / "concepts" / "circles-on-black")
    for site in gated.config.sites:  # as fitting leaves a concept whose probe failed the gate at every site
        gated.config.diagnostics.setdefault(site, {})["gated"] = True
        gated.sites[site].scaler.gated = True
    with steer(pipe, {gated: 3.0}, record_alpha=True) as handle:
        steered = run(pipe, CIRCLE)
        heat = handle.alpha_heatmap()
    assert tuple(heat.shape) == (1, 16, 16) and heat.abs().max() == 0
    assert np.array_equal(steered, run(pipe, CIRCLE))  # it steers nowhere
