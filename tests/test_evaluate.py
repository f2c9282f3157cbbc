"""Evaluation: scores on known images, the results schema, Pareto comparison, and a 2-process split."""

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dsas_core import DsasError
from dsas_diffusion import fit_concept
from dsas_diffusion.demo.world import Scene, render
from dsas_diffusion.evaluate import FIELDS, EvalSettings, compare, summarize, sweep, write_results
from dsas_diffusion.scoring import OracleTarget, read_attributes, unchanged_fraction
from tiny_diffusion import tiny_sd

RED_CIRCLE = Image.fromarray(render(Scene("red", "circle", "white", 16.0, 16.0, 8.0)))
BLUE_SQUARE = Image.fromarray(render(Scene("blue", "square", "black", 15.0, 17.0, 7.0)))
THINGS = ["cat", "dog", "house", "tree", "car", "boat"]
SRC = [f"a ripe yellow banana fruit beside a {t}" for t in THINGS]
TGT = [f"a ripe green pear fruit beside a {t}" for t in THINGS]
CTL = [f"a plain photo of a {t} at night" for t in THINGS]


def test_a_rendered_red_circle_reads_as_red_and_meets_only_red_targets():
    assert read_attributes(RED_CIRCLE) == ("red", "circle", "white")
    assert OracleTarget.parse("colour=red").hit(read_attributes(RED_CIRCLE))
    assert not OracleTarget.parse("colour!=red").hit(read_attributes(RED_CIRCLE))
    assert OracleTarget.parse("background=black").hit(read_attributes(BLUE_SQUARE))


def test_unchanged_fraction_counts_equal_attributes():
    assert unchanged_fraction(("red", "circle", "white"), ("red", "square", "white")) == pytest.approx(2 / 3)


def test_a_malformed_oracle_target_is_refused():
    with pytest.raises(DsasError, match="ATTRIBUTE=VALUE"):
        OracleTarget.parse("hue=blue")


def test_demo_clip_scores_a_red_circle_as_red_rather_than_blue():
    from dsas_diffusion.scoring import load_clip

    clip = load_clip("demo")
    emb = clip.images([RED_CIRCLE, BLUE_SQUARE])
    p_blue = clip.zero_shot(emb, "a red shape", "a blue shape")
    assert p_blue[0].item() < 0.5 < p_blue[1].item()


def test_a_clip_that_will_not_load_says_what_to_give_instead(tmp_path):
    from dsas_diffusion.scoring import load_clip

    missing = tmp_path / "weights.bin"
    with pytest.raises(DsasError) as err:
        load_clip(f"ViT-B-32:{missing}")
    first, fix = str(err.value).split("\n")
    assert first.startswith(f"could not load CLIP 'ViT-B-32:{missing}': ")
    assert fix.startswith("Give an open_clip ARCH:PRETRAINED you can download (e.g. ViT-L-14:openai), "
                          "ARCH:/path/to/weights, or 'demo' for the bundled world")


def points(*rows):
    """A curve for compare(): (strength, concept, preservation) per point."""
    return [{"strength": s, "concept": c, "preservation": p} for s, c, p in rows]


def test_matched_concept_comparison_interpolates_along_strength():
    curves = {"plain": points((0, 0.0, 1.0), (1, 0.5, 0.6), (2, 1.0, 0.2)), "dsas": points((0, 0.0, 1.0), (1, 1.0, 0.96))}
    cmp = compare(curves)
    assert [round(g["gain"], 6) for g in cmp["matched"]] == [0.38, 0.76]
    assert cmp["dsas_reach_ratio"] == 1.0


def test_plain_points_without_concept_change_are_not_matched():
    curves = {"plain": points((0, 0.1, 1.0), (1, 0.1, 0.3), (2, 0.05, 0.1)), "dsas": points((0, 0.1, 1.0), (1, 0.1, 1.0))}
    cmp = compare(curves)
    assert cmp["matched"] == [] and math.isnan(cmp["mean_gain_at_matched_concept"])


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pipe = tiny_sd()
    concept = fit_concept(pipe, SRC, TGT, CTL, name="pear", num_inference_steps=2, progress=False)
    pipe.save_pretrained(root / "pipe")
    concept.save_pretrained(root / "pear")
    (root / "steer.txt").write_text("\n".join(SRC[:4]))
    (root / "control.txt").write_text("\n".join(CTL[:4]))
    return root, pipe, concept


def test_results_files_follow_the_schema(tiny_eval, tmp_path):
    _, pipe, concept = tiny_eval
    settings = EvalSettings(strengths=[0.0, 2.0], steps=2, oracle="colour=blue", batch_size=4)
    rows, _ = sweep(pipe, concept, SRC[:2], CTL[:2], settings, progress=False)
    assert len(rows) == 4 * 3  # 4 prompts x (unsteered, plain, dsas)
    write_results(tmp_path, rows, {"concept": "pear"})
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == FIELDS and len(table) == 12
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["concept"] == "pear" and len(data["rows"]) == 12
    curves = summarize(rows, "oracle_hit", "oracle_unchanged")
    assert [p["strength"] for p in curves["dsas"]] == [0.0, 2.0]
    assert curves["plain"][0]["preservation"] == 1.0


def _run_eval(root, out, launcher):
    cmd = [*launcher, "-m", "dsas_core.cli", "eval", "--model", str(root / "pipe"), "--concept", str(root / "pear"),
           "--steer-prompts", str(root / "steer.txt"), "--control-prompts", str(root / "control.txt"),
           "--strengths", "0,2", "--steps", "2", "--batch-size", "1", "--oracle", "colour=blue", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_two_processes_split_the_prompts_and_merge_to_the_single_process_result(tiny_eval, tmp_path):
    root = tiny_eval[0]
    with socket.socket() as free:  # a port nothing else listens on (a fixed one may still be held by another run)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    two = _run_eval(root, tmp_path / "two", torchrun)
    one = _run_eval(root, tmp_path / "one", [sys.executable])
    assert two["processes"] == 2 and one["processes"] == 1
    by_proc = {p: {(r["set"], r["prompt_index"]) for r in two["rows"] if r["process"] == p} for p in (0, 1)}
    assert by_proc[0] and by_proc[1] and not by_proc[0] & by_proc[1]
    assert by_proc[0] | by_proc[1] == {(s, i) for s in ("steer", "control") for i in range(4)}

    def key(rows):
        return sorted((r["method"], r["strength"], r["set"], r["prompt_index"], r["seed"], r["image_digest"],
                       r["oracle_hit"], r["oracle_unchanged"]) for r in rows)

    assert key(two["rows"]) == key(one["rows"])
    assert len({r["image_digest"] for r in one["rows"]}) > 8  # the images really differ between rows
    assert Path(tmp_path / "two" / "pareto.png").stat().st_size > 0
