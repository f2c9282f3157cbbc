"""The benchmark machinery on synthetic timings and tiny models: rotation, paired ratios, a fair fitting cost,
and a compile benchmark that moves λ without recompiling. (Speed goals live in ``dsas bench``, not here.)"""

import pytest
import torch

from dsas_core.timing import Timing, drift, paired_ratios, rotate
from dsas_diffusion.bench import compile_overhead, unet_runner
from dsas_diffusion.bench_fit import _jobs
from dsas_diffusion.bench_hooks import hook_times
from tiny_diffusion import tiny_sd


def test_rotation_runs_a_warm_up_round_then_shifts_the_order_by_one_each_round():
    calls = []
    samples = rotate(lambda name: calls.append(name) or float(len(calls)), ["a", "b", "c"], repeats=2)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert samples == {"a": [6.0, 8.0], "b": [4.0, 9.0], "c": [5.0, 7.0]}


def test_paired_ratios_divide_round_by_round():
    fit = Timing.of("fit", [2.2, 3.3, 1.0])
    bare = Timing.of("bare", [2.0, 3.0, 1.0])
    r = paired_ratios(fit, bare)
    assert [round(r[k], 6) for k in ("median", "low", "high", "spread")] == [1.1, 1.0, 1.1, round(0.1 / 1.1, 6)]


def test_drift_is_the_common_slowdown_and_round_noise_what_the_rounds_leave_of_the_base():
    """Six rounds slowing 1.0 → 1.5 for every configuration alike; the base 2 % off its round's common time once."""
    common = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    base = [c * (1.02 if i == 3 else 1.0) for i, c in enumerate(common)]
    timings = {"unsteered": Timing.of("unsteered", base), "a": Timing.of("a", common),
               "b": Timing.of("b", [c * 1.01 for c in common])}
    d = drift(timings)
    assert round(d["drift"], 12) == round(1.45 / 1.05 - 1, 12)  # last two rounds' median over the first two's
    assert round(d["round_noise"], 12) == round((1.02 / 1.01 - 1.0) / 1.0, 12)
    assert round(timings["unsteered"].spread, 9) == round(0.5 / 1.263, 9)  # the base's own spread counts the drift


def test_fitting_and_its_bare_baseline_make_the_same_denoiser_calls_at_the_same_batch_size():
    pipe = tiny_sd()
    prompts = {k: [f"a {k} thing number {i}" for i in range(5)] for k in ("source", "target", "control")}
    batches: dict[str, list[int]] = {"bare": [], "fit": []}
    for job, run in _jobs(pipe, prompts, steps=3, side=None, batch_size=4, scaler="probe").items():
        hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs, job=job: batches[job].append(
            args[0].shape[0] if args else kwargs["sample"].shape[0]), with_kwargs=True)
        run()
        hook.remove()
    assert batches["fit"] == batches["bare"] == [8, 8, 8, 2, 2, 2] * 3  # CFG-doubled batches of 4, 4 and 1


def test_the_compile_benchmark_moves_strengths_without_recompiling():
    torch._dynamo.reset()
    unet = tiny_sd().unet
    out = compile_overhead(unet, lambda m: unet_runner(m, latent=8, batch=2, steps=2, text_tokens=16), repeats=1,
                           backend="eager")
    torch._dynamo.reset()
    assert out["recompiles"] == 0
    assert sorted(out["timings"]) == ["compiled", "compiled_dsas", "dsas", "unsteered"]
    assert sorted(out["ratios"]) == ["compiled_dsas", "dsas"]


def test_the_cpu_clock_counts_work_not_waiting():
    import time
    from contextlib import nullcontext

    from dsas_core.timing import interleaved

    for cpu, check in ((True, lambda t: t < 0.02), (False, lambda t: t >= 0.05)):
        timings = interleaved(lambda: time.sleep(0.05), {"sleep": nullcontext}, repeats=1, cpu_time=cpu)
        assert check(timings["sleep"].median)


