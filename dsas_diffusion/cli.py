"""``dsas fit``, ``dsas generate`` and ``dsas sites`` for diffusers pipelines."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dsas_core.cli import HelpFormatter, output_file, output_folder, parse_concept_arg
from dsas_core.e2e import add_e2e_arguments, e2e_config_from_args

MODEL_HELP = "'demo' (the bundled tiny model), a local diffusers folder, or a hub id"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the diffusion subcommands."""
    p = sub.add_parser(
        "fit", help="fit a concept on a diffusers pipeline from three prompt files", formatter_class=HelpFormatter,
        description="Fit a concept: the transform on source vs target prompts, the DSAS scaler on source vs "
                    "control prompts. Prompt files hold one prompt per line ('#' comments and blank lines ignored).",
        epilog="example:\n  dsas fit --model demo --source assets/prompts/circles-on-black/source.txt \\\n"
               "    --target assets/prompts/circles-on-black/target.txt \\\n"
               "    --control assets/prompts/circles-on-black/control.txt --scaler prompt --name black-bg \\\n"
               "    --source-text 'a shape on a colourful background' --target-text 'a shape on a black background' \\\n"
               "    --out concepts/black-bg")
    p.add_argument("--model", default="demo", help=MODEL_HELP)
    p.add_argument("--source", required=True, help="prompts where the concept should act")
    p.add_argument("--target", required=True, help="the source prompts with the wanted change")
    p.add_argument("--control", help="prompts to leave alone (needed by the probe and prompt scalers)")
    p.add_argument("--transform", default="mean_shift", choices=["mean_shift", "itic", "linear_act", "lineas"],
                   help="how activations move from source to target ('lineas' goes with --scaler e2e)")
    p.add_argument("--scaler", default="prompt", choices=["prompt", "probe", "constant", "e2e"],
                   help="prompt (default, measured best): one α per prompt from the text encoder, at every "
                        "position; probe: α per site and position (the paper's); constant: α = 1 (plain "
                        "steering); e2e: with --transform lineas, map and scaler trained end to end")
    p.add_argument("--name", default=None, help="concept name (default: the output folder's name)")
    p.add_argument("--source-text", default=None, help="short description of the source, for CLIP scores")
    p.add_argument("--target-text", default=None, help="short description of the target, for CLIP scores")
    p.add_argument("--sites", default=None, help="regex over site names (default: every attention output)")
    p.add_argument("--steps", type=int, default=10, help="inference steps of the fitting runs")
    p.add_argument("--collect-steps", default=None, help="comma-separated steps to pool (default: all)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--height", type=int, default=None, help="image height of the fitting runs (default: pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width of the fitting runs (default: pipeline's)")
    p.add_argument("--incremental", type=int, default=0, help="fit sites in K groups, earlier groups steered")
    p.add_argument("--components", type=int, default=None,
                   help="principal components of the probe and prompt scalers (default: 16)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per denoising run")
    p.add_argument("--seed", type=int, default=0, help="seed of the fitting runs' latents")
    add_e2e_arguments(p)
    p.add_argument("--out", required=True, help="output concept folder")
    p.set_defaults(func=fit_command)

    p = sub.add_parser(
        "generate", help="generate an image with concepts steered", formatter_class=HelpFormatter,
        description="Generate one image, steered by one or more concepts (DIR or DIR=STRENGTH).",
        epilog="example:\n  dsas generate --model demo --prompt 'a red circle on a white background' \\\n"
               "    --concept assets/concepts/circles-on-black=1.5 --out steered.png --alpha-map alpha.png\n"
               "  dsas generate --model demo --prompt 'a red circle on a white background' \\\n"
               "    --concept assets/concepts/circles-on-black --sweep 0,0.5,1,1.5 --out sweep.png --compare both.png")
    p.add_argument("--model", default="demo", help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--negative-prompt", default=None, help="the negative prompt (with classifier-free guidance)")
    p.add_argument("--concept", action="append", default=[], metavar="DIR[=STRENGTH]",
                   help="a concept folder or hub id, then =strength (default 1); repeatable")
    p.add_argument("--constant", action="store_true", help="plain steering: α = 1 everywhere (the baseline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial latents (same seed: same unsteered image)")
    p.add_argument("--steps", type=int, default=20, help="inference steps")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    p.add_argument("--out", default="dsas.png", help="PNG path of the image")
    p.add_argument("--compare", default=None,
                   help="also write unsteered | steered side by side to this PNG; with --sweep, DSAS's row above "
                        "plain steering's")
    p.add_argument("--alpha-map", default=None, help="write the α heat map over the image to this PNG (with "
                                                     "--sweep, a row of them)")
    p.add_argument("--sweep", default=None, metavar="L1,L2,...",
                   help="one image per strength, side by side in --out: every --concept at its strength × each "
                        "value, in order (0, the unsteered image, always among them)")
    p.add_argument("--cell", type=int, default=None, metavar="PX",
                   help="with --sweep: each image resized to PX pixels on its longer side in the grids (default: "
                        "as generated)")
    p.set_defaults(func=generate_command)

    p = sub.add_parser(
        "sites", help="list a denoiser's steerable sites with output widths", formatter_class=HelpFormatter,
        description="List the steerable sites of a pipeline's denoiser, their output widths, and the defaults.",
        epilog="example:\n  dsas sites demo\n  dsas sites stable-diffusion-v1-5/stable-diffusion-v1-5 --match attn2")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--match", default=None, help="only sites whose name matches this regex")
    p.set_defaults(func=sites_command)

    from .cli_bench import register as register_bench
    from .cli_eval import register as register_eval

    register_eval(sub)
    register_bench(sub)


def fit_command(args: argparse.Namespace) -> int:
    """Fit and save a concept."""
    from .fit import fit_concept
    from .loading import load_pipeline, read_prompts

    source = read_prompts(args.source, "source")
    target = read_prompts(args.target, "target")
    control = read_prompts(args.control, "control") if args.control else []
    if args.scaler in ("probe", "prompt", "e2e") and not control:
        from dsas_core import DsasError

        raise DsasError(f"the {args.scaler} scaler needs --control prompts (inputs to leave alone); or use "
                        "--scaler constant.")
    out = output_folder(args.out, "--out")
    pipe = load_pipeline(args.model)
    steps = [int(s) for s in args.collect_steps.split(",")] if args.collect_steps else None
    concept = fit_concept(
        pipe, source, target, control, transform=args.transform, scaler=args.scaler, name=args.name or out.name,
        sites=args.sites, num_inference_steps=args.steps, collect_steps=steps, guidance_scale=args.guidance,
        height=args.height, width=args.width, incremental=args.incremental, batch_size=args.batch_size,
        source_text=args.source_text, target_text=args.target_text, seed=args.seed, e2e=e2e_config_from_args(args),
        **({"n_components": args.components} if args.components is not None else {}))
    concept.save_pretrained(out)
    diag = concept.config.diagnostics
    on = [s for s in concept.config.sites if not diag[s].get("gated")]
    print(f"saved {concept.name!r} to {out}: {len(on)} of {len(diag)} sites active")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    """Generate one (optionally steered) image."""
    import torch
    from PIL import Image

    from .alpha import overlay
    from .loading import load_pipeline
    from .pipeline import load_concept, steer
    from .sites import image_size

    for path, option in ((args.out, "--out"), (args.alpha_map, "--alpha-map"), (args.compare, "--compare")):
        if path:
            output_file(path, option)
    values = _sweep_values(args) if args.sweep is not None or args.cell is not None else []
    pipe = load_pipeline(args.model)
    concepts = {}
    for spec in args.concept:
        path, strength = parse_concept_arg(spec)
        concepts[load_concept(path)] = strength
    kwargs = {"num_inference_steps": args.steps, "negative_prompt": args.negative_prompt}
    kwargs |= {"guidance_scale": args.guidance} if args.guidance is not None else {}
    kwargs |= image_size(pipe, args.height, args.width)  # a side the pipeline cannot make is refused here

    def generate() -> Image.Image:
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        return pipe(args.prompt, generator=gen, **kwargs).images[0]

    if values:
        return _sweep(args, values, pipe, concepts, generate)
    plain = generate() if args.compare or not concepts else None
    if concepts:
        with steer(pipe, concepts, adaptive=not args.constant, record_alpha=bool(args.alpha_map)) as handle:
            image = generate()
        if args.alpha_map:
            overlay(image, handle.alpha_heatmap()[0]).save(args.alpha_map)
            print(f"wrote {args.alpha_map}")
    else:
        image = plain
    image.save(args.out)
    print(f"wrote {args.out}")
    if args.compare and plain is not None:
        both = Image.new("RGB", (image.width * 2, image.height))
        both.paste(plain, (0, 0))
        both.paste(image, (image.width, 0))
        both.save(args.compare)
        print(f"wrote {args.compare}")
    return 0


def _sweep_values(args: argparse.Namespace) -> list[float]:
    """``--sweep``'s values, checked with ``--concept`` and ``--cell`` before the pipeline loads."""
    from dsas_core import DsasError
    from dsas_core.files import strength_list

    if args.sweep is None:
        raise DsasError(f"--cell {args.cell}: it sizes the images of a --sweep grid; add --sweep L1,L2,...")
    if args.cell is not None and args.cell < 1:
        raise DsasError(f"--cell {args.cell}: give a side of at least 1 pixel.")
    if not args.concept:
        raise DsasError("--sweep scales the strengths of the --concept folders: give at least one --concept DIR.")
    return strength_list(args.sweep, "--sweep", "0,0.5,1,1.5")


def _sweep(args: argparse.Namespace, values: list[float], pipe: Any, concepts: dict[Any, float],
           generate: Callable[[], Any]) -> int:
    """``dsas generate --sweep``: the images at each strength as one labelled row in ``--out``; the α maps'
    row in ``--alpha-map``; DSAS's row above plain steering's in ``--compare`` (λ = 0's image shared)."""
    from .sweep import labelled_grid, sweep_rows

    headers = [f"{v:g}" for v in values]
    first = "plain" if args.constant else "DSAS"
    methods = [first, *(m for m in ("DSAS", "plain") if m != first)] if args.compare else [first]
    rows, overlays = sweep_rows(pipe, concepts, values, generate, methods, record_alpha=bool(args.alpha_map))
    written = [(args.out, rows[:1])]
    if args.alpha_map:
        written.append((args.alpha_map, [(first, overlays)]))
    if args.compare:
        written.append((args.compare, sorted(rows, key=lambda row: row[0] != "DSAS")))  # DSAS's row on top
    for path, grid in written:
        labelled_grid(grid, headers, args.cell).save(path)
        print(f"wrote {path}")
    return 0


def sites_command(args: argparse.Namespace) -> int:
    """Print candidate sites."""
    import re

    from .loading import load_pipeline
    from .sites import candidates, denoiser_of

    denoiser = denoiser_of(load_pipeline(args.model, device="cpu", dtype=None))
    rows = [c for c in candidates(denoiser) if not args.match or re.search(args.match, c.site.name)]
    print(f"{type(denoiser).__name__}: {len(rows)} sites")
    for c in rows:
        print(f"  {c.site.name:<64} width {c.width:>5}  {'default' if c.default else ''}")
    return 0
