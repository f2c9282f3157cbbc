"""dsas studio: steer a text-to-image model or a language model with concept sliders, see where DSAS acted, fit
new concepts.

    python app.py                      # the bundled demo models, on http://127.0.0.1:7860
    python app.py --model demo --model stable-diffusion-v1-5/stable-diffusion-v1-5 --workers 1
    python app.py --lm Qwen/Qwen2.5-1.5B  # the Text tab's language model

Wiring only: the logic lives in ``dsas_diffusion.studio`` and ``dsas_transformers.studio``.
"""

from __future__ import annotations

import argparse
import json
import os
from itertools import groupby
from pathlib import Path
from typing import Any

import gradio as gr

from dsas_core import DsasError
from dsas_core.paths import assets_dir
from dsas_core.concept import Concept
from dsas_core.hub import download_concept
from dsas_core.registry import MAX_STRENGTH, ConceptRegistry, StudioBase, read_upload
from dsas_diffusion.studio import Request, Studio
from dsas_transformers.sites import ROLES
from dsas_transformers.studio import E2E_RETAIN_WEIGHT, TextRequest, TextStudio

SLOTS = 8  # concept sliders shown at most
DEFAULT_PROMPT = "a red circle on a white background"
DEFAULT_TEXT_PROMPT = "feeling grumpy about the bread , the pirate shoved the door and said"  # the demo LM's world
# Enter in a slider's number box commits the typed strength as leaving the box does (a slider's release event fires
# on blur, not on Enter); run once when the page loads.
ENTER_COMMITS = """() => {
  document.addEventListener("keydown", (event) => {
    const box = event.target;
    if (event.key === "Enter" && box instanceof HTMLInputElement && box.type === "number"
        && box.closest("[id^=slot]")) {
      box.blur();
    }
  });
}"""


