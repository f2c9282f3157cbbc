"""The LLM throughput benchmark's verdicts and its worst-case concept, on synthetic timings and a tiny model."""

import pytest

from dsas_core.timing import Timing
from dsas_transformers.bench import bench_concept, compiled_tokens_per_second, generate_runner, hook_times, report
from dsas_transformers.testing import tiny_model


def timing(name, median, spread=0.01):
    """Seven rounds whose times drift evenly by ``spread`` around ``median``, in the same order for every name."""
    return Timing.of(name, [median * (1 + spread * (i / 6 - 0.5)) for i in (3, 0, 6, 1, 5, 2, 4)])


@pytest.mark.parametrize("dsas, base_spread, verdict, paired", [(1.02, 0.01, "pass", "pass"),
                                                                (1.05, 0.01, "fail", "fail"),
                                                                (1.02, 0.05, "inconclusive", "pass")])
def test_dsas_must_keep_97_percent_of_the_unsteered_tokens_per_second(dsas, base_spread, verdict, paired):
    out = report({"unsteered": timing("unsteered", 1.0, base_spread), "dsas": timing("dsas", dsas, base_spread)},
                 new_tokens=32)
    assert out["verdicts"]["dsas"]["verdict"] == verdict
    assert out["verdicts"]["dsas"]["paired_verdict"] == paired  # the drift is shared by both: each round's ratio is dsas
    assert out["verdicts"]["dsas"]["limit"] == pytest.approx(1 / 0.97)
    assert out["tokens_per_second"]["unsteered"] == pytest.approx(32.0)
    assert out["tokens_per_second_ratio"]["dsas"] == pytest.approx(1 / dsas)


def test_the_bench_concept_steers_every_layer_with_no_site_gated_off():
    model = tiny_model("llama", 64, hidden=32, layers=3)
    concept = bench_concept(model)
    assert concept.config.sites == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert sum(s.scaler.gated for s in concept.sites.values()) == 0
    generate_runner(model, new_tokens=4)()  # runs: 4 greedy tokens, KV cache on


def test_the_compiled_generation_benchmark_moves_strengths_without_recompiling():
    import torch

    torch._dynamo.reset()
    out = compiled_tokens_per_second(repeats=1, new_tokens=3, model=tiny_model("llama", 64, hidden=32, layers=2),
                                     backend="eager")
    torch._dynamo.reset()
    assert out["graphs"] >= 2 and out["recompiles"] == 0  # both copies' decoding compiled, λ moved every run
    assert sorted(out["timings"]) == ["compiled", "compiled_dsas", "dsas", "unsteered"]
    assert sorted(out["verdicts"]) == ["compiled_dsas", "dsas"]
    assert out["verdicts"]["compiled_dsas"]["criterion"] == "tokens/s >= 0.97 x compiled"
    assert out["mode"] == "default"


def test_the_hook_benchmark_times_every_layer_call_of_a_generation_and_the_hooks_around_each_forward():
    model = tiny_model("llama", 64, hidden=32, layers=3)
    out = hook_times(repeats=2, new_tokens=4, model=model)
    per = out["per_hook"]
    assert sorted(per) == ["dsas", "lambda0"] and out["sites"] == 3
    assert per["lambda0"]["limit"] == 1.01 and per["dsas"]["limit"] == pytest.approx(1 / 0.97)
    assert {h["calls_per_run"] for h in per.values()} == {3 * 4}  # 3 layers, 4 forwards (prompt + 3 new tokens)
    for h in per.values():
        assert 0 < h["hooks_ms_per_run"] and 0 < h["other_hooks_ms_per_run"] and h["share"] < 1
        steering = h["hooks_ms_per_run"] + h["other_hooks_ms_per_run"] + h["dispatch_ms_per_run"]
        assert h["ratio"] == pytest.approx(h["run_ms"] / (h["run_ms"] - steering), rel=1e-12)
        assert h["within"] == (h["ratio"] <= h["limit"])
        hooked = h["calls_per_run"] + 2 * 4  # each forward also runs the step hook before and the check after
        assert h["dispatch_ms_per_run"] == pytest.approx(out["dispatch_us"] * hooked / 1e3, rel=1e-12)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
