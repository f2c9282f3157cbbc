"""DSAS inside tiny SD3 and FLUX pipelines: block sites, streams, steps under true CFG, α maps on packed patches."""

import pytest
import torch

from dsas_core import Concept, DsasError, HookHandle
from dsas_diffusion import attach, candidates, fit_concept, site_widths, steer
from tiny_diffusion import check_zero_and_detach, run, tiny_flux, tiny_sd, tiny_sd3

THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "lamp", "cup", "clock", "bird", "horse"]
SOURCE = [f"a ripe yellow banana fruit beside a {t}" for t in THINGS]
TARGET = [f"a ripe green pear fruit beside a {t}" for t in THINGS]
CONTROL = [f"a plain photo of a {t} at night" for t in THINGS]
TRUE_CFG = {"negative_prompt": "a plain photo", "true_cfg_scale": 2.0}


def _fit(pipe, **kwargs):
    return fit_concept(pipe, SOURCE, TARGET, CONTROL, name="pear", num_inference_steps=2, batch_size=12,
                       progress=False, **({"scaler": "probe", "n_components": 5} | kwargs))


@pytest.fixture(scope="module", params=["sd3", "flux"])
def fitted(request, tmp_path_factory):
    pipe = tiny_sd3() if request.param == "sd3" else tiny_flux()
    path = tmp_path_factory.mktemp(request.param) / "pear"
    _fit(pipe).save_pretrained(path)
    return request.param, pipe, Concept.from_pretrained(path)


def _ungated(concept):
    return [s for s in concept.config.sites if not concept.config.diagnostics[s]["gated"]]


def test_default_sites_are_the_image_stream_of_every_block(fitted):
    kind, pipe, concept = fitted
    expected = (["transformer_blocks.0", "transformer_blocks.1"] if kind == "sd3" else
                ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
                 "single_transformer_blocks.1"])
    assert concept.config.sites == expected
    assert concept.config.fitted_on["denoiser"]["class"] == type(pipe.transformer).__name__
    text_sites = [c.site.name for c in candidates(pipe.transformer) if c.stream == "text"]
    # the last SD3 block returns (None, image): it has no text stream to offer
    assert text_sites == ([f"{s}:text" for s in expected[:1]] if kind == "sd3" else [f"{s}:text" for s in expected])
    assert set(site_widths(pipe.transformer).values()) == {32}
    assert _ungated(concept)


def test_strength_zero_and_detaching_are_bit_identical_to_the_unsteered_pipeline(fitted):
    _, pipe, concept = fitted
    check_zero_and_detach(pipe, concept, SOURCE[:2])


def test_plain_steering_gives_alpha_one_at_every_image_token(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, adaptive=False, record_alpha=True) as handle:
        run(pipe, CONTROL[:2])
    alphas = [r.alpha for r in handle.records]
    assert len(alphas) == 2 * len(concept.config.sites)  # 2 steps, one denoiser call each
    assert all(a.shape[-1] == 16 and torch.equal(a, torch.ones_like(a)) for a in alphas)  # 4×4 patches of 2×2


def test_alpha_maps_lie_on_the_latent_grid_cut_into_two_by_two_patches(fitted):
    kind, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, [SOURCE[0], CONTROL[0]], steps=3)
    maps = handle.alpha_maps()["pear"]
    batch = 4 if kind == "sd3" else 2  # SD3 doubles the batch for CFG; FLUX's guidance is distilled
    assert set(maps) == set(concept.config.sites)
    assert {tuple(m.shape) for m in maps.values()} == {(3, batch, 4, 4)}  # steps, batch, 8×8 latent / 2
    heat = handle.alpha_heatmap()
    assert heat.shape == (2, 8, 8)
    assert heat[0].mean().item() - heat[1].mean().item() > 0.3
    assert {r.context["step"] for r in handle.records} == {0, 1, 2}


