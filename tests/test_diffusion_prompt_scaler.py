"""The prompt scaler: one α per prompt from the text encoder's output, on SD, SDXL, SD3 and FLUX."""

import pytest
import torch

from dsas_core import Concept, ConceptConfig, DsasError, ProbeScaler, PromptScaler, SiteSteer
from dsas_core.cli import main
from dsas_core.transforms import MeanShift
from dsas_diffusion import fit_concept, steer
from dsas_diffusion.prompt_scaler import collect_prompt_embeddings
from tiny_diffusion import T5_MORE_WORDS, run, tiny_flux, tiny_sd, tiny_sd3, tiny_sdxl

BUILDERS = {"sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}
THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "cup", "clock", "bird", "horse", "table", "river",
          "road", "bridge", "window", "door", "book", "shoe", "pillow"]
HELD = ["mountain", "candle", "piano", "bicycle", "garden", "castle", "rocket", "pear"]
SOURCE, TARGET, CONTROL = "a {} beside a banana", "a {} beside a pear", "a {} beside a lamp"
# The planted word's own test: each template with the word in its {x} slot (source) or another thing there, a
# different one in every control prompt; the templates vary length and articles alike on both sides. A probe
# generalises to unseen words only after seeing many (80 here; with 20 or 40, unseen words often outweighed the
# planted one).
PLANT_THINGS = THINGS + T5_MORE_WORDS
PLANT_TEMPLATES = ("a {t} beside a {x}", "{t} beside {x}", "a {t} and {x}", "a {x} beside a {t}")


def planted(word, things=PLANT_THINGS):
    """(source, control) prompts whose only consistent difference is ``word``: it fills the {x} slot of every
    source prompt; in the control prompts the slot holds another of ``things``, each one as often as the rest."""
    source, control = [], []
    for j, template in enumerate(PLANT_TEMPLATES):
        for i, thing in enumerate(things):
            other = things[(i + 1 + 7 * j) % len(things)]
            source.append(template.format(t=thing, x=word))
            control.append(template.format(t=thing, x=other))
    return source, control


def fit_planted(pipe, things=PLANT_THINGS, n_components=None):
    """A prompt-scaler concept planted on "banana" (the transform is not under test: one step, a few targets)."""
    source, control = planted("banana", things)
    return fit_concept(pipe, source, [TARGET.format(t) for t in THINGS], control, scaler="prompt", name="banana",
                       num_inference_steps=1, batch_size=40, n_components=n_components, progress=False)


def test_a_prompt_scaler_reads_its_alpha_from_the_context_and_round_trips_through_save_and_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    source, control = torch.randn(8, 6, generator=g) + 2, torch.randn(8, 6, generator=g) - 2
    probe, fit = ProbeScaler.fit(source, control, n_components=2)
    scaler = PromptScaler.from_probe(probe)
    cfg = ConceptConfig(name="p", transform="mean_shift", scaler="prompt", sites=["a"], site_widths={"a": 4},
                        scaler_input_width=6, diagnostics={"a": {"accuracy": fit.accuracy, "gated": fit.gated}})
    concept = Concept(cfg, {"a": SiteSteer(MeanShift(shift=torch.ones(4)), scaler)})
    loaded = Concept.from_pretrained(concept.save_pretrained(tmp_path / "p")).sites["a"].scaler
    pooled = torch.stack([source[0], control[0]])  # (B, D)
    alpha = loaded(torch.zeros(2, 5, 4), {"prompt_pooled": pooled})  # (B, N): one value per prompt
    assert isinstance(loaded, PromptScaler) and alpha.shape == (2, 5)
    assert torch.equal(alpha, scaler(torch.zeros(2, 5, 4), {"prompt_pooled": pooled}))
    assert torch.equal(alpha[:, :1].expand(2, 5), alpha) and alpha[0, 0] > 0.5 > alpha[1, 0]
    shared = loaded(torch.zeros(2, 5, 4), {"prompt_pooled": pooled[:1]})  # one (negative) prompt for the batch
    assert torch.equal(shared, alpha[:1].expand(2, 5))
    with pytest.raises(DsasError, match="prompt_pooled"):
        loaded(torch.zeros(2, 5, 4), {})


