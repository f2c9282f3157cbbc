"""``dsas bench``: steering overhead and fitting cost, measured side by side in one run."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

from dsas_core.cli import HelpFormatter, output_file, torch_device
from dsas_core.files import write_json

EXAMPLE = """examples:
  dsas bench                                 # every benchmark this machine can run, results printed
  dsas bench --only sd15 --repeats 9 --json bench.json
  dsas bench --only demo,fit --device cpu
  dsas bench --only compile --compile-mode reduce-overhead   # torch.compile: unsteered vs DSAS, both compiled
  dsas bench --only llm-compile              # LLM decoding compiled by generate (static KV cache), ± DSAS
  dsas bench --only hooks --device cuda      # µs per steering hook in place, kernels and GPU time per run
  dsas bench --only hooks,hooks-flux,hooks-llm --device cpu   # the steering's share of each run, hook by hook"""

BENCHES = ("demo", "sd15", "sdxl", "flux", "llm", "fit", "compile", "llm-compile", "hooks", "hooks-flux", "hooks-llm")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dsas bench``."""
    p = sub.add_parser("bench", help="time steering overhead and fitting cost against unsteered runs",
                       description="Times, interleaved and repeated, the denoiser (or LLM) unsteered, attached with "
                                   "every strength 0, with plain steering, with DSAS, and with DSAS recording α; "
                                   "reports medians, min/max, ratios to unsteered and a verdict per budget "
                                   "('inconclusive' when the unsteered spread exceeds the margin judged), and a "
                                   "second verdict from the 95% confidence interval of the per-round ratios' "
                                   "median (rounds run side by side, so slow drift cancels). 'fit' "
                                   "times fit_concept against the bare denoising passes it needs and measures its "
                                   "peak memory (minutes: the memory part runs six fresh processes whatever "
                                   "--repeats); 'compile' compares the torch.compile'd denoiser unsteered and with "
                                   "DSAS; 'llm-compile' the LLM's generation with its decoding forward compiled "
                                   "by generate (static KV cache), unsteered and with DSAS; 'hooks' times each "
                                   "steering hook's call inside the SD 1.5-sized UNet ('hooks-flux': the FLUX-style "
                                   "transformer, 'hooks-llm': the LLM's generation) and gives the steering's share "
                                   "of the run — on the CPU what steering adds, far steadier than whole runs timed "
                                   "against each other — and counts kernels and their GPU time on a GPU.",
                       epilog=EXAMPLE, formatter_class=HelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--repeats", type=int, default=15,
                   help="timed rounds per configuration, after one warm-up round (15: the per-round ratios' median "
                        "gets a 96.5%% confidence interval from the 4th to the 12th value)")
    p.add_argument("--best-of", type=int, default=1,
                   help="each round's time is the fastest of this many back-to-back runs (interference only adds "
                        "time; helps against rare stalls); the overhead and LLM benchmarks")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--latent", type=int, default=None,
                   help="latent side for sd15 and sdxl (default: 16 on CPU; 64 for sd15, 128 for sdxl on a GPU)")
    p.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode for the compile and llm-compile benchmarks (default, reduce-overhead, "
                        "max-autotune; default: reduce-overhead for llm-compile on a GPU, else default)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks and print a table."""
    import torch

    from dsas_core import DsasError

    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        raise DsasError(f"--only: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHES)}.")
    if not chosen:
        raise DsasError(f"--only {args.only!r} names no benchmark; choose from {', '.join(BENCHES)}.")
    if args.repeats < 2:
        raise DsasError(f"--repeats must be >= 2 (rounds give the spread and the per-round interval; 15 is the "
                        f"default), got {args.repeats}.")
    if args.best_of < 1:
        raise DsasError(f"--best-of must be >= 1, got {args.best_of}.")
    if args.latent is not None and args.latent < 1:
        raise DsasError(f"--latent must be a positive latent side (e.g. 16 or 64), got {args.latent}.")
    if args.json:
        output_file(args.json, "--json")  # checked now, not after hours of benchmarks
    from dsas_core.timing import heap_malloc

    device = torch_device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {"machine": _machine(device), "repeats": args.repeats, "arguments": {
        "only": chosen, "repeats": args.repeats, "best_of": args.best_of, "device": str(device), "latent": args.latent,
        "compile_mode": args.compile_mode}}
    if device.type == "cpu":  # the same allocator for every configuration; page faults no longer dominate the noise
        results["machine"]["malloc"] = heap_malloc() or "default"
    for name in chosen:
        print(f"running {name} on {device} ...", file=sys.stderr, flush=True)
        results[name] = _RUNNERS[name](device, args)
        _print(name, results[name])
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


