"""dsas studio: steer a text-to-image model or a language model with concept sliders, see where DSAS acted, fit
new concepts.

    python app.py                      # the bundled demo models, on http://127.0.0.1:7860
    python app.py --model demo --model stable-diffusion-v1-5/stable-diffusion-v1-5 --workers 1
    python app.py --lm Qwen/Qwen2.5-1.5B  # the Text tab's language model

Wiring only: the logic lives in ``dsas_diffusion.studio`` and ``dsas_transformers.studio``; the Text tab is in
``app_text.py``, the pieces both share in ``app_widgets.py``.
"""

from __future__ import annotations

import argparse
import os
from itertools import groupby
from pathlib import Path
from typing import Any

import gradio as gr

from app_text import TextTab
from app_widgets import (Sliders, bundled_prompts, concept_choices, fail, fitted_message, parse_strengths,
                         strengths_of)
from dsas_core import DsasError
from dsas_core.concept import Concept
from dsas_core.hub import download_concept
from dsas_core.paths import assets_dir
from dsas_core.registry import ConceptRegistry, read_upload
from dsas_diffusion.studio import Request, Studio
from dsas_transformers.studio import TextStudio

DEFAULT_PROMPT = "a red circle on a white background"
NO_SCORER = "none"  # the CLIP picker's choice for scoring by the oracle alone
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


def make_studio(models: list[str], concept_dir: Path, workers: int, clips: list[str] | None = None) -> Studio:
    """The image tabs' state: launch-listed pipelines and CLIPs, bundled + user concepts."""
    registry = ConceptRegistry([assets_dir() / "concepts"], concept_dir)
    return Studio({m: _loader(m) for m in models}, registry, workers=workers, scorers=clips or [])


def make_text_studio(lms: list[str], studio: Studio, workers: int, toxicity: list[str] | None = None) -> TextStudio:
    """The Text tab's state: launch-listed language models and toxicity scorers, sharing the image tabs' concepts
    and load lock."""
    return TextStudio({m: _lm_loader(m) for m in lms}, studio.registry, workers=workers, load_lock=studio.pools.lock,
                      scorers=toxicity or [])


