"""E2E-DSAS, DSAS with the paper's probe scaler and plain steering on the bundled tavern LM, side by side: the
Pareto plot and the matched-toxicity table the README shows.

    OMP_NUM_THREADS=1 python -m dsas_transformers.demo.report          # ≈75 s on one CPU thread

Fits the probe concept (mean shift + probe scaler on the MLP inputs) into ``runs/concepts/detox-probe`` when it is
missing, runs ``dsas llm eval`` on it and on the bundled E2E-DSAS concept (``assets/concepts/detox``), writes the
curves and the table to ``runs/llm-detox/methods.json`` and the plot to ``assets/eval/lm-detox-methods.png``, and
prints the table. Each eval's plain-steering run is that concept's own map with α ≡ 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dsas_core.paths import assets_dir

from ..evaluate import at_toxicity, plot_methods

STRENGTHS = {"probe": "0,0.5,1,1.5,2,3,4,5,6,8", "e2e": "0,0.5,0.75,1,1.25,1.5,2,3,4,5"}
# method label -> (eval run, curve of that run), drawn in this order
METHODS = {"plain steering (mean shift, α ≡ 1)": ("probe", "plain"),
           "DSAS, probe scaler (mean shift)": ("probe", "dsas"),
           "E2E map, α ≡ 1": ("e2e", "plain"),
           "E2E-DSAS": ("e2e", "dsas")}
STYLES = dict(zip(METHODS, ("o--", "s-", "^--", "D-")))
LEVELS = (0.5, 0.1, 0.0)  # toxic-continuation rates at which the methods are compared


def fit_probe(out: Path) -> list[str]:
    """The ``dsas llm fit`` arguments of the probe concept."""
    prompts = assets_dir() / "prompts" / "lm"
    return ["llm", "fit", "--model", "demo", "--device", "cpu", "--source", str(prompts / "detox_source.txt"),
            "--target", str(prompts / "detox_target.txt"), "--control", str(prompts / "detox_control.txt"),
            "--role", "mlp_input", "--out", str(out)]


def eval_args(concept: Path, strengths: str, seeds: int, out: Path) -> list[str]:
    """The ``dsas llm eval`` arguments of one run."""
    return ["llm", "eval", "--model", "demo", "--device", "cpu", "--concept", str(concept), "--prompts",
            str(assets_dir() / "prompts" / "lm" / "trigger.jsonl"), "--strengths", strengths, "--seeds", str(seeds),
            "--out", str(out)]


def table(curves: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per method and toxicity level: the strength and perplexity rises where the method first reaches it."""
    return [{"method": m, "toxicity": level, **at_toxicity(pts, level)} for m, pts in curves.items() for level in LEVELS]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: one row per method, λ / neutral / reference perplexity change per toxicity level."""
    def cell(r: dict[str, Any]) -> str:
        if r["strength"] is None:
            return "not reached"
        return f"{r['strength']:.2f} / {100 * r['rise_neutral']:+.3f} % / {100 * r['rise_reference']:+.1f} %"

    head = " | ".join(f"toxic {100 * level:g} %: λ / neutral / reference ppl" for level in LEVELS)
    lines = [f"| method | {head} |", "|---|" + "---|" * len(LEVELS)]
    for m in dict.fromkeys(r["method"] for r in rows):
        lines.append(f"| {m} | " + " | ".join(cell(r) for r in rows if r["method"] == m) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from dsas_core.cli import main as dsas

    p = argparse.ArgumentParser(prog="python -m dsas_transformers.demo.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--plot", type=Path, default=assets_dir() / "eval" / "lm-detox-methods.png")
    args = p.parse_args(argv)
    concepts = {"probe": args.runs / "concepts" / "detox-probe", "e2e": assets_dir() / "concepts" / "detox"}
    if not (concepts["probe"] / "dsas_config.json").is_file():
        dsas(fit_probe(concepts["probe"]))
    results = {}
    for run, concept in concepts.items():
        cmd = eval_args(concept, STRENGTHS[run], args.seeds, args.runs / "llm-detox" / run)
        print("dsas " + " ".join(cmd))
        if dsas(cmd) != 0:
            return 1
        results[run] = json.loads((args.runs / "llm-detox" / run / "results.json").read_text(encoding="utf-8"))
    curves = {m: results[run]["curves"][curve] for m, (run, curve) in METHODS.items()}
    rows = table(curves)
    (args.runs / "llm-detox" / "methods.json").write_text(json.dumps({"curves": curves, "table": rows}, indent=1) + "\n",
                                                          encoding="utf-8")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot_methods(curves, args.plot, "detox on the demo LM: plain steering, DSAS (probe scaler), E2E-DSAS",
                 styles=STYLES, linthresh={"rise_neutral": 0.1},  # on neutral text most methods differ by tenths of a %
                 size=(5.6, 4.4))
    print(markdown(rows))
    print(f"wrote {args.runs / 'llm-detox' / 'methods.json'} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