def _machine(device: Any) -> dict[str, Any]:
    import os

    import torch

    from datetime import datetime, timezone

    from dsas_core import __version__

    info = {"device": str(device), "torch": torch.__version__, "dsas": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        from dsas_core.fused import available

        info["fused_update"] = available(device)  # one Triton kernel per steered site (else torch ops)
    return info


def _overhead(name: str) -> Any:
    def go(device: Any, args: argparse.Namespace) -> dict[str, Any]:
        from .bench import overhead, workload
        from .bench_memory import overhead_memory

        model, run, info = workload(name, device, args.latent)
        out = overhead(model, run, repeats=args.repeats, device=device, best_of=args.best_of) | info
        if device.type == "cpu":  # on a GPU the timed runs record allocated memory themselves
            del model, run
            out["memory"] = overhead_memory(name, args.latent)
        return out
    return go


def _compile(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .bench import cast, compile_overhead, sd15_unet, unet_runner
    from .demo import load_demo_pipeline

    if device.type == "cuda":  # an SD 1.5-sized UNet, fp16, latent 64², batch 2, 4 steps
        unet = cast(sd15_unet(), device, torch.float16)
        make = lambda m: unet_runner(m, latent=64, batch=2, steps=4, device=device, dtype=torch.float16)  # noqa: E731
        workload = "SD 1.5-sized UNet (random weights), fp16, latent 64², batch 2, 4 steps"
    else:
        unet = load_demo_pipeline(device=device).unet
        make = lambda m: unet_runner(m, latent=16, batch=2, steps=20, text_tokens=32, device=device)  # noqa: E731
        workload = "demo UNet, latent 16², batch 2, 20 steps"
    return compile_overhead(unet, make, repeats=args.repeats, device=device, mode=args.compile_mode) | {
        "workload": workload}


def _llm(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    from dsas_transformers.bench import generation_memory, tokens_per_second

    out = tokens_per_second(device, repeats=args.repeats, best_of=args.best_of)
    return out | ({"memory": generation_memory()} if device.type == "cpu" else {})


def _llm_compile(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    from dsas_transformers.bench import compiled_tokens_per_second

    return compiled_tokens_per_second(device, repeats=args.repeats, mode=args.compile_mode)


def _fit(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    from .bench_fit import fit_cost, fit_memory, fit_prompts
    from .demo import load_demo_pipeline

    cost = fit_cost(load_demo_pipeline(device=device), fit_prompts(), repeats=args.repeats, device=device)
    return cost | {"memory": fit_memory(device)}


def _hooks(name: str) -> Any:
    def go(device: Any, args: argparse.Namespace) -> dict[str, Any]:
        from .bench import workload
        from .bench_hooks import hook_times

        model, run, info = workload(name, device, args.latent)
        return hook_times(model, run, repeats=args.repeats, device=device) | info
    return go


def _llm_hooks(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    from dsas_transformers.bench import hook_times

    return hook_times(device, repeats=args.repeats)


_RUNNERS = {"demo": _overhead("demo"), "sd15": _overhead("sd15"), "sdxl": _overhead("sdxl"), "flux": _overhead("flux"),
            "llm": _llm, "fit": _fit, "compile": _compile, "llm-compile": _llm_compile, "hooks": _hooks("sd15"),
            "hooks-flux": _hooks("flux"), "hooks-llm": _llm_hooks}


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"== {name}")
    for config, t in result.get("timings", {}).items():
        ratio = result.get("ratios", {}).get(config)
        judged = result.get("verdicts", {}).get(config, {})
        verdict = f"{judged['verdict']} (paired: {judged['paired_verdict']})" if "paired_verdict" in judged else \
            judged.get("verdict", "")
        if "limit" in judged:  # the budget judged: a time ratio, or the LM's tokens/s criterion
            budget = judged.get("criterion") or f"ratio <= {judged['limit']:g}"
            verdict = f"[{budget}] {verdict}"
        r = f"  ratio {ratio:.3f}" if ratio is not None else ""
        peak = f"  peak {t['peak_mb']:.0f} MiB" if t.get("peak_mb") is not None else ""  # GPU runs
        peak += f"  host {t['host'] * 1000:.2f} ms" if t.get("host") is not None else ""  # time to issue a GPU run
        print(f"  {config:<16} median {t['median'] * 1000:10.2f} ms  min {t['low'] * 1000:10.2f}  max "
              f"{t['high'] * 1000:10.2f}  spread {t['spread']:.3f}{r}{peak}  {verdict}")
    for key, value in result.items():
        if key == "per_round_ratios":
            for config, r in value.items():
                print(f"  per-round {config:<12} median {r['median']:.3f}  {r['ci_coverage']:.0%} CI "
                      f"{r['ci_low']:.3f}–{r['ci_high']:.3f}  min {r['low']:.3f}  max {r['high']:.3f}")
        elif key == "per_hook":  # µs of one steering hook in place, per configuration
            for config, h in value.items():
                first = (f" (after attaching, a site's first call {h['us_first_call']:.1f} µs: "
                         f"{h['first_calls_ms']:+.2f} ms in all, once)" if "first_calls_ms" in h else "")
                hooks = (f"{h['calls_per_run']} hook calls a run, median {h['us_per_call']:.1f} µs each{first}; "
                         f"{h['hooks_ms_per_run']:.2f} ms a run in all, of {h['run_ms']:.2f} ms (medians over runs)"
                         if "calls_per_run" in h else "")
                if "share" in h:  # the steering's whole time in a run: its overhead where hooks finish on return
                    hooks += (f"; with the hooks around each model call ({h['other_hooks_ms_per_run']:.2f} ms: "
                              f"step tracking, the check) and hooked dispatch ({h['dispatch_ms_per_run']:.2f} ms): "
                              f"steering {h['share']:.2%} of the run")
                    if "limit" in h:
                        hooks += (f" [run / (run - steering) = {h['ratio']:.4f} <= {h['limit']:.3g}] "
                                  f"{'within' if h['within'] else 'over'}")
                gpu = f"  {h['kernels']} kernels, {h['gpu_ms']:.2f} ms of GPU time" if "kernels" in h else ""
                print(f"  {config:<16} {hooks}{gpu}")
        elif key == "memory" and isinstance(value, dict) and "configs" in value:  # peak RSS per configuration
            ratios, extra = value.get("peak_ratio", {}), value.get("growth_extra_mb", {})
            print(f"  memory ({value.get('unit', 'MiB')}), peak per configuration in a fresh process: " + ", ".join(
                f"{c} {r['peak_mb']:.0f}" + (f" (x {ratios[c]:.3f}, growth {extra[c]:+.1f})" if c in ratios else "")
                for c, r in value["configs"].items()))
        elif key == "kernels":  # GPU: kernels of one run per configuration and their GPU time
            print("  kernels a run: " + ", ".join(f"{c} {k['kernels']} ({k['gpu_ms']:.2f} ms of GPU time)"
                                                  for c, k in value.items()))
        elif key == "drift":  # the machine's speed during the run, common to every configuration
            print(f"  machine drift {value['drift']:+.1%} (first to last third of the rounds, every configuration "
                  f"alike: the per-round ratios cancel it); round noise {value['round_noise']:.1%}")
        elif key not in ("timings", "ratios", "verdicts", "samples"):
            print(f"  {key}: {value}")
