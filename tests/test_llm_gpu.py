"""On a CUDA device: steering through `generate` on the GPU, and a model split across CPU and GPU with
``device_map`` (each layer's α parameters follow its device) gives the logits of the single-device model."""

import pytest
import torch

from dsas_transformers import fit_concept, steer
from dsas_transformers.testing import tiny_model
from test_llm_steer import TOK, VOCAB, prompts, texts

pytestmark = pytest.mark.gpu


def generate(model, device, **kw):
    batch = {k: v.to(device) for k, v in prompts().items()}
    return model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_logits=True, **kw)


@pytest.fixture(scope="module")
def fitted():
    model = tiny_model("llama", VOCAB, hidden=32, layers=4, seed=0)
    concept = fit_concept(model, TOK, texts(16, 1), texts(16, 2), texts(16, 3), gate=0.0, progress=False)
    return model, concept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steering_on_the_gpu_keeps_kv_cache_parity_and_records_alpha_there(fitted, dtype):
    cpu_model, concept = fitted
    model = tiny_model("llama", VOCAB, hidden=32, layers=4, seed=0, dtype=dtype).to("cuda")
    with steer(model, {concept: 2.0}, record_alpha=True) as handle:
        cached = generate(model, "cuda", use_cache=True)
        handle.clear_records()
        uncached = generate(model, "cuda", use_cache=False)
        assert {r.alpha.device.type for r in handle.records} == {"cuda"}
    assert torch.equal(cached.sequences, uncached.sequences)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)) <= tol


def test_a_model_split_across_cpu_and_gpu_is_steered_like_the_single_device_model(fitted):
    import copy

    from accelerate import dispatch_model

    cpu_model, concept = fitted
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": 0, "model.layers.3": 0, "model.norm": 0, "lm_head": 0}
    split = dispatch_model(copy.deepcopy(cpu_model), device_map=device_map, main_device="cpu")
    with steer(cpu_model, {concept: 2.0}):
        reference = generate(cpu_model, "cpu")
    with steer(split, {concept: 2.0}, record_alpha=True) as handle:
        got = generate(split, "cpu")
        devices = {r.site: r.alpha.device.type for r in handle.records}
    assert devices == {"model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": "cuda",
                       "model.layers.3": "cuda"}
    assert torch.equal(got.sequences.cpu(), reference.sequences)
    assert max((a.cpu() - b).abs().max().item() for a, b in zip(got.logits, reference.logits)) <= 1e-4


def test_an_offloaded_model_loaded_with_a_device_map_is_fitted_and_steered(fitted, tmp_path):
    from transformers import AutoModelForCausalLM

    cpu_model, concept = fitted
    cpu_model.save_pretrained(tmp_path)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": 0, "model.layers.0": "cpu", "model.layers.1": 0,
                  "model.layers.2": 0, "model.layers.3": 0, "model.norm": 0, "lm_head": 0}
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device_map=device_map).eval()
    refit = fit_concept(offloaded, TOK, texts(16, 1), texts(16, 2), texts(16, 3), gate=0.0, progress=False)
    for site in concept.config.sites:
        assert torch.allclose(refit.sites[site].transform.shift, concept.sites[site].transform.shift, atol=1e-4)
    with steer(cpu_model, {concept: 2.0}):
        reference = generate(cpu_model, "cpu")
    with steer(offloaded, {concept: 2.0}):
        got = generate(offloaded, "cpu")
    assert torch.equal(got.sequences.cpu(), reference.sequences)
    assert max((a.cpu() - b).abs().max().item() for a, b in zip(got.logits, reference.logits)) <= 1e-4
