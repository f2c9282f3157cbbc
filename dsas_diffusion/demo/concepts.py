"""The three example concepts of the shapes world: their prompt lists, oracle targets and fitting.

* ``red-circles-to-blue`` — turn red shapes blue, but only when the shape is a circle;
* ``no-green`` — a green shape becomes another colour wherever green is asked for;
* ``circles-on-black`` — circles get a black background; other shapes keep theirs.

All three are fitted with the library's defaults (the ``prompt`` scaler, 16 components: the winners of
``python -m dsas_diffusion.demo.study``); each example carries the strengths its evaluation sweeps.

``python -m dsas_diffusion.demo.concepts`` writes the prompt files to ``assets/prompts/NAME/`` and fits each
concept into ``assets/concepts/NAME/`` with the bundled demo model; each fit is also one ``dsas fit`` command,
printed as it runs.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

from dsas_core.paths import assets_dir

from .world import COLOURS, SHAPES, caption

N_FIT = 32  # prompts per fitting set
N_EVAL = 32  # prompts per evaluation set


@dataclass(frozen=True)
class Example:
    """A concept's prompt sets (source/target/control for fitting, steer/control for evaluation)."""

    name: str
    source: list[str]
    target: list[str]
    control: list[str]
    eval_steer: list[str]
    eval_control: list[str]
    oracle: str  # what the concept should achieve on steer prompts, e.g. "colour=blue"
    source_text: str
    target_text: str
    scaler: str = "prompt"
    strengths: str = "0,2,4,8,12,16"  # λ swept by the report: colour changes need large λ on this model


def _cycle(items: list[str], n: int) -> list[str]:
    """The first n items of ``items`` repeated (the world has few distinct captions per set; seeds differ)."""
    return list(itertools.islice(itertools.cycle(items), n))


def _other(colour: str, exclude: set[str]) -> str:
    """A deterministic replacement colour not in ``exclude``."""
    order = [c for c in COLOURS if c not in exclude]
    return order[(COLOURS.index(colour) * 3 + len(exclude)) % len(order)]


def red_circles_to_blue() -> Example:
    bgs = [b for b in COLOURS if b not in ("red", "blue")]
    src = [caption("red", "circle", b) for b in bgs]
    tgt = [caption("blue", "circle", b) for b in bgs]
    ctl = [caption("red", s, b) for s in SHAPES if s != "circle" for b in bgs]  # red, but not circles
    ctl += [caption(c, "circle", b) for c in ("green", "yellow", "purple") for b in COLOURS if b not in (c, "red")]
    return Example("red-circles-to-blue", _cycle(src, N_FIT), _cycle(tgt, N_FIT), _cycle(ctl[::2], N_FIT),
                   _cycle(src[::-1], N_EVAL), _cycle(ctl[1::2], N_EVAL), "colour=blue", "a red circle",
                   "a blue circle")


def no_green() -> Example:
    pairs = [(s, b) for s in SHAPES for b in COLOURS if b != "green"]
    src = [caption("green", s, b) for s, b in pairs]
    tgt = [caption(_other("green", {"green", b}), s, b) for s, b in pairs]
    ctl = [caption(c, s, b) for c in COLOURS if c != "green" for s in SHAPES for b in COLOURS if b not in (c, "green")]
    return Example("no-green", _cycle(src, N_FIT), _cycle(tgt, N_FIT), ctl[::5][:N_FIT], _cycle(src[::-1], N_EVAL),
                   ctl[2::5][:N_EVAL], "colour!=green", "a green shape", "a shape that is not green")


def circles_on_black() -> Example:
    pairs = [(c, b) for c in COLOURS if c != "black" for b in COLOURS if b not in (c, "black")]
    src = [caption(c, "circle", b) for c, b in pairs]
    tgt = [caption(c, "circle", "black") for c, _ in pairs]
    ctl = [caption(c, s, b) for s in SHAPES if s != "circle" for c, b in pairs]
    return Example("circles-on-black", src[::1][:N_FIT], tgt[:N_FIT], ctl[::3][:N_FIT], src[-N_EVAL:],
                   ctl[1::3][:N_EVAL], "background=black", "a shape on a colourful background",
                   "a shape on a black background", strengths="0,1,2,3,4,6,8")


EXAMPLES = {e.name: e for e in (red_circles_to_blue(), no_green(), circles_on_black())}


def write_prompts(example: Example, root: Path) -> dict[str, Path]:
    """Write the five prompt files; returns their paths by set name."""
    folder = root / example.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in ("source", "target", "control", "eval_steer", "eval_control"):
        paths[key] = folder / f"{key}.txt"
        header = f"# {example.name}: {key} prompts (one per line)\n"
        paths[key].write_text(header + "\n".join(getattr(example, key)) + "\n")
    return paths


def fit_command(example: Example, paths: dict[str, Path], out: Path, transform: str,
                scaler: str | None = None) -> list[str]:
    """The ``dsas fit`` command line that fits this example (with its own scaler unless ``scaler`` is given)."""
    return ["fit", "--model", "demo", "--source", str(paths["source"]), "--target", str(paths["target"]),
            "--control", str(paths["control"]), "--transform", transform, "--scaler", scaler or example.scaler, "--name", example.name,
            "--source-text", example.source_text, "--target-text", example.target_text, "--out", str(out)]


def main(argv: list[str] | None = None) -> None:
    """Write the prompt files and fit the example concepts."""
    from dsas_core.cli import main as dsas

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  python -m dsas_diffusion.demo.concepts --transform mean_shift")
    parser.add_argument("--transform", default="mean_shift")
    parser.add_argument("--only", default=None, help="one example name")
    parser.add_argument("--prompts-only", action="store_true", help="write the prompt files, fit nothing")
    args = parser.parse_args(argv)
    for example in EXAMPLES.values():
        if args.only and example.name != args.only:
            continue
        paths = write_prompts(example, assets_dir() / "prompts")
        if args.prompts_only:
            continue
        cmd = fit_command(example, paths, assets_dir() / "concepts" / example.name, args.transform)
        print("dsas " + " ".join(f"'{c}'" if " " in c else c for c in cmd))
        dsas(cmd)


if __name__ == "__main__":
    main()