def test_a_non_square_image_gets_a_non_square_alpha_map(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        pipe(SOURCE[0], num_inference_steps=1, height=16, width=32, output_type="latent")
    assert {tuple(m.shape[-2:]) for m in handle.alpha_maps()["pear"].values()} == {(4, 8)}
    assert handle.alpha_heatmap().shape == (1, 8, 16)


def test_only_the_image_stream_is_steered_unless_the_text_stream_is_asked_for(fitted):
    kind, pipe, _ = fitted
    block = pipe.transformer.transformer_blocks[0]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def outputs(concept=None, strength=3.0):
        seen.clear()
        handle = attach(pipe, {concept: strength}) if concept is not None else None
        with HookHandle() as watch:  # registered after the steering hook: sees the steered output
            watch.after_calls(block, lambda out: seen.append((out[0].clone(), out[1].clone())))
            run(pipe, SOURCE[:1], steps=1)
        if handle is not None:
            handle.remove()
        return seen[0]

    text, image = outputs()
    image_only = _fit(pipe, sites=["transformer_blocks.0"])
    s_text, s_image = outputs(image_only)
    assert torch.equal(s_text, text) and not torch.equal(s_image, image)
    text_too = _fit(pipe, sites=["transformer_blocks.0", "transformer_blocks.0:text"], scaler="constant")
    t_text, t_image = outputs(text_too)
    assert (t_text - text).abs().max().item() > 1e-4 and (t_image - image).abs().max().item() > 1e-4


def test_a_block_output_in_another_format_raises_instead_of_steering_the_wrong_stream(fitted, monkeypatch):
    kind, pipe, concept = fitted
    block = pipe.transformer.transformer_blocks[0]
    original = block.forward
    monkeypatch.setattr(block, "forward", lambda **kw: tuple(reversed(original(**kw))))  # (image, text)
    with steer(pipe, {concept: 1.0}), pytest.raises(DsasError, match="image stream"):
        run(pipe, SOURCE[:1], steps=1)
    if kind == "flux":  # older diffusers: single-stream blocks returned one concatenated tensor
        single = pipe.transformer.single_transformer_blocks[0]
        first = single.forward
        monkeypatch.setattr(block, "forward", original)
        monkeypatch.setattr(single, "forward", lambda **kw: torch.cat(first(**kw), dim=1))
        with steer(pipe, {concept: 1.0}), pytest.raises(DsasError, match="single_transformer_blocks.0"):
            run(pipe, SOURCE[:1], steps=1)


def test_classifier_free_guidance_gives_per_sample_and_per_call_alpha(fitted):
    kind, pipe, concept = fitted
    site = _ungated(concept)[0]
    extra = {} if kind == "sd3" else TRUE_CFG
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, [SOURCE[0], CONTROL[0]], **extra)
    with steer(pipe, {concept: 1.0}, record_alpha=True, cfg_alpha="own") as own:
        run(pipe, [SOURCE[0], CONTROL[0]], **extra)
    first = handle.alpha_records(site=site)
    if kind == "sd3":  # one call on the doubled batch (uncond src, uncond ctl, cond src, cond ctl)
        assert len(first) == 2
        a = first[0].alpha
        assert torch.equal(a[0], a[2]) and torch.equal(a[1], a[3])
        assert a[2].mean().item() - a[3].mean().item() > 0.3
        b = own.alpha_records(site=site)[0].alpha
        assert torch.equal(b[2:], a[2:]) and not torch.equal(b[0], a[0])
    else:  # true CFG: a conditional and an unconditional call per step, each with its own record
        assert [(r.context["step"], r.context["branch"]) for r in first] == [
            (0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")]
        cond, uncond = first[0].alpha, first[1].alpha
        assert torch.equal(cond, uncond)  # the negative prompt's call reuses its prompt's α
        assert cond[0].mean().item() - cond[1].mean().item() > 0.3
        o = own.alpha_records(site=site)
        assert torch.equal(o[0].alpha, cond) and not torch.equal(o[1].alpha, cond)
        assert tuple(handle.alpha_maps(branch="uncond")["pear"][site].shape) == (2, 2, 4, 4)


def test_true_cfg_counts_steps_by_the_scheduler_and_honours_the_step_window(fitted):
    kind, pipe, concept = fitted
    if kind == "sd3":
        pytest.skip("SD3 runs CFG on a doubled batch")
    plain = run(pipe, SOURCE[:1], steps=3, **TRUE_CFG)
    with steer(pipe, {concept: 3.0}, record_alpha=True, step_window=(1, 2)) as handle:
        steered = run(pipe, SOURCE[:1], steps=3, **TRUE_CFG)
    assert {(r.context["step"], r.context["branch"]) for r in handle.records} == {(1, "cond"), (1, "uncond")}
    assert (steered - plain).abs().max().item() > 1e-4


def test_an_img2img_pipeline_sharing_the_transformer_is_steered_with_steps_counted_from_its_first_step(fitted):
    kind, pipe, concept = fitted
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    i2i = (StableDiffusion3Img2ImgPipeline if kind == "sd3" else FluxImg2ImgPipeline)(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = run(i2i, SOURCE[0], image=image, strength=0.7, steps=4)
    with steer(pipe, {concept: 3.0}, record_alpha=True) as handle:
        steered = run(i2i, SOURCE[0], image=image, strength=0.7, steps=4)
    assert (steered - plain).abs().max().item() > 1e-4
    # strength 0.7 of 4 steps starts at scheduler step int(4 - 2.8) = 1: three steps run, counted from 0
    assert sorted({r.context["step"] for r in handle.records}) == [0, 1, 2]


def test_a_concept_is_refused_by_a_pipeline_of_another_architecture(fitted):
    kind, _, concept = fitted
    for other in (tiny_sd(), tiny_flux() if kind == "sd3" else tiny_sd3()):
        with pytest.raises(DsasError, match="(?i)fit the concept again|fitted on another model"):
            steer(other, {concept: 1.0})


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_model_cpu_offload_and_bf16_on_cuda_steer_like_the_cpu(kind):
    pipe = tiny_sd3() if kind == "sd3" else tiny_flux()
    concept = _fit(pipe)
    pipe.to(dtype=torch.bfloat16)
    pipe.enable_model_cpu_offload()
    before = run(pipe, SOURCE[:2])
    with steer(pipe, {concept: 0.0}):
        zero = run(pipe, SOURCE[:2])
    with steer(pipe, {concept: 3.0}, record_alpha=True) as handle:
        steered = run(pipe, SOURCE[:2])
    assert torch.equal(zero, before)
    assert (steered - before).abs().max().item() > 1e-3
    assert handle.records[0].alpha.device.type == "cuda"
    assert handle.alpha_heatmap().shape == (2, 8, 8)


def test_the_step_clock_reads_the_scheduler_then_the_current_timestep_then_counts_calls():
    from types import SimpleNamespace

    from dsas_diffusion.pipeline import StepClock

    class Counting:  # a scheduler that keeps its own step index, e.g. for img2img from step 3 on
        def __init__(self):
            self.timesteps, self.step_index, self.begin_index = torch.arange(5), None, 3

    sched = Counting()
    clock = StepClock(SimpleNamespace(scheduler=sched), calls_per_step=1)
    seen = []
    for index in (None, None, 4, 4, 5, 5):  # two denoiser calls per step
        sched.step_index = index
        seen.append(clock.tick())
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]

    pipe = SimpleNamespace(scheduler=SimpleNamespace(timesteps=torch.arange(3)), _current_timestep=None)
    clock = StepClock(pipe, calls_per_step=1)
    seen = []
    for t in torch.arange(3):  # a new timestep object per step, two calls each
        pipe._current_timestep = t
        seen += [clock.tick(), clock.tick()]
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    pipe.scheduler.timesteps = torch.arange(3)  # the next pipeline call starts again at step 0
    pipe._current_timestep = None
    clock.calls_per_step = 2
    assert [clock.tick() for _ in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
