"""DSAS inside tiny Stable Diffusion and SDXL pipelines: fit, save, load, steer, detach, α maps."""

import pytest
import torch

from dsas_core import Concept, DsasError
from dsas_diffusion import fit_concept, site_widths, steer
from tiny_diffusion import check_zero_and_detach, run, tiny_sd, tiny_sdxl

THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "lamp", "cup", "clock", "bird", "horse"]
SOURCE = [f"a ripe yellow banana fruit beside a {t}" for t in THINGS]
TARGET = [f"a ripe green pear fruit beside a {t}" for t in THINGS]
CONTROL = [f"a plain photo of a {t} at night" for t in THINGS]


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def fitted(request, tmp_path_factory):
    pipe = tiny_sd() if request.param == "sd" else tiny_sdxl()
    concept = fit_concept(pipe, SOURCE, TARGET, CONTROL, name="pear", scaler="probe", num_inference_steps=2,
                          batch_size=12, progress=False, source_text="a banana", target_text="a pear")
    path = tmp_path_factory.mktemp(request.param) / "pear"
    concept.save_pretrained(path)
    return request.param, pipe, Concept.from_pretrained(path)


def test_the_loaded_concept_covers_every_attention_site_with_diagnostics(fitted):
    kind, pipe, concept = fitted
    assert concept.config.sites == list(site_widths(pipe.unet))
    assert concept.config.fitted_on["denoiser"]["class"] == "UNet2DConditionModel"
    assert all("accuracy" in concept.config.diagnostics[s] for s in concept.config.sites)


def test_strength_zero_and_detaching_are_bit_identical_to_the_unsteered_pipeline(fitted):
    _, pipe, concept = fitted
    check_zero_and_detach(pipe, concept, SOURCE[:2])


def test_plain_steering_gives_alpha_one_at_every_position(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, adaptive=False, record_alpha=True) as handle:
        run(pipe, CONTROL[:2])
    alphas = [r.alpha for r in handle.records]
    assert len(alphas) == 2 * len(concept.config.sites)  # 2 steps, one call each
    assert all(torch.equal(a, torch.ones_like(a)) for a in alphas)


def test_alpha_maps_have_one_map_per_step_sample_and_level(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, [SOURCE[0], CONTROL[0]], steps=3)
    maps = handle.alpha_maps()["pear"]
    shapes = {tuple(m.shape) for m in maps.values()}
    assert shapes <= {(3, 4, 8, 8), (3, 4, 4, 4)}  # steps, CFG-doubled batch, level grid
    assert handle.alpha_heatmap().shape == (2, 8, 8)


def test_cfg_halves_get_per_sample_alpha_and_the_unconditional_twin_reuses_it(fitted):
    _, pipe, concept = fitted
    ungated = next(s for s in concept.config.sites if not concept.config.diagnostics[s]["gated"])
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, [SOURCE[0], CONTROL[0]])
    a = handle.alpha_records(site=ungated)[0].alpha  # (4, N): uncond src, uncond ctl, cond src, cond ctl
    assert torch.equal(a[0], a[2]) and torch.equal(a[1], a[3])
    assert a[2].mean().item() - a[3].mean().item() > 0.3
    with steer(pipe, {concept: 1.0}, record_alpha=True, cfg_alpha="own") as handle:
        run(pipe, [SOURCE[0], CONTROL[0]])
    own = handle.alpha_records(site=ungated)[0].alpha
    assert torch.equal(own[2:], a[2:]) and not torch.equal(own[0], a[0])


def test_every_cfg_call_of_one_batch_size_pairs_rows_with_the_same_tensor(fitted):
    _, pipe, concept = fitted
    seen = []
    with steer(pipe, {concept: 1.0}) as handle:
        hook = pipe.unet.register_forward_hook(lambda *args: seen.append(handle.alpha_rows))
        try:
            run(pipe, [SOURCE[0], CONTROL[0]], steps=3)
            run(pipe, [SOURCE[0]], steps=2)
        finally:
            hook.remove()
    assert [r.tolist() for r in seen] == [[2, 3, 2, 3]] * 3 + [[1, 1]] * 2
    assert seen[0] is seen[1] is seen[2] and seen[3] is seen[4]  # the hooks' kernels keep reading one tensor


