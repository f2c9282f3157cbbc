"""Commands that need only the core: ``dsas inspect``, ``dsas push``, ``dsas env``, and ``dsas studio`` (which
starts the app)."""

from __future__ import annotations

import argparse
import json

from .cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core's subcommands."""
    p = sub.add_parser(
        "inspect", help="show a saved concept: sites, gates, accuracies, what it was fitted on",
        description="Show a saved concept directory: its transform and scaler, every site with its width, held-out "
                    "scaler accuracy and gate, and what it was fitted on.",
        epilog="example:\n  dsas inspect assets/concepts/circles-on-black\n  dsas inspect concepts/pear --json",
        formatter_class=HelpFormatter)
    p.add_argument("concept", metavar="DIR", help="a concept directory (dsas_config.json + dsas_model.safetensors), "
                                                  "or a hub repository id holding one")
    p.add_argument("--json", action="store_true", help="print the full config as JSON")
    p.set_defaults(func=inspect_command)

    p = sub.add_parser(
        "push", help="upload a saved concept to the Hugging Face Hub",
        description="Upload a concept directory — its two files and a model card (README.md) saying what it steers, "
                    "what it was fitted on and how to load it — to a hub repository, made if missing. Log in first "
                    "(`hf auth login`) or set HF_TOKEN to a token with write access. Anyone can then load it by its "
                    "id: `dsas generate --concept OWNER/NAME=1.5`, `load_concept(\"OWNER/NAME\")`.",
        epilog="example:\n  dsas push concepts/pear my-name/pear --private", formatter_class=HelpFormatter)
    p.add_argument("concept", metavar="DIR", help="a concept directory (dsas_config.json + dsas_model.safetensors)")
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the hub repository to upload to")
    p.add_argument("--private", action="store_true", help="make the repository private when it is created")
    p.add_argument("--message", default=None, help="the commit message (default: 'Upload dsas concept NAME')")
    p.set_defaults(func=push_command)

    p = sub.add_parser(
        "env", help="print versions, devices and whether the GPU kernel can run, for a bug report",
        description="Print what this installation runs on — Python, dsas and its libraries' versions, torch's "
                    "threads, each CUDA device and whether the one-kernel steering update (Triton) can run there, "
                    "where the bundled demo is — to paste into a bug report.",
        epilog="example:\n  dsas env\n  dsas env --json", formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=env_command)

    p = sub.add_parser(
        "studio", help="open the Gradio app (dsas studio): sliders, heat maps, fitting, evaluations",
        description="Start the app of this checkout (app.py): the same as `python app.py ARGS`, from any folder. "
                    "Every flag after `studio` goes to the app; `dsas studio --help` lists them.",
        epilog="example:\n  dsas studio\n  dsas studio --model demo --lm Qwen/Qwen2.5-1.5B --port 7861",
        formatter_class=HelpFormatter, add_help=False)
    p.add_argument("app_args", nargs=argparse.REMAINDER, help="the app's flags (see dsas studio --help)")
    p.set_defaults(func=studio_command, passthrough="app_args")


def inspect_command(args: argparse.Namespace) -> int:
    """Print a concept's summary."""
    from .hub import load_concept

    concept = load_concept(args.concept)
    cfg = concept.config
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"concept     {cfg.name}")
    print(f"transform   {cfg.transform}")
    print(f"scaler      {cfg.scaler}  (PCA components {cfg.n_components}, gate {cfg.gate})")
    if cfg.source_text or cfg.target_text:
        print(f"texts       {cfg.source_text!r} -> {cfg.target_text!r}")
    print(f"model       {cfg.model_class or 'unknown'}")
    for key, value in sorted(cfg.fitted_on.items()):
        print(f"  {key:<18} {value}")
    ungated = sum(not s.scaler.gated for s in concept.sites.values())
    print(f"sites       {len(cfg.sites)} ({ungated} active, {len(cfg.sites) - ungated} gated off)")
    print(f"  {'site':<60} {'width':>6} {'accuracy':>9} {'gate':>6}")
    for site in cfg.sites:
        d = cfg.diagnostics.get(site, {})
        acc = f"{d['accuracy']:.3f}" if "accuracy" in d else "-"
        print(f"  {site:<60} {cfg.site_widths[site]:>6} {acc:>9} {'off' if d.get('gated') else 'on':>6}")
    return 0


def env_command(args: argparse.Namespace) -> int:
    """Print the environment report."""
    from .env_report import report

    out = report()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    width = max(map(len, out))
    for key, value in out.items():
        print(f"- {key + ':':<{width + 1}} {value}")
    return 0


def studio_command(args: argparse.Namespace) -> int:
    """Run the checkout's app.py with the remaining flags."""
    import importlib.util
    import sys

    from .errors import DsasError
    from .paths import assets_dir, require_checkout

    require_checkout("dsas studio (app.py and the demo models it serves)")
    script = assets_dir().parent / "app.py"
    if not script.is_file():
        raise DsasError(f"the app is not here ({script} is missing): it ships with the repository, beside assets/. "
                        "Clone it and install it with `pip install -e .`, then run `dsas studio` or `python app.py`.")
    sys.path.insert(0, str(script.parent))  # app.py imports app_text and app_widgets from beside it
    spec = importlib.util.spec_from_file_location("app", script)
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    app.main(args.app_args, prog="dsas studio")
    return 0


def push_command(args: argparse.Namespace) -> int:
    """Upload a concept directory to the hub."""
    from .concept import Concept

    concept = Concept.from_pretrained(args.concept)
    url = concept.push_to_hub(args.repo_id, private=True if args.private else None, commit_message=args.message)
    print(f"pushed {concept.name!r} to {args.repo_id}: {url}")
    return 0