def _fit(pipe, source, target, control, things=THINGS):
    return fit_concept(pipe, [source.format(t) for t in things], [target.format(t) for t in things],
                       [control.format(t) for t in things], scaler="prompt", name="banana", num_inference_steps=2,
                       batch_size=20, progress=False)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_planted_concept_gets_high_prompt_alpha_on_held_out_source_and_low_on_held_out_control(kind, tmp_path):
    """The prompts of the probe scaler's planted test: source prompts share words that control prompts lack."""
    pipe = BUILDERS[kind]()
    concept = _fit(pipe, "a ripe yellow banana fruit beside a {}", "a ripe green pear fruit beside a {}",
                   "a plain photo of a {} at night")
    assert concept.config.scaler == "prompt" and not any(d["gated"] for d in concept.config.diagnostics.values())
    concept = Concept.from_pretrained(concept.save_pretrained(tmp_path / "banana"))
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, [f"a ripe yellow banana fruit beside a {t}" for t in HELD] +
            [f"a plain photo of a {t} at night" for t in HELD], steps=2)
    cond = [r.alpha[r.alpha.shape[0] // 2:] if r.context["cfg"] else r.alpha for r in handle.records]
    per_prompt = cond[0][:, 0]  # (16,): the same α at every position, every site and every step
    assert all(torch.equal(a, per_prompt[:, None].expand_as(a)) for a in cond)
    assert per_prompt[:8].mean().item() >= 0.8 and per_prompt[8:].mean().item() <= 0.2


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_the_planted_word_adds_the_most_prompt_alpha_to_every_held_out_prompt(kind):
    """Source and control prompts differ only in the planted word (the control prompts put a different thing in its
    place each time), so the probe has only that word to learn: in every held-out source prompt it is the word that
    added the most α, and the words' α add up to α(prompt) − α("")."""
    pipe = BUILDERS[kind]()
    concept = fit_planted(pipe)
    assert not any(d["gated"] for d in concept.config.diagnostics.values())
    scaler = next(iter(concept.sites.values())).scaler
    held = [f"a {t} beside a banana" for t in HELD]
    with steer(pipe, {concept: 1.0}) as handle:
        for prompt in held:
            words = handle.prompt_alpha(prompt)
            assert [w for w, _ in words] == prompt.split()
            assert max(words, key=lambda wv: wv[1])[0] == "banana", words
            logits = handle.prompt_alpha(prompt, logits=True)
            pooled = collect_prompt_embeddings(pipe, [prompt, ""])  # (2, D)
            logit = pooled @ scaler.weight + scaler.bias  # (2,)
            tol = 1e-6 * (pooled.abs() @ scaler.weight.abs() + scaler.bias.abs()).max().item()  # float32 rounding
            assert abs(sum(v for _, v in logits) - (logit[0] - logit[1]).item()) < tol
            alpha = logit.sigmoid()  # σ′ ≤ ¼: α rounds off a quarter as much
            assert abs(sum(v for _, v in words) - (alpha[0] - alpha[1]).item()) < tol / 4


def test_the_unconditional_half_and_plain_steering_follow_the_cfg_and_adaptive_rules():
    pipe = tiny_sd()
    concept = fit_concept(pipe, [SOURCE.format(t) for t in THINGS[:8]], [TARGET.format(t) for t in THINGS[:8]],
                          [CONTROL.format(t) for t in THINGS[:8]], scaler="prompt", num_inference_steps=2,
                          progress=False)
    prompts = [SOURCE.format("piano"), CONTROL.format("piano")]
    with steer(pipe, {concept: 1.0}, record_alpha=True) as handle:
        run(pipe, prompts)
    a = handle.records[0].alpha  # (4, N): uncond src, uncond ctl, cond src, cond ctl
    assert torch.equal(a[:2], a[2:]) and a[2, 0] > a[3, 0]
    with steer(pipe, {concept: 1.0}, record_alpha=True, adaptive=False) as plain:
        run(pipe, prompts)
    assert all(torch.equal(r.alpha, torch.ones_like(r.alpha)) for r in plain.records)
    with pytest.raises(DsasError, match="adaptive=True"):
        plain.prompt_alpha(prompts[0])


def test_dsas_fit_with_the_prompt_scaler_writes_a_prompt_concept(tmp_path, capsys):
    tiny_sd().save_pretrained(tmp_path / "pipe")
    for name, fmt in (("src", SOURCE), ("tgt", TARGET), ("ctl", CONTROL)):
        (tmp_path / f"{name}.txt").write_text("\n".join(fmt.format(t) for t in THINGS[:8]) + "\n")
    args = ["fit", "--model", str(tmp_path / "pipe"), "--source", str(tmp_path / "src.txt"), "--target",
            str(tmp_path / "tgt.txt"), "--steps", "2", "--scaler", "prompt", "--out", str(tmp_path / "c")]
    assert main(args) == 2 and "--control" in capsys.readouterr().err
    assert main(args + ["--control", str(tmp_path / "ctl.txt")]) == 0
    concept = Concept.from_pretrained(tmp_path / "c")
    assert concept.config.scaler == "prompt" and concept.config.scaler_input_width == 32
    assert all(isinstance(s.scaler, PromptScaler) for s in concept.sites.values())


def test_a_prompts_alpha_is_computed_once_per_pipeline_call_while_its_text_tensor_is_unchanged(monkeypatch):
    from dsas_diffusion.bench import bench_concept, prompt_bench_concept
    from dsas_diffusion.pipeline import _StepTracker

    pipe = tiny_sd()
    concept = prompt_bench_concept(pipe.unet, bench_concept(pipe.unet))
    computed, alpha_of = [], PromptScaler.input_alpha
    monkeypatch.setattr(PromptScaler, "input_alpha", lambda self, *a: computed.append(1) or alpha_of(self, *a))
    images = {}
    for kept in (True, False):
        if not kept:  # every step pools the text anew: a new input each call, so α computed every call
            monkeypatch.setattr(_StepTracker, "pooled", lambda self, text: text.float().mean(1))
        with steer(pipe, {concept: 2.0}) as handle, torch.no_grad():
            images[kept] = [run(pipe, p, steps=3) for p in (["a cat", "a dog"], ["a red house"])]
            assert handle.context["prompt_pooled"].shape == (2, 32)  # the last call: one prompt, CFG-doubled
        images[kept, "calls"] = len(computed)
        computed.clear()
    assert images[True, "calls"] == 2 and images[False, "calls"] == 6  # once per pipeline call, against per step
    assert all(torch.equal(a, b) for a, b in zip(images[True], images[False]))
    unsteered = run(pipe, ["a cat", "a dog"], steps=3)
    assert not torch.equal(images[True][0], unsteered)

    monkeypatch.undo()
    tracker = _StepTracker(pipe, pipe.unet, [concept])
    text = torch.randn(2, 5, 32)
    first = tracker.pooled(text)
    assert tracker.pooled(text) is first and torch.equal(first, text.mean(1))
    other = torch.randn(2, 5, 32)
    assert tracker.pooled(other) is not first and tracker.pooled(text) is first  # true CFG's two texts alternate
    text.add_(1.0)  # changed in place: pooled anew
    again = tracker.pooled(text)
    assert again is not first and torch.equal(again, text.mean(1))
    with torch.inference_mode():
        frozen = torch.randn(2, 5, 32)
        assert tracker.pooled(frozen) is not tracker.pooled(frozen)  # no version counter: never kept
