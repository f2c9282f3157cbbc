"""`dsas fit`, `dsas generate`, `dsas inspect` and `dsas sites` end to end on a local tiny pipeline folder."""

import numpy as np
import pytest
from PIL import Image

from dsas_core.cli import main, parse_concept_arg
from dsas_core.errors import loading_failed
from dsas_diffusion.loading import read_prompts
from tiny_diffusion import tiny_sd

THINGS = ["cat", "dog", "house", "tree", "car", "boat", "chair", "lamp"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_sd().save_pretrained(root / "pipe")
    for name, fmt in (("src", "a ripe yellow banana fruit beside a {}"), ("tgt", "a ripe green pear fruit beside a {}"),
                      ("ctl", "a plain photo of a {} at night")):
        (root / f"{name}.txt").write_text("# prompts\n\n" + "\n".join(fmt.format(t) for t in THINGS) + "\n")
    return root


def test_fit_then_inspect_then_generate_with_an_alpha_map(workdir, capsys):
    w = workdir
    assert main(["fit", "--model", str(w / "pipe"), "--source", str(w / "src.txt"), "--target", str(w / "tgt.txt"),
                 "--control", str(w / "ctl.txt"), "--steps", "2", "--out", str(w / "pear")]) == 0
    assert "saved 'pear'" in capsys.readouterr().out
    assert main(["inspect", str(w / "pear")]) == 0
    assert "sites       14" in capsys.readouterr().out
    args = ["generate", "--model", str(w / "pipe"), "--prompt", "a ripe yellow banana fruit beside a cup",
            "--steps", "2", "--height", "16", "--width", "16"]
    assert main(args + ["--out", str(w / "plain.png")]) == 0
    assert main(args + ["--concept", f"{w / 'pear'}=4", "--out", str(w / "steered.png"),
                        "--alpha-map", str(w / "alpha.png"), "--compare", str(w / "both.png")]) == 0
    plain, steered = (np.asarray(Image.open(w / f"{n}.png")) for n in ("plain", "steered"))
    both = np.asarray(Image.open(w / "both.png"))
    assert plain.shape == (16, 16, 3) and both.shape == (16, 32, 3)
    assert np.array_equal(both[:, :16], plain) and np.array_equal(both[:, 16:], steered)
    assert np.abs(plain.astype(int) - steered.astype(int)).max() > 0
    assert Image.open(w / "alpha.png").size == (16, 16)


def test_fit_passes_the_scaler_components_on(workdir):
    w = workdir
    assert main(["fit", "--model", str(w / "pipe"), "--source", str(w / "src.txt"), "--target", str(w / "tgt.txt"),
                 "--control", str(w / "ctl.txt"), "--steps", "2", "--scaler", "probe", "--components", "3", "--out", str(w / "pear3")]) == 0
    from dsas_core import Concept

    concept = Concept.from_pretrained(w / "pear3")
    assert concept.config.n_components == 3
    assert {s.scaler.components.shape[0] for s in concept.sites.values()} == {3}


def test_sites_lists_every_attention_output_with_its_width(workdir, capsys):
    assert main(["sites", str(workdir / "pipe"), "--match", "attn2"]) == 0
    out = capsys.readouterr().out
    assert "UNet2DConditionModel: 7 sites" in out
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2" in out and "width    32" in out


def test_a_missing_prompt_file_exits_2_with_the_reason(workdir, capsys):
    assert main(["fit", "--model", str(workdir / "pipe"), "--source", str(workdir / "nope.txt"), "--target",
                 str(workdir / "tgt.txt"), "--control", str(workdir / "ctl.txt"), "--out", str(workdir / "x")]) == 2
    assert "source file" in capsys.readouterr().err


def test_a_hub_id_that_will_not_load_says_what_to_give_and_that_the_hub_is_off(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sites", "nobody/no-such-pipeline"]) == 2
    first, fix = capsys.readouterr().err.rstrip("\n").split("\n")[-2:]
    assert first.startswith("dsas sites: error: could not load the pipeline 'nobody/no-such-pipeline': ")
    assert "stacktrace" not in first
    assert fix == ("Give 'demo', a hub id you can reach (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local "
                   "diffusers folder holding model_index.json (HF_HUB_OFFLINE is set: only models already in the "
                   "local cache load).")


def test_loading_errors_name_the_hub_only_where_it_is_off(monkeypatch):
    err = OSError("no such model. Please check out the root cause in the stacktrace above.")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert str(loading_failed("model 'x/y'", err, "Give another")) == ("could not load model 'x/y': no such model.\n"
                                                                       "Give another.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert str(loading_failed("model 'x/y'", err, "Give another")).endswith("\nGive another.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert str(loading_failed("model 'x/y'", err, "Give another")).endswith(
        "\nGive another (HF_HUB_OFFLINE is set: only models already in the local cache load).")


def test_generate_refuses_an_image_side_the_pipeline_cannot_make(workdir, capsys):
    out = workdir / "odd.png"
    assert main(["generate", "--model", str(workdir / "pipe"), "--prompt", "a cup", "--steps", "1", "--height", "14",
                 "--out", str(out)]) == 2  # a multiple of the tiny VAE's 2, not of the 8 SD pipelines want
    err = capsys.readouterr().err
    assert "height=14: image sides of StableDiffusionPipeline must be positive multiples of 8" in err
    assert not out.exists()


def test_prompt_files_skip_comments_and_blank_lines(tmp_path):
    (tmp_path / "p.txt").write_text("# a comment\n\n a red circle \n#x\na blue square\n")
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]


def test_concept_arguments_parse_an_optional_strength():
    assert parse_concept_arg("concepts/pear=0.5") == ("concepts/pear", 0.5)
    assert parse_concept_arg("concepts/pear") == ("concepts/pear", 1.0)


def test_output_paths_are_checked_before_the_pipeline_loads(tmp_path, capsys):
    assert main(["generate", "--model", "demo", "--prompt", "x", "--out", str(tmp_path / "no" / "x.png")]) == 2
    assert f"--out '{tmp_path / 'no' / 'x.png'}': the folder '{tmp_path / 'no'}' does not exist" in capsys.readouterr().err
    assert main(["generate", "--model", "demo", "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert f"--out '{tmp_path}' is a folder: give a file path." in capsys.readouterr().err
