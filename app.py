"""dsas studio: steer a text-to-image model with concept sliders, see where DSAS acted, fit new concepts.

    python app.py                      # the bundled demo model, on http://127.0.0.1:7860
    python app.py --model demo --model stable-diffusion-v1-5/stable-diffusion-v1-5 --workers 1

Wiring only: the logic lives in ``dsas_diffusion.studio``.
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
from dsas_diffusion.studio import MAX_STRENGTH, ConceptRegistry, Request, Studio

SLOTS = 8  # concept sliders shown at most
DEFAULT_PROMPT = "a red circle on a white background"
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


def make_studio(models: list[str], concept_dir: Path, workers: int) -> Studio:
    """The app's state: launch-listed models, bundled + user concepts."""
    registry = ConceptRegistry([assets_dir() / "concepts"], concept_dir)
    return Studio({m: _loader(m) for m in models}, registry, workers=workers)


def build_app(studio: Studio) -> gr.Blocks:
    """The Gradio UI over a :class:`Studio`."""

    def fail(err: DsasError) -> gr.Error:
        return gr.Error(str(err))

    def slots(available: list[str], chosen: list[str], names: list[str] | None, values: tuple[Any, ...]) -> list[Any]:
        """Sliders for ``chosen`` (each keeping the strength it had), the concept picker and the download list."""
        kept = dict(zip(names or [], values))
        updates = [gr.update(visible=True, label=n, value=kept.get(n) or 0.0) for n in chosen]
        updates += [gr.update(visible=False, label="", value=0.0)] * (SLOTS - len(chosen))
        return [chosen, *updates, gr.update(choices=studio.registry.names()),
                gr.update(choices=available, value=chosen)]

    def available_for(model: str) -> list[str]:
        try:
            return studio.concepts_for(model)
        except DsasError as err:
            raise gr.Error(f"model {model!r} is not available: {err}") from None

    def first_slots(model):  # noqa: ANN001, ANN202
        available = available_for(model)
        return slots(available, available[:SLOTS], None, ())

    def chosen_slots(model, shown, names, *values):  # noqa: ANN001, ANN202
        available = available_for(model)
        return slots(available, [n for n in shown or [] if n in available][:SLOTS], names, values)

    def slots_with(model, shown, added, names, *values):  # noqa: ANN001, ANN202
        """After a fit or an upload: the new concept gets a slider (the first one shown gives way when all are
        taken); every other slider keeps its strength."""
        available = available_for(model)
        chosen = [n for n in shown or [] if n in available and n != added] + ([added] if added in available else [])
        return slots(available, chosen[-SLOTS:], names, values)

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
        strengths = {n: float(v or 0.0) for n, v in zip(names, values)}  # an emptied box reads as 0
        try:
            req = request(model, prompt, negative, seed, steps, guidance, mode, strengths)
            studio.validate(req)
            return (show(studio.unsteered(req)), *outputs_of(studio.steered(req)))
        except DsasError as err:
            raise fail(err) from None

    def api_generate(model, prompt, negative, seed, steps, guidance, mode, strengths_json):  # noqa: ANN001, ANN202
        """Unsteered and steered images for a JSON object of strengths, e.g. {"red-to-blue": 0.8}."""
        try:
            strengths = json.loads(strengths_json or "{}")
            if not isinstance(strengths, dict):
                raise DsasError('strengths must be a JSON object such as {"red-to-blue": 0.8}.')
        except json.JSONDecodeError as err:
            raise fail(DsasError(f"strengths is not valid JSON ({err}).")) from None
        try:
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
        diag = concept.config.diagnostics
        active = sum(not d.get("gated") for d in diag.values())
        note = f" (it replaces the earlier **{concept.name}**)" if replaces else ""
        return (f"Fitted **{concept.name}**{note}: {active} of {len(diag)} sites active; its slider is on the Steer "
                "tab.", studio.export(concept.name), concept.name)

    def upload(model, files):  # noqa: ANN001, ANN202
        try:
            name = studio.registry.add_upload([getattr(f, "name", f) for f in files or []], studio.denoiser(model))
        except DsasError as err:
            raise fail(err) from None
        return f"Added **{name}**; its slider is on the Steer tab.", name

    def download(name):  # noqa: ANN001, ANN202
        try:
            return studio.export(name)
        except DsasError as err:
            raise fail(err) from None

    with gr.Blocks(title="dsas studio") as app:
        gr.Markdown("# dsas studio\nDynamically Scaled Activation Steering: each concept acts only where the "
                    "prompt calls for it. Move a slider; *plain* steers everywhere (α = 1) for comparison.")
        names = gr.State([])
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
            shown = gr.Dropdown([], value=[], multiselect=True, max_choices=SLOTS,
                                label=f"concepts with a slider (up to {SLOTS} at a time)")
            sliders = [gr.Slider(-MAX_STRENGTH, MAX_STRENGTH, value=0.0, step=0.05, label="", visible=False,
                                 elem_id=f"slot{i}")
                       for i in range(SLOTS)]
            with gr.Row():
                plain_img = gr.Image(label="unsteered", format="png", type="pil", elem_id="unsteered", height=340)
                steered_img = gr.Image(label="steered", format="png", type="pil", elem_id="steered", height=340)
                heat_img = gr.Image(label="α heat map (wash opacity = α: where, and how hard, it steered)",
                                    format="png", type="pil", height=340)
            profile = gr.BarPlot(x="site", y="alpha", label="mean α per site (0 = left alone)",
                                 y_lim=[0, 1], x_label_angle=-90, sort=None, height=380)
            words = gr.HighlightedText(label="prompt words by the α each added (concepts fitted with the prompt "
                                             "scaler)", color_map=None, show_legend=False)
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
            up_msg = gr.Markdown()
            pick = gr.Dropdown(studio.registry.names(), label="concept", allow_custom_value=True)  # checked by name
            dl_btn = gr.Button("Download")
            dl_files = gr.File(label="files", file_count="multiple")

        strengths_json = gr.Textbox(visible=False)
        added = gr.State(None)  # the concept a fit or an upload just added
        common = [model, prompt, negative, seed, steps, guidance, mode]
        slot_outputs = [names, *sliders, pick, shown]
        shown_outputs = [plain_img, steered_img, heat_img, profile, words]
        private = {"api_visibility": "private"}
        app.load(first_slots, model, slot_outputs, **private)
        app.load(None, js=ENTER_COMMITS, **private)
        model.change(first_slots, model, slot_outputs, **private).then(
            lambda: [None] * len(shown_outputs), None, shown_outputs, **private)  # the last model's images go
        shown.input(chosen_slots, [model, shown, names, *sliders], slot_outputs, **private)
        steering = {"fn": both, "inputs": [*common, names, *sliders], "outputs": shown_outputs,
                    "concurrency_limit": studio.workers, **private}
        go.click(**steering)
        for box in (prompt, negative, seed):  # Enter in a text box generates too
            box.submit(**steering)
        for s in sliders:
            s.release(**steering)
        mode.change(**steering)
        hidden_go = gr.Button(visible=False)
        hidden_go.click(api_generate, [*common, strengths_json], [plain_img, steered_img, heat_img],
                        api_name="generate", concurrency_limit=studio.workers)
        new_slot = {"fn": slots_with, "inputs": [model, shown, added, names, *sliders], "outputs": slot_outputs,
                    **private}
        fit_btn.click(lambda: ("", None), None, [fit_msg, fit_files], **private).then(
            fit, [model, src, tgt, ctl, cname, transform, scaler, stext, ttext], [fit_msg, fit_files, added],
            api_name="fit").success(**new_slot)
        up_btn.click(lambda: "", None, up_msg, **private).then(
            upload, [model, uploads], [up_msg, added], api_name="upload").success(**new_slot)
        dl_btn.click(download, pick, dl_files, api_name="download")
        app.queue(default_concurrency_limit=studio.workers)
    return app


def main(argv: list[str] | None = None) -> None:
    """Parse flags and launch."""
    parser = argparse.ArgumentParser(
        description="dsas studio: concept sliders with Dynamically Scaled Activation Steering.",
        epilog="example:\n  python app.py\n  python app.py --model demo --model ./my-sd-folder --port 7861",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="'demo', a local diffusers folder, or a hub id; repeat to offer several (default: demo)")
    parser.add_argument("--concept-dir", default=os.environ.get("DSAS_CONCEPT_DIR", "concepts"),
                        help="where fitted and uploaded concepts are kept (default: ./concepts)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--workers", type=int, default=2,
                        help="simultaneous generations; each holds its own copy of the pipeline")
    args = parser.parse_args(argv)
    studio = make_studio(args.model or ["demo"], Path(args.concept_dir), args.workers)
    build_app(studio).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
