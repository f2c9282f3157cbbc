"""``dsas eval``: DSAS against plain steering over a strength sweep, with CLIP and shapes-world oracle scores."""

from __future__ import annotations

import argparse
import time

from dsas_core.cli import HelpFormatter, output_folder

EXAMPLE = """examples:
  dsas eval --model demo --concept assets/concepts/circles-on-black \\
      --steer-prompts assets/prompts/circles-on-black/eval_steer.txt \\
      --control-prompts assets/prompts/circles-on-black/eval_control.txt \\
      --clip demo --oracle background=black --strengths 0,1,2,3,4 --out runs/circles-on-black
  torchrun --nproc_per_node 2 -m dsas_core.cli eval ...     # split the prompts over 2 processes
  dsas eval --model stable-diffusion-v1-5/stable-diffusion-v1-5 --concept concepts/pear \\
      --steer-prompts fruit.txt --control-prompts other.txt --clip ViT-L-14:openai --out runs/pear"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsas eval``."""
    p = sub.add_parser("eval", help="compare DSAS with plain steering over a strength sweep",
                       description=__doc__, epilog=EXAMPLE, formatter_class=HelpFormatter)
    p.add_argument("--model", default="demo", help="'demo', a local diffusers folder, or a hub id")
    p.add_argument("--concept", required=True, help="concept folder or hub id")
    p.add_argument("--steer-prompts", required=True, help="prompts where the concept should act")
    p.add_argument("--control-prompts", required=True, help="prompts that should not change")
    p.add_argument("--strengths", default="0,0.5,1,1.5,2", help="comma-separated λ values (0 = unsteered)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    p.add_argument("--steps", type=int, default=20, help="inference steps per image")
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale")
    p.add_argument("--batch-size", type=int, default=16, help="images per denoising run")
    p.add_argument("--clip", default=None, help="'demo' or ARCH:PRETRAINED (e.g. ViT-L-14:openai); omit for none")
    p.add_argument("--source-text", default=None, help="CLIP text of the source (default: the concept's)")
    p.add_argument("--target-text", default=None, help="CLIP text of the target (default: the concept's)")
    p.add_argument("--oracle", default=None, help="shapes-world target, e.g. colour=blue or colour!=red")
    p.add_argument("--out", default="runs/eval", help="output folder")
    p.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    """Run the sweep, gather, and write results, plots and a grid on the main process."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from dsas_core import DsasError
    from dsas_core.files import strength_list

    from .evaluate import (EvalSettings, compare, image_grid, plot_pareto, score_curves, settings_dict, sweep, verdicts,
                           write_results)
    from .loading import load_pipeline, read_prompts
    from .pipeline import load_concept
    from .scoring import load_clip

    strengths = strength_list(args.strengths, example="0,0.5,1")
    if not args.clip and not args.oracle:
        raise DsasError("nothing to score: give --clip (demo or ARCH:PRETRAINED) and/or --oracle (demo world).")
    out = output_folder(args.out, "--out")
    state = PartialState(cpu=not torch.cuda.is_available())
    device = state.device
    settings = EvalSettings(strengths=strengths, seeds=args.seeds, steps=args.steps, guidance=args.guidance,
                            batch_size=args.batch_size, source_text=args.source_text, target_text=args.target_text,
                            oracle=args.oracle)
    concept = load_concept(args.concept)
    steer_prompts = read_prompts(args.steer_prompts, "steer")
    control_prompts = read_prompts(args.control_prompts, "control")
    pipe = load_pipeline(args.model, device=device)
    clip = load_clip(args.clip, device=device) if args.clip else None
    start = time.perf_counter()
    rows, images = sweep(pipe, concept, steer_prompts, control_prompts, settings, clip=clip, state=state,
                         progress=state.is_main_process)
    rows = gather_object(rows) if state.num_processes > 1 else rows
    images = {k: v for part in gather_object([images]) for k, v in part.items()} if state.num_processes > 1 else images
    if not state.is_main_process:
        return 0
    wall = time.perf_counter() - start
    scores = score_curves(rows, oracle=bool(args.oracle), clip=bool(args.clip))
    comparison = {k: compare(v) for k, v in scores.items()}
    meta = {"concept": concept.name, "model": args.model, "clip": args.clip, "settings": settings_dict(settings),
            "processes": state.num_processes, "seconds": round(wall, 2), "curves": scores, "comparison": comparison}
    write_results(out, rows, meta)
    plot_pareto(scores, out / "pareto.png", f"{concept.name}: DSAS vs plain steering")
    image_grid(images, strengths, out / "grid.png")
    print("\n".join(verdicts(comparison)))
    print(f"{len(rows)} images in {wall:.1f} s on {state.num_processes} process(es); wrote {out / 'results.json'}, "
      "results.csv, pareto.png, grid.png")
    return 0