def test_an_img2img_pipeline_sharing_the_unet_is_steered_too(fitted):
    kind, pipe, concept = fitted
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    cls = StableDiffusionImg2ImgPipeline if kind == "sd" else StableDiffusionXLImg2ImgPipeline
    i2i = cls(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = run(i2i, SOURCE[0], image=image, strength=0.9, steps=3)
    with steer(pipe, {concept: 3.0}):
        steered = run(i2i, SOURCE[0], image=image, strength=0.9, steps=3)
    assert (steered - plain).abs().max().item() > 1e-4


def test_step_window_limits_steering_to_the_chosen_steps(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, record_alpha=True, step_window=(1, 2)) as handle:
        run(pipe, SOURCE[0], steps=3)
    assert {r.context["step"] for r in handle.records} == {1}


def test_a_concept_from_the_sd_pipeline_is_refused_by_the_sdxl_one(fitted):
    kind, _, concept = fitted
    other = tiny_sdxl() if kind == "sd" else tiny_sd()
    with pytest.raises(DsasError, match="fit the concept again|fitted on another model"):
        steer(other, {concept: 1.0})


def test_steering_survives_a_lora_adapter_and_fused_qkv(fitted):
    _, _, concept = fitted
    from peft import LoraConfig

    for kind in ("lora", "fused"):
        pipe = tiny_sd() if fitted[0] == "sd" else tiny_sdxl()
        if kind == "lora":
            torch.manual_seed(0)
            pipe.unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
        else:
            pipe.fuse_qkv_projections()
        before = run(pipe, SOURCE[:1])
        with steer(pipe, {concept: 0.0}):
            zero = run(pipe, SOURCE[:1])
        with steer(pipe, {concept: 3.0}, record_alpha=True) as handle:
            steered = run(pipe, SOURCE[:1])
        assert torch.equal(zero, before), kind
        assert (steered - before).abs().max().item() > 1e-4, kind
        assert len(handle.records) == 2 * len(concept.config.sites), kind


def test_a_planted_concept_gets_high_alpha_on_held_out_source_and_low_on_held_out_control():
    """Source prompts share words ("ripe yellow banana fruit") that control prompts lack."""
    things = THINGS + ["table", "river", "road", "bridge", "window", "door", "book", "shoe"]
    held = ["mountain", "candle", "piano", "bicycle", "garden", "castle", "pillow", "rocket"]
    src = [f"a ripe yellow banana fruit beside a {t}" for t in things]
    tgt = [f"a ripe green pear fruit beside a {t}" for t in things]
    ctl = [f"a plain photo of a {t} at night" for t in things]
    pipe = tiny_sd()
    concept = fit_concept(pipe, src, tgt, ctl, name="p", scaler="probe", num_inference_steps=4, progress=False)
    ungated = [s for s in concept.config.sites if not concept.config.diagnostics[s]["gated"]]
    assert ungated

    def mean_alpha(prompts):
        with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
            run(pipe, prompts, steps=4)
        per_call = [r.alpha[r.alpha.shape[0] // 2:].mean(1) for r in handle.records if r.site in ungated]
        return torch.stack(per_call).mean().item()

    assert mean_alpha([f"a ripe yellow banana fruit beside a {t}" for t in held]) >= 0.8
    assert mean_alpha([f"a plain photo of a {t} at night" for t in held]) <= 0.2


def test_several_prompts_with_several_images_each_get_one_alpha_map_per_image(fitted):
    _, pipe, concept = fitted
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        images = run(pipe, [SOURCE[0], CONTROL[0]], num_images_per_prompt=2)
    assert images.shape[0] == 4
    assert handle.records[0].alpha.shape[0] == 8  # CFG-doubled
    heat = handle.alpha_heatmap()
    assert heat.shape == (4, 8, 8)
    assert heat[:2].mean().item() > heat[2:].mean().item()


def test_a_concept_folder_or_pairs_steer_like_the_loaded_concept():
    from dsas_core.paths import assets_dir
    from dsas_diffusion import load_concept, load_demo_pipeline

    pipe = load_demo_pipeline()
    folder = assets_dir() / "concepts" / "circles-on-black"

    def image(concepts):
        with steer(pipe, concepts):
            return pipe("a red circle on a white background", num_inference_steps=3, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images

    loaded = image({load_concept(folder): 1.0})
    assert torch.equal(image({str(folder): 1.0}), loaded) and torch.equal(image([(folder, 1.0)]), loaded)
    with pytest.raises(DsasError, match=r"concepts must be \{concept: strength\}"):
        steer(pipe, [load_concept(folder)])
    assert not any(m._forward_hooks for m in pipe.unet.modules())  # the refused call attached nothing