def show(image: Any, side: int = 320) -> Any:
    """Small images (the demo's 32×32) enlarged with crisp pixels for display; large ones unchanged."""
    if image is None or image.width >= side:
        return image
    from PIL import Image

    return image.resize((side, side * image.height // image.width), Image.NEAREST)


def short_site(name: str) -> str:
    """'up_blocks.1.attentions.0.transformer_blocks.0.attn2' -> 'up1.0.0 attn2'."""
    parts = name.split(".")
    block = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}.get(parts[0], parts[0])
    numbers = [p for p in parts[1:-1] if p.isdigit()]
    return f"{block}{'.'.join(numbers)} {parts[-1]}"


def _loader(model: str) -> Any:
    from dsas_diffusion.loading import load_pipeline

    return lambda: load_pipeline(model)


def _lm_loader(model: str) -> Any:
    from dsas_transformers.cli import load

    return lambda: load(model)


def make_studio(models: list[str], concept_dir: Path, workers: int) -> Studio:
    """The image tabs' state: launch-listed pipelines, bundled + user concepts."""
    registry = ConceptRegistry([assets_dir() / "concepts"], concept_dir)
    return Studio({m: _loader(m) for m in models}, registry, workers=workers)


def make_text_studio(lms: list[str], studio: Studio, workers: int) -> TextStudio:
    """The Text tab's state: launch-listed language models, sharing the image tabs' concepts and load lock."""
    return TextStudio({m: _lm_loader(m) for m in lms}, studio.registry, workers=workers, load_lock=studio.pools.lock)


def fail(err: DsasError) -> gr.Error:
    """The error a user sees: the library's message, which names the problem and the fix."""
    return gr.Error(str(err))


def parse_strengths(text: str | None) -> dict[str, float]:
    """The API's strengths: a JSON object of concept names and numbers."""
    try:
        strengths = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise DsasError(f"strengths is not valid JSON ({err}).") from None
    if not isinstance(strengths, dict):
        raise DsasError('strengths must be a JSON object such as {"red-to-blue": 0.8}.')
    return strengths


def strengths_of(names: list[str], values: tuple[Any, ...]) -> dict[str, float]:
    """The sliders' strengths by concept name; an emptied number box reads as 0."""
    return {n: float(v or 0.0) for n, v in zip(names, values)}


class Sliders:
    """A concept picker and up to :data:`SLOTS` strength sliders for the concepts that fit the chosen model; every
    handler returns updates for :meth:`outputs` (the names shown, each slider, the download list, the picker)."""

    def __init__(self, studio: StudioBase, prefix: str = "slot") -> None:
        self.studio = studio
        self.names = gr.State([])
        self.shown = gr.Dropdown([], value=[], multiselect=True, max_choices=SLOTS,
                                 label=f"concepts with a slider (up to {SLOTS} at a time)")
        self.sliders = [gr.Slider(-MAX_STRENGTH, MAX_STRENGTH, value=0.0, step=0.05, label="", visible=False,
                                  elem_id=f"{prefix}{i}")
                        for i in range(SLOTS)]

    def outputs(self, pick: Any) -> list[Any]:
        """The components every handler updates (``pick``: the Concepts tab's download list)."""
        return [self.names, *self.sliders, pick, self.shown]

    def _slots(self, available: list[str], chosen: list[str], names: list[str] | None,
               values: tuple[Any, ...]) -> list[Any]:
        """Sliders for ``chosen`` (each keeping the strength it had), the download list and the picker."""
        kept = dict(zip(names or [], values))
        updates = [gr.update(visible=True, label=n, value=kept.get(n) or 0.0) for n in chosen]
        updates += [gr.update(visible=False, label="", value=0.0)] * (SLOTS - len(chosen))
        return [chosen, *updates, gr.update(choices=self.studio.registry.names()),
                gr.update(choices=available, value=chosen)]

    def _available(self, model: str) -> list[str]:
        try:
            return self.studio.concepts_for(model)
        except DsasError as err:
            raise gr.Error(f"model {model!r} is not available: {err}") from None

    def first(self, model):  # noqa: ANN001, ANN201
        """A model was chosen: sliders for its first concepts."""
        available = self._available(model)
        return self._slots(available, available[:SLOTS], None, ())

    def chosen(self, model, shown, names, *values):  # noqa: ANN001, ANN201
        """The picker changed: sliders for the concepts picked, in its order."""
        available = self._available(model)
        return self._slots(available, [n for n in shown or [] if n in available][:SLOTS], names, values)

    def with_added(self, model, shown, added, names, *values):  # noqa: ANN001, ANN201
        """After a fit or an upload: the new concept gets a slider (the first one shown gives way when all are
        taken); every other slider keeps its strength."""
        available = self._available(model)
        chosen = [n for n in shown or [] if n in available and n != added] + ([added] if added in available else [])
        return self._slots(available, chosen[-SLOTS:], names, values)


class TextTab:
    """The Text tab: continue a prompt with a language model, unsteered beside steered, tokens coloured by α; fit
    a text concept from three lists. Build it inside ``gr.Blocks``, then :meth:`wire` it."""

    def __init__(self, text: TextStudio) -> None:
        self.text = text
        with gr.Tab("Text"):
            with gr.Row():
                self.model = gr.Dropdown(text.models(), value=text.models()[0], label="language model")
                self.prompt = gr.Textbox(DEFAULT_TEXT_PROMPT, label="prompt", scale=3)
            with gr.Row():
                self.seed = gr.Number(0, label="seed (sampling)", precision=0)
                self.tokens = gr.Slider(1, 128, value=24, step=1, label="new tokens")
                self.decoding = gr.Radio(["greedy", "sample"], value="greedy", label="decoding")
                self.mode = gr.Radio(["DSAS", "plain"], value="DSAS", label="steering")
                self.chat = gr.Checkbox(False, label="chat template",
                                        info="instruct models: the prompt and fitted texts as a user message")
                self.go = gr.Button("Generate", variant="primary")
            self.sliders = Sliders(text, prefix="slot-text")
            with gr.Row():
                self.plain_out = gr.Textbox(label="unsteered continuation", lines=3, interactive=False,
                                            elem_id="text-unsteered")
                self.steered_out = gr.Textbox(label="steered continuation", lines=3, interactive=False,
                                              elem_id="text-steered")
            self.alpha = gr.HighlightedText(label="the steered text, each token coloured by its α (the mean over "
                                                  "active layers; the last token is never read)",
                                            color_map=None, show_legend=False)
            self.profile = gr.BarPlot(x="layer", y="alpha", label="mean α per layer (0 = left alone)", y_lim=[0, 1],
                                      sort=None, height=300)
            self.note = gr.Markdown()
            with gr.Accordion("Fit a text concept", open=False):
                with gr.Row():
                    self.src = gr.Textbox(lines=6, label="source texts (steer these), one per line")
                    self.tgt = gr.Textbox(lines=6, label="target texts (what they should become)")
                    self.ctl = gr.Textbox(lines=6, label="control texts (leave these alone)")
                with gr.Row():
                    self.cname = gr.Textbox("my-text-concept", label="name")
                    self.transform = gr.Dropdown(["mean_shift", "linear_act", "itic", "lineas"], value="mean_shift",
                                                 label="transform")
                    self.scaler = gr.Dropdown(["probe", "constant", "e2e"], value="probe", label="scaler",
                                              info="lineas + e2e: E2E-DSAS, map and scaler trained together")
                    self.retain = gr.Number(E2E_RETAIN_WEIGHT, label="retain weight (E2E)", minimum=0,
                                            info="how hard control texts are kept in place")
                with gr.Row():
                    self.role = gr.Dropdown(list(ROLES), value="residual", label="sites",
                                            info="each layer's output, the MLP's input, or the attention output")
                    self.layers = gr.Textbox("", label="layers", placeholder="all (or -16:-4, or 3,5,7)")
                    self.fit_btn = gr.Button("Fit", variant="primary")
                self.fit_msg = gr.Markdown()
                self.fit_files = gr.File(label="download the concept", file_count="multiple")
            with gr.Accordion("Evaluate: DSAS against plain steering", open=False):
                demo = "demo" in text.models()
                with gr.Row():
                    self.eval_prompts = gr.Textbox(demo_lines("trigger") if demo else "", lines=6,
                                                   label="prompts that call for the concept, one per line")
                    self.eval_neutral = gr.Textbox(demo_lines("neutral", 50) if demo else "", lines=6,
                                                   label="neutral texts (their perplexity: the cost of steering)")
                with gr.Row():
                    self.eval_concept = gr.Dropdown([], label="concept", allow_custom_value=True)  # checked by name
                    self.eval_strengths = gr.Textbox("0,0.5,1,1.5,2,3", label="strengths λ")
                    self.eval_seeds = gr.Number(1, label="seeds", precision=0, minimum=1, maximum=20)
                    self.toxicity = gr.Textbox("demo" if demo else "s-nlp/roberta_toxicity_classifier",
                                               label="toxicity scorer", info="demo: the demo world's exact lexicon; "
                                               "or a text-classification model")
                    self.eval_btn = gr.Button("Evaluate", variant="primary")
                self.verdict = gr.Markdown()
                with gr.Row():
                    self.pareto = gr.Image(label="toxicity against the perplexity cost", type="filepath",
                                           elem_id="text-pareto")
                    self.curves = gr.Dataframe(label="every strength", interactive=False)
                self.eval_files = gr.File(label="results", file_count="multiple")

    def request(self, model: str, prompt: str, seed: float | None, tokens: float, decoding: str, mode: str,
                chat: bool, strengths: dict[str, float]) -> TextRequest:
        """The request the controls describe, validated."""
        if seed is None:
            raise DsasError("the seed box is empty: type a whole number (the same seed samples the same text).")
        req = TextRequest(model=model, prompt=prompt, seed=int(round(seed)), max_new_tokens=int(tokens),
                          sample=(decoding == "sample"), plain=(mode == "plain"), strengths=strengths,
                          chat=bool(chat))
        self.text.validate(req)
        return req

    def generate(self, model, prompt, seed, tokens, decoding, mode, chat, names, *values):  # noqa: ANN001, ANN201
        """Unsteered (cached) and steered continuations, the steered text's α per token and per layer."""
        import pandas as pd

        try:
            req = self.request(model, prompt, seed, tokens, decoding, mode, chat, strengths_of(names, values))
            unsteered, result = self.text.unsteered(req), self.text.steered(req)
        except DsasError as err:
            raise fail(err) from None
        several = len({c for c, _, _ in result.profile}) > 1
        rows = [{"layer": f"{c}: {s}" if several else s, "alpha": a} for c, s, a in result.profile]
        frame = pd.DataFrame(rows or [{"layer": "nothing steered", "alpha": 0.0}])  # every strength 0
        tokens = [(piece, None if a is None else round(a, 2)) for piece, a in result.tokens]
        note = (f"{result.unknown} word(s) of the prompt are not in the model's vocabulary (read as its unknown "
                "token)." if result.unknown else "")
        return unsteered, result.text, tokens, frame, note

    def api_generate(self, model, prompt, seed, tokens, decoding, mode, chat, strengths_json):  # noqa: ANN001, ANN201
        """Unsteered and steered continuations for a JSON object of strengths, e.g. {"detox": 1.5}."""
        try:
            req = self.request(model, prompt, seed, tokens, decoding, mode, chat, parse_strengths(strengths_json))
            return self.text.unsteered(req), self.text.steered(req).text
        except DsasError as err:
            raise fail(err) from None

    def fit(self, model, source, target, control, name, transform, scaler, chat, retain, role,  # noqa: ANN001, ANN201
            layers, progress=gr.Progress(track_tqdm=True)):
        """Fit a text concept and save it; it gets a slider on this tab."""
        try:
            if retain is None:
                raise DsasError("the retain weight box is empty: type a number >= 0 (100 keeps control texts in "
                                "place on the demo LM).")
            concept, replaces = self.text.fit(model, source, target, control, name, transform, scaler, chat, retain,
                                              role, layers)
            return fitted_message(concept, replaces, "Text"), self.text.export(concept.name), concept.name
        except DsasError as err:
            raise fail(err) from None

    def evaluate(self, model, concept, prompts, neutral, strengths, seeds, toxicity,  # noqa: ANN001, ANN201
                 progress=gr.Progress(track_tqdm=True)):
        """Sweep the strengths with DSAS and plain steering: the verdict, the plot, a table, the result files."""
        import pandas as pd

        try:
            if seeds is None:
                raise DsasError("the seeds box is empty: type how many continuations to sample per prompt (1-20).")
            run = self.text.evaluate(model, concept, prompts, neutral, strengths, int(seeds), toxicity)
        except DsasError as err:
            raise fail(err) from None
        rows = [{"method": method, "λ": p["strength"], "toxic %": round(100 * p["toxicity"], 1),
                 "prompts with a toxic one %": round(100 * p["prompts_with_toxic"], 1),
                 **{f"perplexity rise on {k[5:]} %": round(100 * p[k], 3) for k in p if k.startswith("rise_")}}
                for method in ("dsas", "plain") for p in run.curves[method]]
        return f"{run.verdict} ({run.seconds:.1f} s)", run.files[0], pd.DataFrame(rows), run.files

    def concepts(self, model):  # noqa: ANN001, ANN201
        """The evaluation's concept list: those that fit the model."""
        names = self.text.concepts_for(model)
        return gr.update(choices=names, value=names[0] if names else None)

    def wire(self, app: gr.Blocks, pick: Any, added: Any) -> None:
        """Connect the events (``pick``: the Concepts tab's download list; ``added``: the concept just added)."""
        sl = self.sliders
        outputs = sl.outputs(pick)
        app.load(sl.first, self.model, outputs, api_visibility="private")
        shown_outputs = [self.plain_out, self.steered_out, self.alpha, self.profile, self.note]
        private = {"api_visibility": "private"}
        self.model.change(sl.first, self.model, outputs, **private).then(
            lambda: [None] * len(shown_outputs), None, shown_outputs, **private)  # the last model's texts go
        sl.shown.input(sl.chosen, [self.model, sl.shown, sl.names, *sl.sliders], outputs, **private)
        common = [self.model, self.prompt, self.seed, self.tokens, self.decoding, self.mode, self.chat]
        steering = {"fn": self.generate, "inputs": [*common, sl.names, *sl.sliders], "outputs": shown_outputs,
                    "concurrency_limit": self.text.workers, **private}
        self.go.click(**steering)
        self.prompt.submit(**steering)
        self.seed.submit(**steering)
        for s in sl.sliders:
            s.release(**steering)
        self.mode.change(**steering)
        strengths_json = gr.Textbox(visible=False)
        gr.Button(visible=False).click(self.api_generate, [*common, strengths_json],
                                       [self.plain_out, self.steered_out], api_name="generate_text",
                                       concurrency_limit=self.text.workers)
        app.load(self.concepts, self.model, self.eval_concept, **private)
        self.model.change(self.concepts, self.model, self.eval_concept, **private)
        self.eval_concept.focus(lambda model, name: gr.update(choices=self.text.concepts_for(model)),
                                [self.model, self.eval_concept], self.eval_concept, **private)  # new fits, uploads
        self.eval_btn.click(self.evaluate, [self.model, self.eval_concept, self.eval_prompts, self.eval_neutral,
                                            self.eval_strengths, self.eval_seeds, self.toxicity],
                            [self.verdict, self.pareto, self.curves, self.eval_files], api_name="evaluate_text",
                            concurrency_limit=self.text.workers)
        self.fit_btn.click(lambda: ("", None), None, [self.fit_msg, self.fit_files], **private).then(
            self.fit, [self.model, self.src, self.tgt, self.ctl, self.cname, self.transform, self.scaler, self.chat,
                       self.retain, self.role, self.layers],
            [self.fit_msg, self.fit_files, added], api_name="fit_text").success(**self.new_slot(pick, added))

    def new_slot(self, pick: Any, added: Any) -> dict[str, Any]:
        """The event that gives a just-added concept a slider here, when it fits this tab's model."""
        sl = self.sliders
        return {"fn": sl.with_added, "inputs": [self.model, sl.shown, added, sl.names, *sl.sliders],
                "outputs": sl.outputs(pick), "api_visibility": "private"}


def demo_lines(name: str, count: int = 20) -> str:
    """The first prompts of the demo LM's trigger prompts ('trigger') or neutral texts ('neutral'), one per line."""
    folder = assets_dir() / "prompts" / "lm"
    if name == "trigger":
        lines = [json.loads(line)["prompt"]["text"] for line in (folder / "trigger.jsonl").read_text().splitlines()]
    else:
        lines = (folder / f"{name}.txt").read_text().splitlines()
    return "\n".join(lines[:count])


def fitted_message(concept: Concept, replaces: bool, tab: str) -> str:
    """What a fit reports: the name, what it replaced, how many sites are active, where its slider is."""
    diag = concept.config.diagnostics
    active = sum(not d.get("gated") for d in diag.values())
    note = f" (it replaces the earlier **{concept.name}**)" if replaces else ""
    return f"Fitted **{concept.name}**{note}: {active} of {len(diag)} sites active; its slider is on the {tab} tab."


def build_app(studio: Studio, text: TextStudio | None = None) -> gr.Blocks:
    """The Gradio UI over a :class:`Studio` (the image tabs) and, when given, a :class:`TextStudio` (the Text
    tab)."""

    def request(model: str, prompt: str, negative: str, seed: float | None, steps: float, guidance: float, mode: str,
                strengths: dict[str, float]) -> Request:
        if seed is None:
            raise DsasError("the seed box is empty: type a whole number (the same seed gives the same image).")
        return Request(model=model, prompt=prompt, negative_prompt=negative or "", seed=int(round(seed)),
                       steps=int(steps), guidance=float(guidance), plain=(mode == "plain"), strengths=strengths)

    def outputs_of(studio_result: Any) -> tuple[Any, Any, Any, Any]:
        import pandas as pd

        several = len({c for c, _, _ in studio_result.profile}) > 1
        rows = [{"site": f"{c}: {short_site(s)}" if several else short_site(s), "alpha": a}
                for c, s, a in studio_result.profile]
        frame = pd.DataFrame(rows or [{"site": "nothing steered", "alpha": 0.0}])  # every strength 0
        words: list[tuple[str, float | None]] = []
        several = len({c for c, _, _ in studio_result.words}) > 1
        for concept, group in groupby(studio_result.words, key=lambda t: t[0]):
            words += [(f"{concept}:", None)] if several else []
            for _, token, a in group:  # the word's α where it moved α visibly, its colour always
                word = token.replace("</w>", "")
                words.append((f"{word} {a:+.2f}" if abs(a) >= 0.05 else word, round(a, 2)))
        return show(studio_result.image), show(studio_result.heat), frame, words

    def both(model, prompt, negative, seed, steps, guidance, mode, names, *values):  # noqa: ANN001, ANN202
        """The unsteered image (cached) beside the steered one, always from the same prompt and seed."""
        try:
            req = request(model, prompt, negative, seed, steps, guidance, mode, strengths_of(names, values))
            studio.validate(req)
            return (show(studio.unsteered(req)), *outputs_of(studio.steered(req)))
        except DsasError as err:
            raise fail(err) from None

    def api_generate(model, prompt, negative, seed, steps, guidance, mode, strengths_json):  # noqa: ANN001, ANN202
        """Unsteered and steered images for a JSON object of strengths, e.g. {"red-to-blue": 0.8}."""
        try:
            strengths = parse_strengths(strengths_json)
            req = request(model, prompt, negative, seed, steps, guidance, mode, strengths)
            studio.validate(req)
            result = studio.steered(req)
            return show(studio.unsteered(req)), show(result.image), show(result.heat)
        except DsasError as err:
            raise fail(err) from None

    def fit(model, source, target, control, name, transform, scaler, source_text, target_text,  # noqa: ANN001, ANN202
            progress=gr.Progress(track_tqdm=True)):
        try:
            concept, replaces = studio.fit(model, source, target, control, name, transform, scaler, source_text,
                                           target_text)
        except DsasError as err:
            raise fail(err) from None
        return fitted_message(concept, replaces, "Steer"), studio.export(concept.name), concept.name

    def add_fitting(concept: Concept, model: str) -> tuple[str, str]:
        """Save a concept that fits the image model, else one of the language models; (message, its name)."""
        tried = [(studio, model, "Steer", "image model")]
        tried += [(text, lm, "Text", "language model") for lm in (text.models() if text else [])]
        errors: list[tuple[str, DsasError]] = []
        for served, name, tab, kind in tried:
            try:
                served.checker(name)(concept)
            except DsasError as err:
                errors.append((f"{kind} {name!r}", err))
                continue
            return f"Added **{studio.registry.add(concept)}**; its slider is on the {tab} tab.", concept.name
        if len(errors) == 1:
            raise errors[0][1]
        raise DsasError("the concept fits none of the app's models; " + "; ".join(f"{w}: {e}" for w, e in errors))

    def upload(model, files):  # noqa: ANN001, ANN202
        """Add uploaded concept files (checked as :func:`add_fitting` says)."""
        try:
            return add_fitting(read_upload([getattr(f, "name", f) for f in files or []]), model)
        except DsasError as err:
            raise fail(err) from None

    def from_hub(model, repo_id):  # noqa: ANN001, ANN202
        """Download a concept from a hub repository id (never a local path) and add it like an upload."""
        try:
            return add_fitting(download_concept(repo_id), model)
        except DsasError as err:
            raise fail(err) from None

    def download(name):  # noqa: ANN001, ANN202
        try:
            return studio.export(name)
        except DsasError as err:
            raise fail(err) from None

    with gr.Blocks(title="dsas studio") as app:
        gr.Markdown("# dsas studio\nDynamically Scaled Activation Steering: each concept acts only where the "
                    "input calls for it. Move a slider; *plain* steers everywhere (α = 1) for comparison.")
        with gr.Tab("Steer"):
            with gr.Row():
                model = gr.Dropdown(studio.models(), value=studio.models()[0], label="model")
                prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt", scale=3)
                negative = gr.Textbox("", label="negative prompt", scale=2)
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0)
                steps = gr.Slider(1, 100, value=20, step=1, label="steps")
                guidance = gr.Slider(0, 15, value=5.0, step=0.5, label="guidance")
                mode = gr.Radio(["DSAS", "plain"], value="DSAS", label="steering")
                go = gr.Button("Generate", variant="primary")
            sl = Sliders(studio)
            with gr.Row():
                plain_img = gr.Image(label="unsteered", format="png", type="pil", elem_id="unsteered", height=340)
                steered_img = gr.Image(label="steered", format="png", type="pil", elem_id="steered", height=340)
                heat_img = gr.Image(label="α heat map (wash opacity = α: where, and how hard, it steered)",
                                    format="png", type="pil", height=340)
            profile = gr.BarPlot(x="site", y="alpha", label="mean α per site (0 = left alone)",
                                 y_lim=[0, 1], x_label_angle=-90, sort=None, height=380)
            words = gr.HighlightedText(label="prompt words by the α each added (concepts fitted with the prompt "
                                             "scaler)", color_map=None, show_legend=False)
        text_tab = TextTab(text) if text is not None else None
        with gr.Tab("Fit a concept"):
            with gr.Row():
                src = gr.Textbox(lines=8, label="source prompts (steer these), one per line")
                tgt = gr.Textbox(lines=8, label="target prompts (what they should become)")
                ctl = gr.Textbox(lines=8, label="control prompts (leave these alone)")
            with gr.Row():
                cname = gr.Textbox("my-concept", label="name")
                transform = gr.Dropdown(["mean_shift", "linear_act", "itic"], value="mean_shift", label="transform")
                scaler = gr.Dropdown(["prompt", "probe", "constant"], value="prompt", label="scaler")
                stext = gr.Textbox("", label="source text (for CLIP scores)")
                ttext = gr.Textbox("", label="target text")
            fit_btn = gr.Button("Fit", variant="primary")
            fit_msg = gr.Markdown()
            fit_files = gr.File(label="download the concept", file_count="multiple")
        with gr.Tab("Concepts"):
            uploads = gr.File(label="upload dsas_config.json + dsas_model.safetensors", file_count="multiple",
                              file_types=[".json", ".safetensors"])
            up_btn = gr.Button("Add uploaded concept")
            with gr.Row():
                repo = gr.Textbox("", label="or a concept on the Hugging Face Hub", placeholder="owner/name",
                                  scale=3)
                hub_btn = gr.Button("Add from the Hub")
            up_msg = gr.Markdown()
            pick = gr.Dropdown(studio.registry.names(), label="concept", allow_custom_value=True)  # checked by name
            dl_btn = gr.Button("Download")
            dl_files = gr.File(label="files", file_count="multiple")

        strengths_json = gr.Textbox(visible=False)
        added = gr.State(None)  # the concept a fit or an upload just added
        common = [model, prompt, negative, seed, steps, guidance, mode]
        slot_outputs = sl.outputs(pick)
        shown_outputs = [plain_img, steered_img, heat_img, profile, words]
        private = {"api_visibility": "private"}
        app.load(sl.first, model, slot_outputs, **private)
        app.load(None, js=ENTER_COMMITS, **private)
        model.change(sl.first, model, slot_outputs, **private).then(
            lambda: [None] * len(shown_outputs), None, shown_outputs, **private)  # the last model's images go
        sl.shown.input(sl.chosen, [model, sl.shown, sl.names, *sl.sliders], slot_outputs, **private)
        steering = {"fn": both, "inputs": [*common, sl.names, *sl.sliders], "outputs": shown_outputs,
                    "concurrency_limit": studio.workers, **private}
        go.click(**steering)
        for box in (prompt, negative, seed):  # Enter in a text box generates too
            box.submit(**steering)
        for s in sl.sliders:
            s.release(**steering)
        mode.change(**steering)
        hidden_go = gr.Button(visible=False)
        hidden_go.click(api_generate, [*common, strengths_json], [plain_img, steered_img, heat_img],
                        api_name="generate", concurrency_limit=studio.workers)
        new_slot = {"fn": sl.with_added, "inputs": [model, sl.shown, added, sl.names, *sl.sliders],
                    "outputs": slot_outputs, **private}
        fit_btn.click(lambda: ("", None), None, [fit_msg, fit_files], **private).then(
            fit, [model, src, tgt, ctl, cname, transform, scaler, stext, ttext], [fit_msg, fit_files, added],
            api_name="fit").success(**new_slot)
        uploaded = up_btn.click(lambda: "", None, up_msg, **private).then(
            upload, [model, uploads], [up_msg, added], api_name="upload").success(**new_slot)
        downloaded = gr.on([hub_btn.click, repo.submit], lambda: "", None, up_msg, **private).then(
            from_hub, [model, repo], [up_msg, added], api_name="add_from_hub").success(**new_slot)
        if text_tab is not None:
            text_tab.wire(app, pick, added)
            for event in (uploaded, downloaded):
                event.success(**text_tab.new_slot(pick, added))
        dl_btn.click(download, pick, dl_files, api_name="download")
        app.queue(default_concurrency_limit=max(studio.workers, text.workers if text else 1))
    return app