def test_the_heap_allocator_serves_a_freed_large_block_again_without_page_faults():
    import subprocess
    import sys

    code = """
import resource, sys, torch
from dsas_core.timing import heap_malloc
if sys.argv[1] == "heap":
    assert heap_malloc().startswith("glibc heap only")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = torch.ones(16 * 2**20)  # 64 MiB
counts = []
for i in range(16):
    start = faults()
    b = a + 1  # a fresh 64 MiB result on every call, as a large layer makes
    del b
    counts.append(faults() - start)
print(min(counts[-3:]) if sys.argv[1] == "default" else sum(counts[-3:]))  # steady state: the last three calls
"""
    counts = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("heap", "default")}
    assert counts["default"] >= 16384 > 1000 > counts["heap"]  # 64 MiB is 16384 pages of 4 KiB: every call vs none


def test_a_repeat_is_the_fastest_of_its_back_to_back_runs_and_after_follows_each_run():
    import itertools
    import time
    from contextlib import nullcontext

    from dsas_core.timing import interleaved

    pauses = itertools.cycle([0.06, 0.02, 0.04])
    cleared = []
    timings = interleaved(lambda: time.sleep(next(pauses)), {"a": nullcontext}, repeats=2, best_of=3,
                          after=lambda ctx: cleared.append(ctx))
    assert len(cleared) == 9  # warm-up round + 2 rounds, 3 runs each
    assert all(0.02 <= t < 0.04 for t in timings["a"].samples)
    assert timings["a"].host is None  # issuing times are kept for GPU runs only


def test_the_issuing_time_stops_where_run_returns_and_the_wait_for_the_device_begins():
    import time

    from dsas_core.timing import _timed

    host: list[float] = []
    clock = iter([10.0, 10.5, 12.0]).__next__  # start, run() returned, after the (here empty) synchronisation
    assert _timed(lambda: None, clock, None, host) == 2.0 and host == [0.5]
    assert Timing.of("a", [3.0, 1.0, 2.0], host=[0.4, 0.2, 0.3]).host == 0.3
    assert _timed(lambda: time.sleep(0.01), time.perf_counter, None) >= 0.01  # no list: nothing kept


def test_the_median_interval_takes_the_binomial_ranks_and_the_paired_verdict_needs_all_of_it_in_budget():
    from dsas_core.timing import median_interval, paired_verdict

    values = [1.0 + i / 100 for i in (7, 3, 11, 0, 14, 5, 9, 1, 13, 2, 8, 12, 4, 10, 6)]  # 1.00 ... 1.14, shuffled
    low, high, coverage = median_interval(values)
    assert (round(low, 6), round(high, 6), round(coverage, 6)) == (1.03, 1.11, round(1 - 2 * 576 / 2**15, 6))
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0, 7.0, 6.0])[:2] == (1.0, 7.0)  # 7 values: the whole range
    intervals = ((0.99, 1.03), (1.02, 1.04), (1.031, 1.1))
    assert [paired_verdict({"ci_low": lo, "ci_high": hi}, 1.03) for lo, hi in intervals] == ["pass", "inconclusive", "fail"]


def test_the_memory_child_measures_peak_rss_from_before_the_runs_under_each_configuration():
    from dsas_diffusion.bench import steering_configs
    from dsas_diffusion.bench_memory import _child

    configs = ["unsteered", "lambda0", "plain", "dsas", "dsas_record", "dsas_prompt"]
    assert list(steering_configs(torch.nn.Identity(), None)) == configs
    r = _child("demo", "dsas_record", None, torch.get_num_threads())
    assert r["peak_mb"] >= r["start_mb"] > 100  # the demo pipeline's UNet is resident before the runs
    assert r["growth_mb"] == r["peak_mb"] - r["start_mb"]


def test_fresh_processes_run_each_call_apart_and_the_memory_report_compares_with_unsteered():
    import os

    from dsas_core.timing import in_fresh_processes, memory_report

    pids = in_fresh_processes(os.getpid, {"a": (), "b": ()})
    assert len({pids["a"], pids["b"], os.getpid()}) == 3
    runs = {"unsteered": {"peak_mb": 100.0, "growth_mb": 10.0}, "dsas": {"peak_mb": 105.0, "growth_mb": 14.5}}
    assert memory_report(runs)["peak_ratio"] == {"dsas": 1.05}
    assert memory_report(runs)["growth_extra_mb"] == {"dsas": 4.5}


