"""Which fitting options work best? Measured on the demo world rather than assumed.

    python -m dsas_diffusion.demo.study                      # every example × every variant (~40 min, one thread)
    python -m dsas_diffusion.demo.study --only no-green --variants "paper;components 16"

Each variant fits the example with ``mean_shift`` and one change from the paper's settings (5 principal components,
every denoising step pooled, every attention output, fitted at once, the per-position ``probe``), then sweeps λ
over a smaller evaluation than ``dsas eval``'s report (16 steer + 16 control prompts, one seed). Two figures per
run: the concept score DSAS reaches while keeping ≥ 95 % of control attributes, as a fraction of plain steering's
best (``reach``), and the control attributes DSAS keeps more than plain at matched concept score (``gain``). The
table goes to ``runs/study.md``; the library's defaults and the examples' settings follow its winners.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .concepts import EXAMPLES

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"n_components": 5},
    "components 16": {"n_components": 16},
    "components 16, step 0": {"n_components": 16, "collect_steps": [0]},
    "components 16, cross-attention": {"n_components": 16, "sites": r"attn2$"},
    "components 16, incremental": {"n_components": 16, "incremental": 4},
    "prompt scaler": {"n_components": 5, "scaler": "prompt"},
    "components 16, prompt scaler": {"n_components": 16, "scaler": "prompt"},
}


def run_variant(pipe: Any, name: str, variant: str, strengths: list[float], n_prompts: int) -> dict[str, Any]:
    """Fit one example with one variant's options and compare DSAS with plain steering."""
    from ..evaluate import EvalSettings, compare, summarize, sweep
    from ..fit import fit_concept

    example = EXAMPLES[name]
    options = {"scaler": "probe", **VARIANTS[variant]}
    start = time.perf_counter()
    concept = fit_concept(pipe, example.source, example.target, example.control, transform="mean_shift",
                          name=name, batch_size=32, progress=False, **options)
    fit_s = time.perf_counter() - start
    settings = EvalSettings(strengths=strengths, seeds=1, oracle=example.oracle)
    rows, _ = sweep(pipe, concept, example.eval_steer[:n_prompts], example.eval_control[:n_prompts], settings,
                    progress=False)
    curves = summarize(rows, "oracle_hit", "oracle_unchanged")
    result = compare(curves)
    return {"example": name, "variant": variant, "fit_s": round(fit_s, 1), "curves": curves,
            "reach": result["dsas_reach_ratio"], "gain": result["mean_gain_at_matched_concept"],
            "plain_best": result["best_plain_concept"], "eval_s": round(time.perf_counter() - start - fit_s, 1)}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per example × variant."""
    lines = ["| example | variant | reach (≥ 95 % kept) | gain at matched concept | plain best | fit |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['example']} | {r['variant']} | {r['reach']:.2f} | {r['gain']:+.2f} | "
                     f"{r['plain_best']:.2f} | {r['fit_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the study and write ``runs/study.md`` and ``runs/study.json``."""
    from .loading import load_demo_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated example names")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="variant names separated by ';'")
    parser.add_argument("--strengths", default="0,2,4,8,16")
    parser.add_argument("--prompts", type=int, default=16, help="steer and control prompts each")
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(EXAMPLES)
    variants = [v.strip() for v in args.variants.split(";")]
    unknown = [v for v in variants if v not in VARIANTS] + [n for n in names if n not in EXAMPLES]
    if unknown:
        raise SystemExit(f"unknown example or variant {unknown}; variants: {list(VARIANTS)}, examples: {list(EXAMPLES)}")
    pipe = load_demo_pipeline()
    pipe.set_progress_bar_config(disable=True)
    strengths = [float(s) for s in args.strengths.split(",")]
    results = []
    for name in names:
        for variant in variants:
            results.append(run_variant(pipe, name, variant, strengths, args.prompts))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(table(results))
    (out / "study.json").write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