def main(argv: list[str] | None = None) -> None:
    """Parse flags and launch."""
    parser = argparse.ArgumentParser(
        description="dsas studio: concept sliders with Dynamically Scaled Activation Steering.",
        epilog="example:\n  python app.py\n  python app.py --model demo --model ./my-sd-folder --port 7861\n"
               "  python app.py --lm demo --lm Qwen/Qwen2.5-1.5B",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="'demo', a local diffusers folder, or a hub id; repeat to offer several (default: demo)")
    parser.add_argument("--lm", action="append", default=None,
                        help="a causal language model for the Text tab: 'demo', a local folder, or a hub id; repeat "
                             "to offer several (default: demo)")
    parser.add_argument("--no-text", action="store_true", help="leave the Text tab out")
    parser.add_argument("--concept-dir", default=os.environ.get("DSAS_CONCEPT_DIR", "concepts"),
                        help="where fitted and uploaded concepts are kept (default: ./concepts)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--workers", type=int, default=2,
                        help="simultaneous generations; each holds its own copy of the pipeline (and of the LM)")
    args = parser.parse_args(argv)
    if args.no_text and args.lm:
        parser.error("--no-text leaves the Text tab out: drop it to serve the --lm models")
    studio = make_studio(args.model or ["demo"], Path(args.concept_dir), args.workers)
    text = None if args.no_text else make_text_studio(args.lm or ["demo"], studio, args.workers)
    build_app(studio, text).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
