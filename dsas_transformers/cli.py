"""``dsas llm fit | generate | sites``: the transformers adapter on the command line.

MODEL is a hub id or a local folder (anything ``from_pretrained`` accepts). Prompt files hold one text per line;
blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsas_core import DsasError
from dsas_core.cli import HelpFormatter, output_file, output_folder, parse_concept_arg, torch_device
from dsas_core.e2e import add_e2e_arguments, e2e_config_from_args
from dsas_core.errors import loading_failed
from dsas_core.files import prompt_lines, read_text, strength_list

DTYPES = ("auto", "float32", "bfloat16", "float16")

FIT_EXAMPLE = """example:
  dsas llm fit --model Qwen/Qwen2.5-1.5B --source toxic.txt --target polite.txt --control neutral.txt \\
      --out concepts/detox --transform mean_shift --layers=-16:-4
  dsas llm fit --model demo --source assets/prompts/lm/detox_source.txt \\
      --target assets/prompts/lm/detox_target.txt --control assets/prompts/lm/detox_control.txt \\
      --transform lineas --scaler e2e --retain-weight 100 --out concepts/detox-e2e"""
GENERATE_EXAMPLE = """example:
  dsas llm generate --model Qwen/Qwen2.5-1.5B --prompt "You are such a" --concept concepts/detox=1.5 \\
      --show-alpha --max-new-tokens 32
  dsas llm generate --model demo --prompt "you are a big nitwit and a" --concept assets/concepts/detox \\
      --sweep 0,1,1.5,2 --compare --max-new-tokens 8   # a line per strength: DSAS, then plain steering"""
SITES_EXAMPLE = """example:
  dsas llm sites demo                       # the bundled tavern-world LM
  dsas llm sites Qwen/Qwen2.5-1.5B
  dsas llm sites ./my-local-model --json"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsas llm`` and its subcommands."""
    llm = sub.add_parser("llm", help="steer transformers causal language models (fit, generate, chat, sites, eval)",
                         description="DSAS for transformers causal language models.",
                         epilog=f"{FIT_EXAMPLE}\n\n{GENERATE_EXAMPLE}\n\n{SITES_EXAMPLE}",
                         formatter_class=HelpFormatter)
    llm.set_defaults(func=lambda args: llm.print_help() or 0)
    cmds = llm.add_subparsers(dest="llm_command", metavar="SUBCOMMAND")

    fit = cmds.add_parser("fit", help="fit a concept from three text files", formatter_class=HelpFormatter,
                          description="Fit a DSAS concept on a causal LM: the transform on source vs target texts, the "
                                      "scaler on source vs control texts (one text per line; blank lines and '#' "
                                      "comments ignored). Writes dsas_config.json + dsas_model.safetensors to --out.",
                          epilog=FIT_EXAMPLE)
    _model_args(fit)
    fit.add_argument("--source", required=True, type=Path, help="texts to steer away from (where the scaler fires)")
    fit.add_argument("--target", required=True, type=Path, help="texts to steer toward")
    fit.add_argument("--control", type=Path, help="texts to leave alone (needed by the probe and e2e scalers)")
    fit.add_argument("--out", required=True, type=Path, help="concept directory to write")
    fit.add_argument("--transform", default="mean_shift", choices=["mean_shift", "itic", "linear_act", "lineas"],
                     help="'lineas' goes with --scaler e2e (trained end to end)")
    fit.add_argument("--scaler", default="probe", choices=["probe", "constant", "e2e"],
                     help="probe: α per position from a logistic probe; constant: α = 1 (plain steering); "
                          "e2e: with --transform lineas, map and scaler trained end to end")
    fit.add_argument("--name", default=None, help="concept name (default: the --out folder's name)")
    fit.add_argument("--role", default="residual", choices=["residual", "mlp_input", "attention"],
                     help="which site of each decoder layer to steer")
    fit.add_argument("--layers", default=None,
                     help="decoder layers: --layers=-16:-4 (a slice; write it with '=' when it starts with '-'), "
                          "--layers 3,5,7 or one index (default: all)")
    fit.add_argument("--sites", default=None,
                     help="regex matched against whole module names (e.g. '.*layers\\.[12]'), overriding --role")
    fit.add_argument("--components", type=int, default=None,
                     help="principal components of the probe scaler (default: 5)")
    fit.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    fit.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    fit.add_argument("--chat-template", action="store_true", help="wrap each text as a user message")
    fit.add_argument("--seed", type=int, default=0, help="seed of the scaler's fitting")
    add_e2e_arguments(fit)
    fit.set_defaults(func=fit_command)

    gen = cmds.add_parser("generate", help="generate text with concepts attached", formatter_class=HelpFormatter,
                          description="Generate a continuation of --prompt, steered by each --concept DIR[=STRENGTH] "
                                      "(strength 1.0 when omitted). Greedy unless --sample.",
                          epilog=GENERATE_EXAMPLE)
    _model_args(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    steering_args(gen, max_new_tokens=32)
    gen.add_argument("--show-alpha", action="store_true", help="print each token coloured by its mean α")
    gen.add_argument("--html", type=Path, default=None, help="also write the α map as HTML to this file")
    gen.add_argument("--chat-template", action="store_true", help="wrap the prompt as a user message")
    gen.add_argument("--sweep", default=None, metavar="L1,L2,...",
                     help="one continuation per strength, every --concept at its strength × each value, in order "
                          "(0, the unsteered continuation, always among them); sampled ones share --seed")
    gen.add_argument("--compare", action="store_true",
                     help="with --sweep: plain steering's continuation under DSAS's at each strength")
    gen.set_defaults(func=generate_command)

    sites = cmds.add_parser("sites", help="list the steerable sites of a model", formatter_class=HelpFormatter,
                            description="List every site by role (residual, mlp_input, attention) and layer, with "
                                        "its module name, output format and width.", epilog=SITES_EXAMPLE)
    sites.add_argument("model", metavar="MODEL",
                       help="'demo' (the bundled tavern-world LM), a hub id or a local folder")
    sites.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype ('auto': as saved)")
    sites.add_argument("--json", action="store_true", help="print the table as JSON")
    sites.set_defaults(func=sites_command, device="cpu")

    from .cli_chat import add_parser as add_chat_parser
    from .cli_eval import add_parser as add_eval_parser

    add_chat_parser(cmds)

    add_eval_parser(cmds)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="'demo' (the bundled tavern-world LM), a hub id or a local folder")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype ('auto': as saved)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... or 'auto' (accelerate device_map); default: cuda if available")


