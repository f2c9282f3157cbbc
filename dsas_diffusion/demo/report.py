"""Fit and evaluate the example concepts with each transform; write the table and plots the README shows.

    python -m dsas_diffusion.demo.report                       # every example × mean_shift, linear_act
    python -m dsas_diffusion.demo.report --only no-green --transforms mean_shift
    python -m dsas_diffusion.demo.report --methods             # circles-on-black: every scaler and E2E-DSAS

Concepts go to ``runs/concepts/TRANSFORM/NAME`` (the bundled ones in ``assets/concepts`` are the mean_shift fits),
evaluation outputs to ``runs/eval/TRANSFORM/NAME``; the summary table to ``runs/demo_report.md`` and the Pareto
plots to ``assets/eval/``. Each example sweeps its own strengths (``--strengths`` overrides them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dsas_core.paths import assets_dir

from .concepts import EXAMPLES, fit_command, write_prompts

METHODS_EXAMPLE = "circles-on-black"
E2E_STRENGTHS = "0,1,1.5,2,3"


def run_one(name: str, transform: str, runs: Path, strengths: str | None, seeds: int, scaler: str | None = None,
            concept_dir: Path | None = None) -> dict:
    """Fit (if missing) and evaluate one example with one transform (and scaler, default the example's); returns
    its comparison summary. ``concept_dir`` evaluates an existing concept instead."""
    from dsas_core.cli import main as dsas

    example = EXAMPLES[name]
    paths = write_prompts(example, assets_dir() / "prompts")
    tag = transform if scaler is None or scaler == example.scaler else f"{transform}-{scaler}"
    fit_s = float("nan")
    if concept_dir is None:
        concept_dir = runs / "concepts" / tag / name
        if not (concept_dir / "dsas_config.json").exists():
            start = time.perf_counter()
            dsas(fit_command(example, paths, concept_dir, transform, scaler))
            fit_s = time.perf_counter() - start
    out = runs / "eval" / tag / name
    cmd = ["eval", "--model", "demo", "--concept", str(concept_dir), "--steer-prompts", str(paths["eval_steer"]),
           "--control-prompts", str(paths["eval_control"]), "--clip", "demo", "--oracle", example.oracle,
           "--strengths", strengths or example.strengths, "--seeds", str(seeds), "--out", str(out)]
    if fit_s == fit_s or not _done(out, cmd):  # a fresh fit (fit_s is not NaN) is always evaluated
        print("dsas " + " ".join(cmd))
        dsas(cmd)
    result = json.loads((out / "results.json").read_text())
    plots = assets_dir() / "eval"
    plots.mkdir(exist_ok=True)
    shutil.copy(out / "pareto.png", plots / f"{name}-{tag}.png")
    shutil.copy(out / "grid.png", plots / f"{name}-{tag}-grid.png")
    steer_rows = [r for r in result["rows"] if r["set"] == "steer" and r["method"] == "dsas"]
    return {"name": name, "transform": tag, "fit_s": fit_s, "eval_s": result["seconds"],
            "images": len(result["rows"]), "comparison": result["comparison"], "curves": result["curves"],
            "others_kept": {s: others_kept(steer_rows, s) for s in sorted({r["strength"] for r in steer_rows})}}


def others_kept(rows: list[dict], strength: float) -> float:
    """Of the steer images at ``strength`` that reached the target, the mean fraction of their two other attributes
    left unchanged (the target attribute changed, so 3 × unchanged fraction / 2); NaN when none reached it."""
    hits = [r for r in rows if r["strength"] == strength and r["oracle_hit"] == 1.0]
    return sum(1.5 * r["oracle_unchanged"] for r in hits) / len(hits) if hits else float("nan")


def _done(out: Path, cmd: list[str]) -> bool:
    """Whether ``out`` already holds the results of this evaluation (same concept, strengths and seeds)."""
    path = out / "results.json"
    if not path.exists():
        return False
    old = json.loads(path.read_text())
    strengths = sorted({float(s) for s in cmd[cmd.index("--strengths") + 1].split(",")} | {0.0})
    return old["settings"]["strengths"] == strengths and old["settings"]["seeds"] == int(cmd[cmd.index("--seeds") + 1])


def table(results: list[dict]) -> str:
    """The README's markdown table."""
    lines = ["| concept | transform | plain best concept (λ) | DSAS best concept keeping ≥ 95 % (λ), of plain's best "
             "| control kept at matched concept: plain → DSAS (mean) | steered images: other attributes kept "
             "| images | eval time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = r["comparison"]["oracle"]
        plain, dsas = r["curves"]["oracle"]["plain"], r["curves"]["oracle"]["dsas"]
        best = max(plain, key=lambda p: p["concept"])
        kept = [p for p in dsas if p["preservation"] >= 0.95]
        reach = max(kept, key=lambda p: p["concept"]) if kept else None
        reach_s = f"{reach['concept']:.2f} ({reach['strength']:g}), {o['dsas_reach_ratio']:.2f}" if reach else "—"
        matched = o["matched"]
        kept_s = (f"{sum(m['plain'] for m in matched) / len(matched):.2f} → {sum(m['dsas'] for m in matched) / len(matched):.2f}"
                  if matched else "—")
        others = r["others_kept"].get(reach["strength"], float("nan")) if reach else float("nan")
        lines.append(f"| {r['name']} | {r['transform']} | {best['concept']:.2f} ({best['strength']:g}) | {reach_s} | "
                     f"{kept_s} | {others:.2f} | {r['images']} | {r['eval_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def methods_plot(runs: Path, seeds: int) -> dict:
    """circles-on-black: plain steering, DSAS with the prompt and the probe scaler, E2E-DSAS and its map alone, in
    one Pareto plot (``assets/eval/circles-on-black-methods.png``)."""
    from ..evaluate import plot_methods

    prompt = run_one(METHODS_EXAMPLE, "mean_shift", runs, None, seeds)
    probe = run_one(METHODS_EXAMPLE, "mean_shift", runs, None, seeds, scaler="probe")
    e2e = run_one(METHODS_EXAMPLE, "e2e", runs, E2E_STRENGTHS, seeds,
                  concept_dir=assets_dir() / "concepts" / "circles-on-black-e2e")
    curves = {"plain steering (mean shift)": prompt["curves"]["oracle"]["plain"],
              "DSAS, prompt scaler": prompt["curves"]["oracle"]["dsas"],
              "DSAS, probe scaler": probe["curves"]["oracle"]["dsas"],
              "E2E map alone (α ≡ 1)": e2e["curves"]["oracle"]["plain"],
              "E2E-DSAS": e2e["curves"]["oracle"]["dsas"]}
    plot_methods(curves, assets_dir() / "eval" / f"{METHODS_EXAMPLE}-methods.png",
                 f"{METHODS_EXAMPLE}: plain steering, DSAS (prompt, probe scalers), E2E-DSAS")
    return {"results": [prompt, probe, e2e], "curves": curves}


def main(argv: list[str] | None = None) -> None:
    """Run the requested examples and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="one example name")
    parser.add_argument("--transforms", default="mean_shift,linear_act")
    parser.add_argument("--strengths", default=None, help="comma-separated λ (default: each example's own)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--methods", action="store_true", help="only the circles-on-black multi-method plot")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    if args.methods:
        done = methods_plot(runs, args.seeds)
        report, results = table(done["results"]), done["results"]
        name = "demo_methods"
    else:
        results = [run_one(name, t, runs, args.strengths, args.seeds) for t in args.transforms.split(",")
                   for name in EXAMPLES if not args.only or name == args.only]
        report = table(results)
        name = "-".join(["demo_report", *([args.only] if args.only else []), args.transforms.replace(",", "+")])
    (runs / f"{name}.md").write_text(report)
    (runs / f"{name}.json").write_text(json.dumps(results, indent=1))
    print(report)


if __name__ == "__main__":
    main()
