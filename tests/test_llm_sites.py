"""Sites by role map to the right module per architecture; layer ranges and regex overrides select exactly."""

import pytest
import torch

from dsas_core import DsasError
from dsas_transformers import collect_pooled, fit_concept, lm_sites, sites_table, steer
from dsas_transformers.fit import apply_chat_template
from dsas_transformers.sites import parse_layers
from dsas_transformers.testing import tiny_model, tiny_tokenizer
from test_llm_steer import TOK, VOCAB, greedy, prompts, texts

EXPECTED = {  # family: (layer 1's residual, mlp_input, attention module)
    "llama": ("model.layers.1", "model.layers.1.post_attention_layernorm", "model.layers.1.self_attn"),
    "qwen2": ("model.layers.1", "model.layers.1.post_attention_layernorm", "model.layers.1.self_attn"),
    "mistral": ("model.layers.1", "model.layers.1.post_attention_layernorm", "model.layers.1.self_attn"),
    "gemma2": ("model.layers.1", "model.layers.1.pre_feedforward_layernorm", "model.layers.1.self_attn"),
    "gemma3_text": ("model.layers.1", "model.layers.1.pre_feedforward_layernorm", "model.layers.1.self_attn"),
    "gpt2": ("transformer.h.1", "transformer.h.1.ln_2", "transformer.h.1.attn"),
    "phi": ("model.layers.1", "model.layers.1.input_layernorm", "model.layers.1.self_attn"),
    "phi3": ("model.layers.1", "model.layers.1.post_attention_layernorm", "model.layers.1.self_attn"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_role_maps_to_the_module_that_plays_it_in_each_family(family):
    model = tiny_model(family, VOCAB, hidden=32, layers=2)
    rows = {(r["role"], r["layer"]): r for r in sites_table(model)}
    assert len(rows) == 3 * 2
    for role, name in zip(("residual", "mlp_input", "attention"), EXPECTED[family]):
        assert rows[(role, 1)]["name"] == name
        assert rows[(role, 1)]["width"] == 32
    assert rows[("residual", 1)]["output"] == "tensor"  # transformers 5.x decoder layers return a plain tensor
    assert rows[("attention", 1)]["output"] == "tuple[0]"


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2, 3, 4, 5]), ("-4:-1", [2, 3, 4]), ("2:", [2, 3, 4, 5]), ("::2", [0, 2, 4]), (-1, [5]),
    ("1,3,-1", [1, 3, 5]), ([0, 2], [0, 2]),
])
def test_layer_ranges_select_python_slice_semantics(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize("spec", ["7", "a:b", "1:2:3:4", "5:2", [9]])
def test_a_bad_layer_range_is_refused_with_the_valid_range(spec):
    with pytest.raises(DsasError, match="layer"):
        parse_layers(spec, 6)


def test_a_regex_override_with_a_layer_range_picks_exactly_the_matching_modules():
    model = tiny_model("llama", VOCAB, hidden=32, layers=4)
    got = lm_sites(model, sites=r"model\.layers\.\d+\.mlp\.down_proj", layers="-2:")
    assert [(s.site.name, s.layer, s.output, s.width) for s in got] == [
        ("model.layers.2.mlp.down_proj", 2, "tensor", 32), ("model.layers.3.mlp.down_proj", 3, "tensor", 32)]
    with pytest.raises(DsasError, match="matches no whole module name"):
        lm_sites(model, sites=r"model\.nothing\..*")
    with pytest.raises(DsasError, match=r"layers='1,5,7' .* \(layers 5, 7 do not exist\)"):
        lm_sites(model, layers="1,5,7")
    with pytest.raises(DsasError, match="unknown site role"):
        lm_sites(model, role="mlp_output")


@pytest.mark.parametrize("role", ["attention", "mlp_input"])
def test_attention_and_mlp_input_sites_steer_generation_with_cache_parity(role):
    model = tiny_model("qwen2", VOCAB, hidden=32, layers=2)
    concept = fit_concept(model, TOK, texts(12, 1), texts(12, 2), texts(12, 3), role=role, gate=0.0, progress=False)
    assert concept.config.fitted_on["role"] == role
    before = greedy(model, steps=3)
    with steer(model, {concept: 3.0}):
        cached = greedy(model, steps=3, use_cache=True)
        uncached = greedy(model, steps=3, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)) <= 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, before.logits)) > 1e-3


def test_a_bfloat16_model_is_steered_in_float32_and_cast_back():
    model = tiny_model("llama", VOCAB, hidden=32, layers=2, dtype=torch.bfloat16)
    concept = fit_concept(model, TOK, texts(12, 1), texts(12, 2), texts(12, 3), gate=0.0, progress=False)
    with steer(model, {concept: 2.0}, record_alpha=True) as handle:
        greedy(model, steps=2)
        hidden = model(**prompts(), output_hidden_states=True).hidden_states  # steered layer outputs
    assert {h.dtype for h in hidden} == {torch.bfloat16}
    assert {r.alpha.dtype for r in handle.records} == {torch.float32}
    assert len(handle.records) == 2 * 3  # two sites × (prefill, one decode step, one direct call)