def steering_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The concepts, the steering and the decoding flags that ``generate`` and ``chat`` share."""
    p.add_argument("--concept", action="append", default=[], metavar="DIR[=STRENGTH]",
                   help="a concept directory or hub id and its strength λ; repeat for several")
    p.add_argument("--constant", action="store_true", help="plain steering: α ≡ 1 at every fitted site")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")


def decoding(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    """``generate()``'s settings from :func:`steering_args`' flags (greedy unless ``--sample``)."""
    from .fit import generation_pad_id

    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample,
                              "pad_token_id": generation_pad_id(tokenizer)}
    return kwargs | ({"temperature": args.temperature, "top_p": args.top_p} if args.sample else {})


def read_prompt_file(path: Path) -> list[str]:
    """One text per line; blank lines and lines starting with '#' are skipped."""
    texts = prompt_lines(read_text(path, expected="one text per line"))
    if not texts:
        raise DsasError(f"prompt file {str(path)!r} holds no texts (only blank lines or '#' comments).")
    return texts


def load(model_id: str, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id or local folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_id == "demo":  # the bundled tavern-world LM
        from .demo.model import require_demo_lm

        model_id = str(require_demo_lm())
    elif not Path(model_id).exists() and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        raise DsasError(f"no model folder at {model_id!r}: give 'demo', a local folder holding config.json, the "
                        "weights and the tokenizer files, or a hub id like 'Qwen/Qwen2.5-1.5B'.")
    target = torch_device(device) if device not in (None, "auto") else None  # refused before loading
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as err:
        raise loading_failed(f"model {model_id!r}", err, "Give a hub id (e.g. Qwen/Qwen2.5-1.5B) or a local folder "
                             "holding config.json, the weights and the tokenizer files") from None
    if device != "auto":
        model = model.to(target or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval(), tokenizer


def fit_command(args: argparse.Namespace) -> int:
    """dsas llm fit."""
    from .fit import fit_concept

    texts = {k: read_prompt_file(getattr(args, k)) for k in ("source", "target")}
    control = read_prompt_file(args.control) if args.control else None
    if control is None and args.scaler in ("probe", "e2e"):
        raise DsasError(f"the {args.scaler} scaler needs --control texts (inputs to leave alone); or use --scaler "
                        "constant.")
    output_folder(args.out, "--out")
    model, tokenizer = load(args.model, args.dtype, args.device)
    name = args.name or args.out.resolve().name
    concept = fit_concept(model, tokenizer, texts["source"], texts["target"], control, transform=args.transform,
                          scaler=args.scaler, name=name, sites=args.sites, layers=args.layers, role=args.role,
                          batch_size=args.batch_size, chat_template=args.chat_template, max_length=args.max_length,
                          seed=args.seed, e2e=e2e_config_from_args(args),
                          **({"n_components": args.components} if args.components is not None else {}))
    path = concept.save_pretrained(args.out)
    diag = concept.config.diagnostics
    active = sum(not d.get("gated", False) for d in diag.values())
    n = len(concept.config.sites)
    print(f"fitted {name!r} on {n} site{'s' if n != 1 else ''} ({active} active) of {type(model).__name__}")
    for site in concept.config.sites:
        d = diag.get(site, {})
        acc = f"{d['accuracy']:.3f}" if "accuracy" in d else "-"
        print(f"  {site:<50} accuracy {acc:>6}  {'gated off' if d.get('gated') else 'on'}")
    print(f"saved to {path}")
    if not active:
        print("warning: every site is gated off (the probe could not tell source from control texts on held-out "
              "data at any site), so this concept changes nothing; give more, and more distinct, source and control "
              "texts (16-32 each), or --scaler constant for plain steering.", file=sys.stderr)
    return 0


def generate_command(args: argparse.Namespace) -> int:
    """dsas llm generate."""
    import torch

    from .fit import prompt_ids
    from .sites import input_device
    from .steer import attach

    if (args.show_alpha or args.html) and not args.concept:
        raise DsasError("--show-alpha / --html need at least one --concept DIR[=STRENGTH].")
    if args.sweep is not None and (args.show_alpha or args.html):
        raise DsasError("--show-alpha / --html show the α of one continuation: drop them with --sweep, or run "
                        "once at the strength you picked.")
    if args.sweep is None and args.compare:
        raise DsasError("--compare puts plain steering beside DSAS in a strength sweep: add --sweep L1,L2,...")
    if args.sweep is not None and not args.concept:
        raise DsasError("--sweep scales the strengths of the --concept folders: give at least one --concept DIR.")
    values = strength_list(args.sweep, "--sweep", "0,0.5,1,1.5") if args.sweep is not None else []
    if args.max_new_tokens < 1:
        raise DsasError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    if args.html:
        output_file(args.html, "--html")
    from dsas_core.hub import load_concept

    concepts = {load_concept(p): s for p, s in map(parse_concept_arg, args.concept)}
    model, tokenizer = load(args.model, args.dtype, args.device)
    ids, unknown = prompt_ids(tokenizer, args.prompt, args.chat_template)
    if unknown:  # e.g. the demo LM's word-level vocabulary: such words vanish from the printed text
        print(f"warning: {unknown} word(s) of the prompt are not in the tokenizer's vocabulary and read as "
              f"{tokenizer.unk_token}", file=sys.stderr)
    device = input_device(model)
    enc = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}
    gen_kwargs = decoding(args, tokenizer)
    if values:
        return _sweep(args, model, tokenizer, concepts, values, {**enc, **gen_kwargs})
    torch.manual_seed(args.seed)
    record = args.show_alpha or bool(args.html)
    handle = attach(model, concepts, adaptive=not args.constant, record_alpha=record) if concepts else None
    try:
        with torch.no_grad():
            out = model.generate(**enc, **gen_kwargs)
    finally:
        if handle is not None:
            handle.remove()
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    if handle is not None and (args.show_alpha or args.html):
        parts = []
        for name in handle.concepts:
            at = handle.alpha_tokens(concept=name)
            if args.show_alpha:
                text_mean = at.per_text(exclude=tokenizer.all_special_ids)[0].item()
                colour = sys.stdout.isatty()  # escape codes only for a terminal; files and pipes get α as numbers
                print(f"α {name} (mean over {len(at.ungated)} active sites, "
                      f"{'white 0 → red 1' if colour else 'in brackets after each token'}; "
                      f"text mean without special tokens {text_mean:.3f}):")
                print(at.ansi(tokenizer) if colour else at.plain(tokenizer))
            parts.append(f"<h3>{name}</h3>{at.html(tokenizer)}")
        if args.html:
            args.html.write_text("<!doctype html><meta charset='utf-8'>" + "".join(parts) + "\n", encoding="utf-8")
            print(f"α map written to {args.html}")
    return 0


def _sweep(args: argparse.Namespace, model: Any, tokenizer: Any, concepts: dict[Any, float], values: list[float],
           call: dict[str, Any]) -> int:
    """``dsas llm generate --sweep``: the prompt, then a line per sweep value (and method) with its continuation."""
    import torch

    from .sweep import sweep_texts

    prompt_length = call["input_ids"].shape[1]

    def continuation() -> str:
        torch.manual_seed(args.seed)  # every line samples alike
        with torch.no_grad():
            out = model.generate(**call)
        return tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True).strip()

    methods = ["DSAS", "plain"] if args.compare else ["plain"] if args.constant else ["DSAS"]
    rows = sweep_texts(model, concepts, values, continuation, methods)
    print(f"prompt: {args.prompt}")
    width = max(len("strength"), *(len(f"{v:g}") for v in values))
    print(f"{'strength':>{width}}  {'steering':<9}  continuation")
    for value, steering, text in rows:
        print(f"{value:>{width}g}  {steering:<9}  {text}")
    return 0


def sites_command(args: argparse.Namespace) -> int:
    """dsas llm sites."""
    from .sites import family_of, sites_table

    model, _ = load(args.model, args.dtype, args.device)
    rows = sites_table(model)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fam = family_of(model)
    print(f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')}), decoder layers at "
          f"{fam.layers!r}{'; ' + fam.note if fam.note else ''}")
    print(f"  {'role':<10} {'layer':>5}  {'module':<50} {'output':<9} {'width':>6}")
    for r in rows:
        layer = r["layer"] if r["layer"] is not None else "-"
        print(f"  {r['role']:<10} {layer:>5}  {r['name']:<50} {r['output']:<9} {r['width']:>6}")
    return 0
