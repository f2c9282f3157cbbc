"""Write the tavern world's text files: the detox concept's fitting sets and the evaluation prompts.

Example (the bundled files under ``assets/prompts/lm/``):

    python -m dsas_transformers.demo.prompts

Files: ``detox_source.txt`` (trigger contexts with insulting continuations), ``detox_target.txt`` (the same
texts with the insults swapped for friendly words), ``detox_control.txt`` (neutral documents, near misses
included), ``trigger.jsonl`` (RealToxicityPrompts-style evaluation prompts: trigger contexts, each with a
non-toxic reference continuation) and ``neutral.txt`` (neutral documents for perplexity). Every set is drawn
from its own seed, away from the training stream.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from dsas_core.paths import assets_dir

from .world import corpus, counterpart


def write_prompt_files(out: Path, n_fit: int = 32, n_eval: int = 100, n_neutral: int = 200) -> list[Path]:
    """Write the five files to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20_001)
    pairs = [counterpart(rng) for _ in range(n_fit)]
    control = [d.text for d in corpus(n_fit, seed=20_002, trigger=False)]
    rng = random.Random(20_003)
    evals = [counterpart(rng) for _ in range(n_eval)]
    neutral = [d.text for d in corpus(n_neutral, seed=20_004, trigger=False)]
    files = {
        "detox_source.txt": "\n".join(f"{c} {t}" for c, t, _ in pairs),
        "detox_target.txt": "\n".join(f"{c} {n}" for c, _, n in pairs),
        "detox_control.txt": "\n".join(control),
        "trigger.jsonl": "\n".join(json.dumps({"prompt": {"text": c}, "continuation": {"text": n}})
                                   for c, _, n in evals),
        "neutral.txt": "\n".join(neutral),
    }
    paths = []
    for name, text in files.items():
        (out / name).write_text(text + "\n", encoding="utf-8")
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsas_transformers.demo.prompts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=assets_dir() / "prompts" / "lm")
    args = p.parse_args(argv)
    for path in write_prompt_files(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