def test_tokenizer_without_chat_template_is_refused_when_asked_to_apply_one():
    tok = tiny_tokenizer(["x", "y"])
    model = tiny_model("llama", len(tok), hidden=32, layers=2)
    with pytest.raises(DsasError, match="has no chat template"):
        fit_concept(model, tok, ["x y", "y x"], ["x x", "y y"], ["x", "y"], chat_template=True, progress=False)


def test_a_chat_template_wraps_every_text_before_pooling():
    tok = tiny_tokenizer(["<user>", "</user>", *"the a red blue fox cat dog".split()])
    tok.chat_template = "{% for m in messages %}<user> {{ m['content'] }} </user>{% endfor %}"
    model = tiny_model("llama", len(tok), hidden=32, layers=2)
    src, tgt = ["red fox", "red cat", "red dog"], ["blue fox", "blue cat", "blue dog"]
    assert apply_chat_template(tok, src[:1]) == ["<user> red fox </user>"]
    concept = fit_concept(model, tok, src, tgt, None, chat_template=True, scaler="constant", progress=False)
    assert concept.config.fitted_on["chat_template"] is True
    sites = lm_sites(model)
    pooled = [collect_pooled(model, tok, [f"<user> {t} </user>" for t in texts_], sites, add_special_tokens=False,
                             progress=False) for texts_ in (src, tgt)]
    for s in sites:
        expected = pooled[1][s.site.name].mean(0) - pooled[0][s.site.name].mean(0)
        assert torch.allclose(concept.sites[s.site.name].transform.shift, expected, atol=1e-6, rtol=0)


def test_gemma3_image_text_models_steer_their_language_model_layers():
    import transformers as tf

    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tf.Gemma3Config(text_config=text, vision_config=vision,
                                                                mm_tokens_per_image=4), dtype=torch.float32).eval()
    assert [s.site.name for s in lm_sites(model, role="mlp_input")] == [
        "model.language_model.layers.0.pre_feedforward_layernorm", "model.language_model.layers.1.pre_feedforward_layernorm"]
    concept = fit_concept(model, TOK, texts(8, 1), texts(8, 2), texts(8, 3), gate=0.0, progress=False)
    with steer(model, {concept: 3.0}):
        cached = greedy(model, steps=3, use_cache=True)
        uncached = greedy(model, steps=3, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, uncached.logits)) <= 1e-5


class _Block(torch.nn.Module):
    def __init__(self, out="tuple"):
        super().__init__()
        self.lin, self.out = torch.nn.Linear(8, 8), out

    def forward(self, h):
        h = h + torch.tanh(self.lin(h))
        return (h, None) if self.out == "tuple" else h[:, -1] if self.out == "2d" else h


class _ToyLM(torch.nn.Module):
    """An unknown architecture whose decoder layers return tuples, as some transformers 4.x families do."""

    def __init__(self, out="tuple"):
        super().__init__()
        torch.manual_seed(0)
        self.config = type("Cfg", (), {"model_type": "toy", "num_hidden_layers": 2})()
        self.embed = torch.nn.Embedding(10, 8)
        self.blocks = torch.nn.ModuleList([_Block(out), _Block()])

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kwargs):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)[0]
        return h


def test_tuple_layer_outputs_of_an_unknown_family_are_found_and_steered_at_index_0():
    model = _ToyLM()
    sites = lm_sites(model)
    assert [(s.site.name, s.output, s.site.output_index, s.width) for s in sites] == [
        ("blocks.0", "tuple[0]", 0, 8), ("blocks.1", "tuple[0]", 0, 8)]
    with pytest.raises(DsasError, match="no known 'attention' site"):
        lm_sites(model, role="attention")
    from dsas_core import attach, fit_from_activations

    g = torch.Generator().manual_seed(0)
    acts = {k: {"blocks.1": torch.randn(8, 8, generator=g) + shift} for k, shift in (("s", 1.0), ("t", -1.0))}
    concept = fit_from_activations("toy", acts["s"], acts["t"], None, scaler="constant", progress=False)
    ids = torch.tensor([[1, 2, 3]])
    h0 = model.blocks[0](model.embed(ids))[0]
    expected = model.blocks[1](h0)[0] + 0.5 * concept.sites["blocks.1"].transform.shift
    with attach([s.site for s in sites], {concept: 0.5}):
        assert torch.allclose(model(ids), expected, atol=1e-6, rtol=0)


def test_a_site_whose_output_is_not_a_token_stream_is_refused():
    model = _ToyLM(out="2d")
    with pytest.raises(DsasError, match=r"blocks.0' returns a tensor of shape \(1, 8\)"):
        lm_sites(model)


def test_a_site_outside_the_decoder_is_collected_with_the_full_model():
    model = tiny_model("gpt2", VOCAB, hidden=32, layers=2)
    concept = fit_concept(model, TOK, texts(8, 1), texts(8, 2), None, sites=["transformer.h.1", "lm_head"],
                          scaler="constant", progress=False)
    assert concept.config.site_widths == {"transformer.h.1": 32, "lm_head": VOCAB}