def test_gpu_runs_keep_peak_memory_and_issuing_times_of_the_timed_rounds_only(monkeypatch):
    from contextlib import nullcontext

    from dsas_core import timing

    now = {"t": 0.0, "runs": 0}

    def run():  # the warm-up round (one run per configuration) takes 5 s to issue, later runs 1 s
        now["runs"] += 1
        now["t"] += 5.0 if now["runs"] <= 2 else 1.0

    monkeypatch.setattr(timing, "_sync", lambda device: now.update(t=now["t"] + 1.0))  # the device works 1 s more
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now["t"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20)
    timings = timing.interleaved(run, {"a": nullcontext, "b": nullcontext}, repeats=1, device=torch.device("cuda"))
    assert timings["a"].samples == [2.0] and timings["a"].host == 1.0  # the warm-up's 5 s left out
    assert timings["b"].peak_mb == 3.0


def test_hook_times_count_every_site_call_in_place_and_leave_no_hook_behind():
    unet = tiny_sd().unet
    out = hook_times(unet, unet_runner(unet, latent=8, batch=2, steps=2, text_tokens=16), repeats=2)
    per = out["per_hook"]
    assert sorted(per) == ["dsas", "dsas_prompt", "dsas_record", "lambda0", "plain"]  # GPU: also dsas_torch_ops
    assert out["sites"] > 0 and {h["calls_per_run"] for h in per.values()} == {2 * out["sites"]}
    assert all(0 < h["us_per_call"] and 0 < h["hooks_ms_per_run"] < h["run_ms"] for h in per.values())
    for h in per.values():  # the step tracking and check: one pair of calls per denoiser call, timed too
        assert 0 < h["other_hooks_ms_per_run"] < h["run_ms"] and h["dispatch_ms_per_run"] >= 0
        steering = h["hooks_ms_per_run"] + h["other_hooks_ms_per_run"] + h["dispatch_ms_per_run"]
        assert h["share"] == pytest.approx(steering / h["run_ms"], rel=1e-12)
        assert h["ratio"] == pytest.approx(h["run_ms"] / (h["run_ms"] - steering), rel=1e-12)
        assert h["within"] == (h["ratio"] <= h["limit"])
    assert [per[n]["limit"] for n in ("lambda0", "plain", "dsas", "dsas_record", "dsas_prompt")] == [
        1.01, 1.03, 1.03, 1.10, 1.03]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def test_bad_arguments_are_refused_before_any_benchmark_runs(tmp_path, capsys):
    from dsas_core.cli import main

    cases = {
        ("--only", ","): "--only ',' names no benchmark",
        ("--only", "demo", "--repeats", "1"): "--repeats must be >= 2",
        ("--only", "demo", "--best-of", "0"): "--best-of must be >= 1, got 0.",
        ("--only", "demo", "--latent", "0"): "--latent must be a positive latent side",
        ("--only", "demo", "--device", "tpu"): "--device 'tpu' is not a device",
        ("--only", "demo", "--json", str(tmp_path / "no" / "b.json")): f"the folder '{tmp_path / 'no'}' does not exist",
    }
    for args, message in cases.items():
        assert main(["bench", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dsas bench: error: ") and message in err, (args, err)
    assert capsys.readouterr().out == ""  # nothing ran


def test_the_hook_timing_attaches_each_configuration_once_a_round_in_turn_and_reports_first_calls_apart():
    from dsas_core.hook_timing import steering_times
    from dsas_core.hooks import Site, attach
    from fused_helpers import C, Source, concept

    model, handles = Source(torch.randn(2, 6, C)), []

    def make(**kwargs):
        return lambda: handles.append(attach([Site("s", model, None, "tokens")], {concept(): 1.0}, **kwargs)) or handles[-1]

    out = steering_times(torch.no_grad()(model), {"dsas": make(), "record": make(record_alpha=True)}, sites=1, repeats=3)
    assert len(handles) == 6 and all(not h.attached and h.records == [] for h in handles)  # α kept per run only
    # attached once a round, the configurations in turn, the order rotating: (record, dsas), (dsas, record), ...
    assert [h.record_alpha for h in handles] == [True, False, False, True, True, False]
    for row in out["per_hook"].values():
        assert row["calls_per_run"] == 1 and row["us_first_call"] > 0
        assert row["first_calls_ms"] == pytest.approx((row["us_first_call"] - row["us_per_call"]) / 1e3, rel=1e-9)
