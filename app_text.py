"""The app's Text tab: a language model continues a prompt, unsteered beside steered, each token coloured by its α;
fit a text concept; evaluate DSAS against plain steering. Wiring only: the logic lives in
``dsas_transformers.studio``."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app_widgets import (Sliders, bundled_prompts, concept_choices, fail, fitted_message, parse_strengths,
                         strengths_of)
from dsas_core import DsasError
from dsas_transformers.sites import ROLES
from dsas_transformers.studio import E2E_RETAIN_WEIGHT, TextRequest, TextStudio

DEFAULT_TEXT_PROMPT = "feeling grumpy about the bread , the pirate shoved the door and said"  # the demo LM's world


class TextTab:
    """The Text tab: continue a prompt with a language model, unsteered beside steered, tokens coloured by α; fit
    a text concept from three lists; evaluate one against plain steering. Build it inside ``gr.Blocks``, then
    :meth:`wire` it."""

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
            with gr.Accordion("Strength sweep: DSAS against plain steering", open=False, elem_id="text-sweep-panel"):
                with gr.Row():
                    self.sweep_values = gr.Textbox("0,0.5,1,1.5,2", scale=3,
                                                   label="values (each slider's strength × each value)")
                    self.sweep_btn = gr.Button("Sweep", elem_id="text-sweep-go")
                self.sweep_table = gr.Dataframe(label="the same prompt (and seed): a continuation per value",
                                                interactive=False, wrap=True, elem_id="text-sweep",
                                                column_widths=["10%", "10%", "80%"])
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
                    self.eval_prompts = gr.Textbox(bundled_prompts("lm/trigger.jsonl", 20) if demo else "", lines=6,
                                                   label="prompts that call for the concept, one per line")
                    self.eval_neutral = gr.Textbox(bundled_prompts("lm/neutral.txt", 50) if demo else "", lines=6,
                                                   label="neutral texts (their perplexity: the cost of steering)")
                with gr.Row():
                    self.eval_concept = gr.Dropdown([], label="concept", allow_custom_value=True)  # checked by name
                    self.eval_strengths = gr.Textbox("0,0.5,1,1.5,2,3", label="strengths λ")
                    self.eval_seeds = gr.Number(1, label="seeds", precision=0, minimum=1, maximum=20)
                    self.toxicity = gr.Dropdown(text.scorers, value="demo" if demo else text.scorers[-1],
                                                label="toxicity scorer", info="demo: the demo world's exact lexicon; "
                                                "others offered at launch (python app.py --toxicity MODEL)")
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

    def sweep(self, model, prompt, seed, tokens, decoding, mode, chat, values, names,  # noqa: ANN001, ANN201
              *strengths):
        """The continuation at the sliders' strengths × each value: DSAS's line, then plain steering's."""
        return self._sweep(model, prompt, seed, tokens, decoding, mode, chat, strengths_of(names, strengths), values)

    def api_sweep(self, model, prompt, seed, tokens, decoding, mode, chat, strengths_json,  # noqa: ANN001, ANN201
                  values):
        """The sweep for a JSON object of strengths, e.g. {"detox": 1}, and values such as "0,1,2"."""
        try:
            strengths = parse_strengths(strengths_json)
        except DsasError as err:
            raise fail(err) from None
        return self._sweep(model, prompt, seed, tokens, decoding, mode, chat, strengths, values)

    def _sweep(self, model, prompt, seed, tokens, decoding, mode, chat, strengths, values):  # noqa: ANN001, ANN202
        """The sweep's table (``mode`` is ignored: both steerings are shown)."""
        import pandas as pd

        try:
            rows = self.text.sweep(self.request(model, prompt, seed, tokens, decoding, mode, chat, strengths), values)
        except DsasError as err:
            raise fail(err) from None
        return pd.DataFrame([{"strength": v, "steering": s, "continuation": c} for v, s, c in rows])

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

    def wire(self, app: gr.Blocks, pick: Any, added: Any) -> None:
        """Connect the events (``pick``: the Concepts tab's download list; ``added``: the concept just added)."""
        sl = self.sliders
        shown_outputs = [self.plain_out, self.steered_out, self.alpha, self.profile, self.note]
        private = {"api_visibility": "private"}
        sl.wire(app, self.model, pick, shown_outputs)
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
        self.sweep_btn.click(self.sweep, [*common, self.sweep_values, sl.names, *sl.sliders], self.sweep_table,
                             concurrency_limit=self.text.workers, **private)
        gr.Button(visible=False).click(self.api_sweep, [*common, strengths_json, self.sweep_values], self.sweep_table,
                                       api_name="sweep_text", concurrency_limit=self.text.workers)
        for event in (app.load, self.model.change):
            event(lambda m: concept_choices(self.text, m, "detox"), self.model, self.eval_concept, **private)
        self.eval_concept.focus(lambda m: concept_choices(self.text, m), self.model, self.eval_concept, **private)
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
        return self.sliders.on_added(self.model, pick, added)
