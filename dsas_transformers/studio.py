"""The logic behind the Gradio app's text tab, without gradio: steered continuations, α per token, fitting,
evaluations of DSAS against plain steering.

Concepts are addressed by *name* in a :class:`dsas_core.registry.ConceptRegistry` (shared with the image tabs; each
tab offers the concepts that fit its model); models by the names given at launch (``python app.py --lm NAME``).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsas_core import Concept, DsasError
from dsas_core.e2e import E2EConfig
from dsas_core.files import prompt_lines, strength_list
from dsas_core.registry import ConceptRegistry, StudioBase, check_strengths, check_sweep

from .alpha import token_pieces
from .evaluate import (DEFAULT_CLASSIFIER, EvalSettings, Prompt, compare, load_toxicity, plot_pareto, settings_dict,
                       summarize, sweep, verdict, write_results)
from .fit import generation_pad_id, prompt_ids
from .sites import input_device
from .steer import check_fits, steer
from .sweep import sweep_texts

MAX_NEW_TOKENS = 256
E2E_RETAIN_WEIGHT = 100.0  # the best of 1, 5, 20, 50 and 100 on the tavern world (the bundled detox concept's)
# sampling as in the detoxification protocol of `dsas llm eval`
SAMPLING = {"temperature": 1.0, "top_p": 0.3, "repetition_penalty": 1.2}


@dataclass
class TextRequest:
    """Everything that determines a continuation."""

    model: str
    prompt: str
    seed: int = 0
    max_new_tokens: int = 24
    sample: bool = False  # greedy decoding unless True (then temperature 1.0, top-p 0.3, repetition penalty 1.2)
    plain: bool = False  # plain steering: α ≡ 1
    strengths: dict[str, float] = field(default_factory=dict)
    chat: bool = False  # wrap the prompt as a user message in the tokenizer's chat template (instruct models)

    def unsteered_key(self) -> tuple[Any, ...]:
        return ("text", self.model, self.prompt, self.seed, self.max_new_tokens, self.sample, self.chat)


@dataclass
class TextResult:
    """A continuation, and where it was steered."""

    text: str  # the generated continuation alone
    tokens: list[tuple[str, float | None]] = field(default_factory=list)  # prompt + continuation: (piece, α)
    profile: list[tuple[str, str, float]] = field(default_factory=list)  # (concept, site, mean α)
    unknown: int = 0  # prompt tokens the tokenizer read as its unknown token


class TextStudio(StudioBase):
    """Causal language models by launch name (each loader returns ``(model, tokenizer)``), sharing a registry."""

    flag = "--lm"
    scorer_flag = "--toxicity"
    default_scorers = ("demo", DEFAULT_CLASSIFIER)  # toxicity scorers for evaluations

    def __init__(self, loaders: dict[str, Callable[[], Any]], registry: ConceptRegistry, workers: int = 2,
                 cache_size: int = 64, load_lock: threading.Lock | None = None, scorers: Sequence[str] = ()) -> None:
        super().__init__(loaders, registry, workers, cache_size, load_lock, scorers)
        self._rng = threading.Lock()  # sampling draws from torch's global generator: one sampled run at a time

    def checker(self, model: str) -> Callable[[Concept], object]:
        """Refuses a concept that does not fit the language model (image concepts among them)."""
        lm = self.pool(model).reference[0]
        return lambda concept: check_fits(lm, [concept])

    def validate(self, req: TextRequest) -> None:
        """Refuse out-of-range or malformed requests (API callers included)."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise DsasError("the prompt is empty: type the start of a text for the model to continue.")
        if not 1 <= int(req.max_new_tokens) <= MAX_NEW_TOKENS:
            raise DsasError(f"new tokens must be between 1 and {MAX_NEW_TOKENS}, got {req.max_new_tokens}.")
        check_strengths(req.strengths, self.registry)

    def _run(self, lm: tuple[Any, Any], req: TextRequest) -> tuple[torch.Tensor, int, int]:
        """(prompt + continuation ids (T,), prompt length, prompt tokens read as the unknown token)."""
        model, tokenizer = lm
        ids, unknown = prompt_ids(tokenizer, req.prompt, req.chat)
        ids = ids.to(input_device(model))
        kwargs: dict[str, Any] = {"max_new_tokens": int(req.max_new_tokens), "do_sample": bool(req.sample),
                                  "pad_token_id": generation_pad_id(tokenizer), "attention_mask": torch.ones_like(ids)}
        with contextlib.ExitStack() as sampling, torch.no_grad():
            if req.sample:
                kwargs |= SAMPLING
                sampling.enter_context(self._rng)  # one sampled run at a time ...
                sampling.enter_context(torch.random.fork_rng())  # ... leaving the caller's global generator as it was
                torch.manual_seed(int(req.seed))
            out = model.generate(ids, **kwargs)
        return out[0].cpu(), ids.shape[1], unknown

    def _decode(self, tokenizer: Any, out: torch.Tensor, n_prompt: int) -> str:
        return tokenizer.decode(out[n_prompt:], skip_special_tokens=True)

    def unsteered(self, req: TextRequest) -> str:
        """The continuation without steering (cached: a slider move does not recompute it)."""

        def run() -> str:
            with self.pool(req.model).borrow() as lm:
                out, n, _ = self._run(lm, req)
                return self._decode(lm[1], out, n)

        return self.cached(req.unsteered_key(), run)

    def steered(self, req: TextRequest) -> TextResult:
        """The continuation with every non-zero strength applied, α per token (the largest over the concepts,
        each one's mean over its active layers) and the mean α of every layer."""
        active = {self.registry.get(n): float(v) for n, v in req.strengths.items() if float(v) != 0.0}
        with self.pool(req.model).borrow() as lm:
            tokenizer = lm[1]
            if not active:
                out, n, unknown = self._run(lm, req)
                return TextResult(self._decode(tokenizer, out, n), unknown=unknown)
            with steer(lm[0], active, adaptive=not req.plain, record_alpha=True) as handle:
                out, n, unknown = self._run(lm, req)
            text = self._decode(tokenizer, out, n)
        alpha = torch.full((out.shape[0],), float("nan"))  # (T,): the last token is never read, so never steered
        profile = []
        for concept in active:
            at = handle.alpha_tokens(concept=concept.name)
            mean = at.mean[0]  # (T - 1,)
            alpha[: mean.shape[0]] = torch.fmax(alpha[: mean.shape[0]], mean)
            profile += [(concept.name, s, a) for s, a in at.per_site(row=0).items()]
        special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # an unknown word stays, as unk
        ids = out.tolist()
        tokens = [(piece, None if math.isnan(a) else a)
                  for piece, a, i in zip(token_pieces(tokenizer, ids), alpha.tolist(), ids) if i not in special]
        return TextResult(text, tokens, profile, unknown)

    def sweep(self, req: TextRequest, values: str) -> list[tuple[float, str, str]]:
        """The Text tab's strength sweep: ``[(value, steering, continuation)]``, the request's continuation with
        every strength set × each of ``values`` (comma-separated; 0, the unsteered continuation, always among
        them), DSAS's line then plain steering's at each value (sampled ones all from the request's seed)."""
        concepts, swept = self.sweep_plan(req.strengths, values)
        with self.pool(req.model).borrow() as lm:

            def continuation() -> str:
                out, n, _ = self._run(lm, req)
                return self._decode(lm[1], out, n)

            return sweep_texts(lm[0], concepts, swept, continuation)

    def evaluate(self, model: str, concept: str, prompts: str, neutral: str, strengths: str, seeds: int = 1,
                 toxicity: str = "demo", max_new_tokens: int = 32) -> TextEval:
        """``dsas llm eval`` on text boxes: sampled continuations of ``prompts`` (one per line) for every strength
        with DSAS and with plain steering, scored by ``toxicity`` ('demo': the tavern world's exact lexicon; or a
        text-classification model), and the perplexity of ``neutral`` texts; a Pareto plot and result files."""
        if not 1 <= int(seeds) <= 20 or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
            raise DsasError(f"seeds must be between 1 and 20 and new tokens between 1 and {MAX_NEW_TOKENS}, got "
                            f"{seeds} and {max_new_tokens}.")
        steered = self.registry.get(concept)
        texts = prompt_lines(prompts or "")
        if not texts:
            raise DsasError("no prompts to evaluate: give one prompt per line (prompts that should trigger the "
                            "concept, e.g. toxic continuations).")
        settings = EvalSettings(strengths=strength_list(strengths or "", "strengths", "0,1,2,4"), seeds=int(seeds),
                                max_new_tokens=int(max_new_tokens), toxicity=(toxicity or "demo").strip())
        neutral_texts = prompt_lines(neutral or "")
        check_sweep({"trigger": texts, "neutral": neutral_texts}, settings.strengths)
        start = time.perf_counter()
        with self.pool(model).borrow() as (lm, tokenizer):
            check_fits(lm, [steered])
            device = input_device(lm)
            scorer = self.scorer(settings.toxicity, lambda: load_toxicity(settings.toxicity, device=device))
            with self._rng, torch.random.fork_rng():  # the sweep seeds torch's global generator
                rows, ppl = sweep(lm, tokenizer, steered, [Prompt(t) for t in texts], neutral_texts, settings, scorer)
        seconds = time.perf_counter() - start
        curves = summarize(rows, ppl)
        comparison = compare(curves)
        out = Path(tempfile.mkdtemp(prefix="dsas-eval-"))
        plot_pareto(curves, out / "pareto.png", f"{steered.name} on {model}: DSAS vs plain steering")
        write_results(out, rows, {"concept": steered.name, "model": model, "n_prompts": len(texts),
                                  "settings": settings_dict(settings), "seconds": round(seconds, 2),
                                  "curves": curves, "comparison": comparison})
        return TextEval(curves, comparison, verdict(curves, comparison),
                        [str(out / n) for n in ("pareto.png", "results.csv", "results.json")], seconds)

    def fit(self, model: str, source: str, target: str, control: str, name: str, transform: str, scaler: str,
            chat: bool = False, retain_weight: float = E2E_RETAIN_WEIGHT, role: str = "residual",
            layers: str | None = None, e2e_steps: int = E2EConfig.steps) -> tuple[Concept, bool]:
        """Fit a concept from three newline-separated text lists (each wrapped as a user message in the chat
        template when ``chat``) at the ``role`` sites of ``layers`` (all when empty; "-16:-4", "3,5,7") and save it
        in the user folder; returns it and whether it replaced a concept of the user folder with its name.
        ``transform="lineas", scaler="e2e"`` trains E2E-DSAS with ``retain_weight``."""
        from .fit import fit_concept  # noqa: PLC0415  (fitting's imports only when fitting)

        replaces = self.check_new(name, transform, scaler)  # before the work, not after it
        e2e = E2EConfig(retain_weight=float(retain_weight), steps=int(e2e_steps)) if scaler == "e2e" else None
        with self.pool(model).borrow() as (lm, tokenizer):
            concept = fit_concept(lm, tokenizer, prompt_lines(source or ""), prompt_lines(target or ""),
                                  prompt_lines(control or "") or None, transform=transform, scaler=scaler, name=name,
                                  chat_template=chat, e2e=e2e, role=role, layers=(layers or "").strip() or None)
        self.registry.add(concept)
        return concept, replaces


@dataclass
class TextEval:
    """One evaluation sweep: curves per method, the matched-toxicity comparison, its sentence, the files written."""

    curves: dict[str, list[dict[str, float]]]
    comparison: dict[str, Any]
    verdict: str
    files: list[str]  # pareto.png, results.csv, results.json
    seconds: float

