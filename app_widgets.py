"""Pieces the app's tabs share: error display, strength parsing, the concept sliders, messages, prompt lists."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from dsas_core import DsasError
from dsas_core.concept import Concept
from dsas_core.paths import assets_dir
from dsas_core.registry import MAX_STRENGTH, StudioBase
from dsas_transformers.evaluate import read_prompts

SLOTS = 8  # concept sliders shown at most


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
        return fitting_concepts(self.studio, model)

    def wire(self, app: gr.Blocks, model: Any, pick: Any, cleared: list[Any]) -> None:
        """The sliders follow the model picker (on page load too; the ``cleared`` outputs of the last model go) and
        the concept picker."""
        private = {"api_visibility": "private"}
        outputs = self.outputs(pick)
        app.load(self.first, model, outputs, **private)
        model.change(self.first, model, outputs, **private).then(lambda: [None] * len(cleared), None, cleared,
                                                                  **private)
        self.shown.input(self.chosen, [model, self.shown, self.names, *self.sliders], outputs, **private)

    def on_added(self, model: Any, pick: Any, added: Any) -> dict[str, Any]:
        """The event that gives a just-added concept (``added``) a slider, when it fits ``model``."""
        return {"fn": self.with_added, "inputs": [model, self.shown, added, self.names, *self.sliders],
                "outputs": self.outputs(pick), "api_visibility": "private"}

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


def fitting_concepts(studio: StudioBase, model: str) -> list[str]:
    """The concepts that fit ``model``, or the error a user sees when the model cannot be loaded."""
    try:
        return studio.concepts_for(model)
    except DsasError as err:
        raise gr.Error(f"model {model!r} is not available: {err}") from None


def fitted_message(concept: Concept, replaces: bool, tab: str) -> str:
    """What a fit reports: the name, what it replaced, how many sites are active, where its slider is."""
    diag = concept.config.diagnostics
    active = sum(not d.get("gated") for d in diag.values())
    note = f" (it replaces the earlier **{concept.name}**)" if replaces else ""
    return f"Fitted **{concept.name}**{note}: {active} of {len(diag)} sites active; its slider is on the {tab} tab."


def concept_choices(studio: StudioBase, model: str, prefer: str | None = None) -> Any:
    """A concept picker's choices for ``model``: ``prefer`` chosen when it fits (else the first); without ``prefer``
    the choice is left as it is (a refresh that shows concepts fitted or uploaded since)."""
    names = fitting_concepts(studio, model)
    if prefer is None:
        return gr.update(choices=names)
    return gr.update(choices=names, value=prefer if prefer in names else (names[0] if names else None))


def bundled_prompts(path: str, count: int) -> str:
    """The first ``count`` prompts of a bundled list, one per line: ``assets/prompts/PATH``, a text file or a
    ``.jsonl`` of prompts (``prompt.text``)."""
    return "\n".join(p.text for p in read_prompts(assets_dir() / "prompts" / path)[:count])
