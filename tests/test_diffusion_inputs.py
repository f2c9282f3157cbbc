"""Bad input to the diffusion adapter gets clear errors; dtypes, cache hooks and incremental fitting."""

import pytest
import torch

from dsas_core import DsasError
from dsas_diffusion import fit_concept, select_sites, steer
from tiny_diffusion import run, tiny_sd

THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "lamp"]
SRC = [f"a ripe yellow banana fruit beside a {t}" for t in THINGS]
TGT = [f"a ripe green pear fruit beside a {t}" for t in THINGS]
CTL = [f"a plain photo of a {t} at night" for t in THINGS]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd()


@pytest.fixture(scope="module")
def concept(pipe):
    return fit_concept(pipe, SRC, TGT, CTL, name="pear", scaler="probe", num_inference_steps=2, progress=False)


@pytest.mark.parametrize("bad, message", [
    ("a single string", "must be a list of strings"),
    (["only one"], "need at least 2"),
    (["", "  "], "got 0 non-empty"),
])
def test_bad_prompt_lists_are_refused(pipe, bad, message):
    with pytest.raises(DsasError, match=message):
        fit_concept(pipe, bad, TGT, CTL, progress=False)


def test_an_unknown_site_name_suggests_the_nearest_candidates(pipe):
    with pytest.raises(DsasError, match=r"nearest candidates: \['down_blocks.0.attentions.0.transformer_blocks.0.attn2'"):
        select_sites(pipe.unet, ["down_blocks.0.attentions.0.transformer_blocks.0.attn3"])


def test_a_site_regex_selects_only_matching_sites(pipe):
    assert len(select_sites(pipe.unet, r"attn2$")) == 7


def test_collect_steps_beyond_the_run_are_refused(pipe):
    with pytest.raises(DsasError, match="must lie below num_inference_steps=2"):
        fit_concept(pipe, SRC, TGT, CTL, num_inference_steps=2, collect_steps=[5], progress=False)


def test_a_cache_hook_on_the_denoiser_is_refused(concept):
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    cached = tiny_sd()
    apply_pyramid_attention_broadcast(cached.unet, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, current_timestep_callback=lambda: 500))
    with pytest.raises(DsasError, match="cache hook .*pyramid_attention_broadcast"):
        steer(cached, {concept: 1.0})


def test_bf16_pipelines_are_steered_and_keep_their_dtype(concept):
    pipe = tiny_sd().to(torch.bfloat16)
    before = run(pipe, SRC[:1])
    seen = []
    pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.register_forward_hook(
        lambda m, a, o: seen.append(o.dtype))
    with steer(pipe, {concept: 0.0}):
        zero = run(pipe, SRC[:1])
    with steer(pipe, {concept: 3.0}):
        steered = run(pipe, SRC[:1])
    assert torch.equal(zero, before)
    assert (steered - before).abs().max().item() > 1e-3
    assert set(seen) == {torch.bfloat16}


def test_incremental_fitting_collects_later_sites_with_earlier_ones_steered(pipe, concept):
    inc = fit_concept(pipe, SRC, TGT, CTL, name="pear", scaler="probe", num_inference_steps=2, incremental=2,
                      progress=False)
    assert inc.config.sites == concept.config.sites
    assert inc.config.fitted_on["incremental"] == 2
    first, last = inc.config.sites[0], inc.config.sites[-1]
    same = torch.equal(inc.sites[first].transform.shift, concept.sites[first].transform.shift)
    moved = (inc.sites[last].scaler.mean - concept.sites[last].scaler.mean).abs().max().item()
    assert same and moved > 1e-6
