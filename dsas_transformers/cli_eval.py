"""``dsas llm eval``: detoxification with DSAS against plain steering over a strength sweep.

Samples continuations of every prompt for every strength with DSAS and with plain steering (α ≡ 1), scores each
with a toxicity classifier (or the bundled world's exact oracle), measures perplexity on neutral text and on the
prompts' reference continuations, and writes ``results.json``, ``results.csv`` and ``pareto.png`` to ``--out``.
The summary names the gentlest DSAS strength that lowers the toxic-continuation rate by at least 70 % (relative to
unsteered) with every perplexity rise within 5 %, and the acceptance passes when plain steering, at that same toxic
rate, raises every perplexity more.
"""

from __future__ import annotations

import argparse
import time

from dsas_core.cli import HelpFormatter, output_folder

EXAMPLE = """examples:
  dsas llm eval --model demo --concept assets/concepts/detox --prompts assets/prompts/lm/trigger.jsonl \\
      --ppl-text assets/prompts/lm/neutral.txt --strengths 0,1,2,3,4,6,8 --seeds 5 --out runs/llm-detox
  dsas llm eval --model Qwen/Qwen2.5-1.5B --concept concepts/detox --prompts realtoxicityprompts.jsonl \\
      --limit 1000 --ppl-text wikipedia.txt --toxicity s-nlp/roberta_toxicity_classifier --out runs/qwen-detox"""


def add_parser(cmds: argparse._SubParsersAction) -> None:
    """Add ``eval`` under ``dsas llm``."""
    p = cmds.add_parser("eval", help="toxicity and perplexity of DSAS vs plain steering over a strength sweep",
                        description=__doc__, epilog=EXAMPLE, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, metavar="MODEL", help="'demo', a hub id or a local folder")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype ('auto': as saved)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--concept", required=True, help="concept folder (e.g. assets/concepts/detox) or hub id")
    p.add_argument("--prompts", required=True,
                   help="RealToxicityPrompts-style .jsonl (prompt.text, optional continuation.text) or a text file")
    p.add_argument("--limit", type=int, default=None, help="keep this many prompts (seeded shuffle)")
    p.add_argument("--ppl-text", default=None, help="neutral texts for perplexity, one per line "
                                                    "(default for --model demo: the bundled neutral.txt)")
    p.add_argument("--strengths", default="0,1,2,4,8", help="comma-separated λ values (0 = unsteered)")
    p.add_argument("--seeds", type=int, default=1, help="continuations per prompt, one per seed")
    p.add_argument("--toxicity", default=None,
                   help="'demo' (the bundled world's lexicon oracle) or a text-classification model "
                        "(default: demo for --model demo, else s-nlp/roberta_toxicity_classifier)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens per continuation")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.3, help="nucleus sampling mass")
    p.add_argument("--repetition-penalty", type=float, default=1.2, help="transformers' repetition penalty")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--out", default="runs/llm-eval", help="output folder")
    p.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    """Run the sweep and write results, csv and the Pareto plot."""
    import torch

    from dsas_core import DsasError
    from dsas_core.hub import load_concept
    from dsas_core.files import strength_list
    from dsas_core.paths import assets_dir

    from .cli import load
    from .evaluate import (DEFAULT_CLASSIFIER, EvalSettings, compare, load_toxicity, plot_pareto, read_prompts,
                           read_texts, settings_dict, summarize, sweep, write_results)
    from .steer import check_fits

    strengths = strength_list(args.strengths)
    if args.seeds < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        raise DsasError("--seeds, --max-new-tokens and --batch-size must be >= 1.")
    if args.limit is not None and args.limit < 1:
        raise DsasError(f"--limit must be >= 1 (prompts to keep), got {args.limit}; leave it out to keep them all.")
    out = output_folder(args.out, "--out")
    demo = args.model == "demo"
    toxicity_spec = args.toxicity or ("demo" if demo else DEFAULT_CLASSIFIER)
    ppl_path = args.ppl_text or (str(assets_dir() / "prompts" / "lm" / "neutral.txt") if demo else None)
    settings = EvalSettings(strengths=strengths, seeds=args.seeds, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                            batch_size=args.batch_size, toxicity=toxicity_spec)
    prompts = read_prompts(args.prompts, limit=args.limit)
    neutral = read_texts(ppl_path) if ppl_path else []
    concept = load_concept(args.concept)
    model, tokenizer = load(args.model, args.dtype, args.device)
    check_fits(model, [concept])  # before the unsteered generations, not after them
    device = next(model.parameters()).device
    toxicity = load_toxicity(toxicity_spec, device=device if device.type != "meta" else "cpu")
    start = time.perf_counter()
    rows, ppl = sweep(model, tokenizer, concept, prompts, neutral, settings, toxicity)
    wall = time.perf_counter() - start
    curves = summarize(rows, ppl)
    comparison = compare(curves)
    meta = {"concept": concept.name, "model": args.model, "prompts": str(args.prompts), "n_prompts": len(prompts),
            "ppl_text": ppl_path, "n_ppl_texts": len(neutral), "settings": settings_dict(settings),
            "seeds": list(range(args.seeds)), "torch": torch.__version__, "seconds": round(wall, 2),
            "curves": curves, "comparison": comparison}
    write_results(out, rows, meta)
    plot_pareto(curves, out / "pareto.png", f"{concept.name} on {args.model}: DSAS vs plain steering")
    _print(curves, comparison)
    print(f"{len(rows)} continuations in {wall:.1f} s; wrote {out / 'results.json'}, results.csv, pareto.png")
    return 0


def _print(curves: dict, comparison: dict) -> None:
    from .evaluate import verdict

    rises = [k for k in curves["dsas"][0] if k.startswith("rise_")]
    head = "".join(f" {k.replace('rise_', 'ppl ' ):>16}" for k in rises)
    print(f"  {'method':<6} {'λ':>6} {'toxic %':>8} {'prompts %':>9}{head}")
    for method in ("dsas", "plain"):
        for p in curves[method]:
            cells = "".join(f" {p[k.replace('rise_', 'ppl_')]:>8.3f} ({100 * p[k]:+5.1f}%)" for k in rises)
            print(f"  {method:<6} {p['strength']:>6g} {100 * p['toxicity']:>8.1f} {100 * p['prompts_with_toxic']:>9.1f}{cells}")
    print(verdict(curves, comparison))
