"""Fit the bundled example concept ``assets/concepts/detox`` on the bundled tavern-world LM.

E2E-DSAS (the paper's end-to-end variant): a LinEAS map (ω⊙h + β) and a sigmoid scaler per decoder layer's
residual stream, trained together through the model on the detox texts — the steered toxic texts must match the
friendly counterparts (Wasserstein term) while the control texts stay where they were (retain term). The scaler is
trained while it is applied per token, so α stays near 0 on neutral text; a retain weight of 100 was the best of
1, 5, 20, 50 and 100 on this world (toxicity reduction at ≤ 5% perplexity rise). Deterministic (seed 0, one
thread); about 20 seconds on one CPU core.

Example:

    OMP_NUM_THREADS=1 python -m dsas_transformers.demo.concept

The same concept from the command line (the same tensors and config):

    dsas llm fit --model demo --source assets/prompts/lm/detox_source.txt \\
        --target assets/prompts/lm/detox_target.txt --control assets/prompts/lm/detox_control.txt \\
        --transform lineas --scaler e2e --retain-weight 100 --out assets/concepts/detox

The classifier-probe DSAS concept on the same texts, for comparison:

    dsas llm fit --model demo --source assets/prompts/lm/detox_source.txt \\
        --target assets/prompts/lm/detox_target.txt --control assets/prompts/lm/detox_control.txt \\
        --role mlp_input --out concepts/detox-probe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dsas_core import Concept
from dsas_core.e2e import E2EConfig
from dsas_core.paths import assets_dir

from ..cli import read_prompt_file
from ..fit import fit_concept
from .model import load_demo_lm

RETAIN_WEIGHT = 100.0


def fit_detox(prompts: Path | None = None, retain_weight: float = RETAIN_WEIGHT, steps: int = 300,
              seed: int = 0) -> Concept:
    """The bundled detox concept, fitted from ``detox_{source,target,control}.txt`` in ``prompts``."""
    prompts = prompts or assets_dir() / "prompts" / "lm"
    model, tok = load_demo_lm()
    texts = {k: read_prompt_file(prompts / f"detox_{k}.txt") for k in ("source", "target", "control")}
    return fit_concept(model, tok, texts["source"], texts["target"], texts["control"], transform="lineas",
                       scaler="e2e", name="detox", role="residual", seed=seed,
                       e2e=E2EConfig(retain_weight=retain_weight, steps=steps, seed=seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsas_transformers.demo.concept", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=assets_dir() / "concepts" / "detox")
    p.add_argument("--retain-weight", type=float, default=RETAIN_WEIGHT, help="weight of the control retain term")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    concept = fit_detox(retain_weight=args.retain_weight, steps=args.steps, seed=args.seed)
    print(f"saved {concept.name!r} ({len(concept.config.sites)} sites) to {concept.save_pretrained(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