class ImageEvalPanel:
    """The Steer tab's *Evaluate* panel: ``dsas eval``'s sweep of DSAS against plain steering on text boxes. Build
    it inside a tab, then :meth:`wire` it."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        demo = "demo" in studio.models()
        steer, control = (bundled_prompts(f"circles-on-black/eval_{k}.txt", 8) if demo else ""
                          for k in ("steer", "control"))
        with gr.Accordion("Evaluate: DSAS against plain steering", open=False):
            with gr.Row():
                self.steer = gr.Textbox(steer, lines=6, label="steer prompts (where the concept should act), one per "
                                                              "line")
                self.control = gr.Textbox(control, lines=6, label="control prompts (where nothing should change)")
            with gr.Row():
                self.concept = gr.Dropdown([], label="concept", allow_custom_value=True)  # checked by name
                self.strengths = gr.Textbox("0,1,2,3", label="strengths λ")
                self.seeds = gr.Number(1, label="seeds", precision=0, minimum=1, maximum=8)
                self.steps = gr.Number(20, label="steps", precision=0, minimum=1, maximum=200)
                self.clip = gr.Dropdown([*studio.scorers, NO_SCORER], value="demo" if demo else studio.scorers[-1],
                                        label="CLIP", info="offered at launch (python app.py --clip ARCH:PRETRAINED)")
                self.oracle = gr.Textbox("background=black" if demo else "", label="oracle (demo world)",
                                         info="e.g. background=black, colour!=green; empty: none")
                self.go = gr.Button("Evaluate", variant="primary")
            self.verdict = gr.Markdown()
            with gr.Row():
                self.pareto = gr.Image(label="concept score against what is kept", type="filepath",
                                       elem_id="image-pareto")
                self.grid = gr.Image(label="unsteered, then plain steering, then DSAS at each λ", type="filepath")
            self.table = gr.Dataframe(label="every strength", interactive=False)
            self.files = gr.File(label="results", file_count="multiple")

    def evaluate(self, model, concept, steer, control, strengths, seeds, steps, clip, oracle,  # noqa: ANN001, ANN201
                 progress=gr.Progress(track_tqdm=True)):
        """Sweep the strengths with DSAS and plain steering: verdicts, plot, grid, a table, the result files."""
        import pandas as pd

        try:
            if seeds is None or steps is None:
                raise DsasError("the seeds and steps boxes need whole numbers (seeds 1-8, steps 1-200).")
            run = self.studio.evaluate(model, concept, steer, control, strengths, int(seeds), int(steps),
                                       "" if clip in (None, NO_SCORER) else clip, oracle)
        except DsasError as err:
            raise fail(err) from None
        rows = [{"score": family, "method": method, "λ": p["strength"], "concept": round(p["concept"], 3),
                 "kept": round(p["preservation"], 3)}
                for family, curves in run.curves.items() for method in ("dsas", "plain") for p in curves[method]]
        verdict = "  \n".join(run.verdicts) + f"  \n({run.seconds:.1f} s)"
        return verdict, run.files[0], run.files[1], pd.DataFrame(rows), run.files

    def wire(self, app: gr.Blocks, model: Any) -> None:
        """Connect the events (``model``: the Steer tab's model picker)."""
        private = {"api_visibility": "private"}
        for event in (app.load, model.change):
            event(lambda m: concept_choices(self.studio, m, "circles-on-black"), model, self.concept, **private)
        self.concept.focus(lambda m: concept_choices(self.studio, m), model, self.concept, **private)
        self.go.click(self.evaluate, [model, self.concept, self.steer, self.control, self.strengths, self.seeds,
                                      self.steps, self.clip, self.oracle],
                      [self.verdict, self.pareto, self.grid, self.table, self.files], api_name="evaluate",
                      concurrency_limit=self.studio.workers)


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

    def sweep(model, prompt, negative, seed, steps, guidance, mode, strengths, values):  # noqa: ANN001, ANN202
        """The request's image at its strengths × each value, DSAS's row above plain steering's (``mode`` is
        ignored: both rows are drawn)."""
        try:
            req = request(model, prompt, negative, seed, steps, guidance, mode, strengths)
            studio.validate(req)
            return studio.sweep(req, values)
        except DsasError as err:
            raise fail(err) from None

    def sweep_sliders(model, prompt, negative, seed, steps, guidance, mode, values, names,  # noqa: ANN001, ANN202
                      *strengths):
        """The sweep at the sliders' strengths."""
        return sweep(model, prompt, negative, seed, steps, guidance, mode, strengths_of(names, strengths), values)

    def api_sweep(model, prompt, negative, seed, steps, guidance, mode, strengths_json, values):  # noqa: ANN001, ANN202
        """The sweep for a JSON object of strengths, e.g. {"red-to-blue": 1}, and values such as "0,1,2"."""
        try:
            strengths = parse_strengths(strengths_json)
        except DsasError as err:
            raise fail(err) from None
        return sweep(model, prompt, negative, seed, steps, guidance, mode, strengths, values)

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
            with gr.Accordion("Strength sweep: DSAS against plain steering", open=False):
                with gr.Row():
                    sweep_values = gr.Textbox("0,0.5,1,1.5,2", label="values (each slider's strength × each value)",
                                              scale=3)
                    sweep_btn = gr.Button("Sweep")
                sweep_img = gr.Image(label="the same prompt and seed: DSAS's row above plain steering's",
                                     format="png", type="pil", elem_id="sweep")
            image_eval = ImageEvalPanel(studio)
        text_tab = TextTab(text) if text is not None else None
        with gr.Tab("Fit an image concept"):
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
        shown_outputs = [plain_img, steered_img, heat_img, profile, words]
        private = {"api_visibility": "private"}
        sl.wire(app, model, pick, shown_outputs)
        app.load(None, js=ENTER_COMMITS, **private)
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
        sweep_btn.click(sweep_sliders, [*common, sweep_values, sl.names, *sl.sliders], sweep_img,
                        concurrency_limit=studio.workers, **private)
        hidden_sweep = gr.Button(visible=False)
        hidden_sweep.click(api_sweep, [*common, strengths_json, sweep_values], sweep_img, api_name="sweep",
                           concurrency_limit=studio.workers)
        new_slot = sl.on_added(model, pick, added)
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
        image_eval.wire(app, model)
        app.queue(default_concurrency_limit=max(studio.workers, text.workers if text else 1))
    return app


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse flags and launch (``prog``: the name the usage line gives, e.g. 'dsas studio')."""
    parser = argparse.ArgumentParser(
        prog=prog,
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
    parser.add_argument("--clip", action="append", default=None,
                        help="another CLIP (ARCH:PRETRAINED) the Evaluate panel offers (always: demo, ViT-L-14:openai)")
    parser.add_argument("--toxicity", action="append", default=None,
                        help="another toxicity classifier the Text tab's Evaluate panel offers (always: demo, "
                             "s-nlp/roberta_toxicity_classifier)")
    parser.add_argument("--concept-dir", default=os.environ.get("DSAS_CONCEPT_DIR", "concepts"),
                        help="where fitted and uploaded concepts are kept (default: ./concepts)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (needs internet; anyone with the "
                             "link can use the app)")
    parser.add_argument("--workers", type=int, default=2,
                        help="simultaneous generations; each holds its own copy of the pipeline (and of the LM)")
    args = parser.parse_args(argv)
    if args.no_text and args.lm:
        parser.error("--no-text leaves the Text tab out: drop it to serve the --lm models")
    studio = make_studio(args.model or ["demo"], Path(args.concept_dir), args.workers, args.clip)
    text = None if args.no_text else make_text_studio(args.lm or ["demo"], studio, args.workers, args.toxicity)
    for tab in (studio, text):  # the first model of each tab loads while the server starts and the page opens
        if tab is not None:
            tab.preload(tab.models()[0])
    build_app(studio, text).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
