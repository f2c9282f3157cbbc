"""The Gradio app driven through gradio_client: strengths, fitting, uploads, path safety, concurrency."""

import json
import threading
import time

import pytest
from gradio_client import Client, handle_file
from PIL import Image, ImageChops

from app_harness import launch, upload_renamed
from dsas_diffusion.demo import load_demo_pipeline

SRC = "\n".join(f"a red {s} on a {b} background" for s in ("circle", "square", "triangle") for b in ("white", "black", "gray"))
TGT = "\n".join(f"a blue {s} on a {b} background" for s in ("circle", "square", "triangle") for b in ("white", "black", "gray"))
CTL = "\n".join(f"a {c} {s} on a {b} background" for c in ("green", "yellow") for s in ("circle", "square") for b in ("white", "black"))
PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    blocks, studio, url = launch({"demo": load_demo_pipeline}, root / "concepts")
    client = Client(url, verbose=False)
    fitted = client.predict("demo", SRC, TGT, CTL, "red-to-blue", "mean_shift", "probe", "a red shape",
                            "a blue shape", api_name="/fit")
    yield client, studio, fitted, root
    blocks.close()


def generate(client, strengths, seed=0, mode="DSAS"):
    return client.predict("demo", PROMPT, "", seed, 12, 5.0, mode, json.dumps(strengths), api_name="/generate")


def same(a, b):
    return ImageChops.difference(Image.open(a).convert("RGB"), Image.open(b).convert("RGB")).getbbox() is None


def test_a_concept_fitted_from_three_short_prompt_lists_appears(served):
    client, studio, (message, files), _ = served
    assert "Fitted **red-to-blue**" in message
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["dsas_config.json", "dsas_model.safetensors"]
    assert studio.registry.names() == ["red-to-blue"]


def test_two_strengths_give_different_steered_and_identical_unsteered_images(served):
    client = served[0]
    plain_a, steered_a, heat_a = generate(client, {"red-to-blue": 1.5})
    plain_b, steered_b, _ = generate(client, {"red-to-blue": 0.3})
    assert same(plain_a, plain_b)
    assert not same(steered_a, steered_b)
    assert Image.open(steered_a).format == "PNG" and Image.open(heat_a).size == Image.open(steered_a).size


def test_a_strength_beyond_the_slider_range_is_refused_through_the_api(served):
    generate(served[0], {"red-to-blue": -16})
    with pytest.raises(Exception, match="between -16 and 16, got 16.5"):
        generate(served[0], {"red-to-blue": 16.5})


def test_a_path_instead_of_a_concept_name_is_refused_through_the_api(served):
    client = served[0]
    for name in ("../../etc/passwd", "/tmp", "concepts/red-to-blue"):
        with pytest.raises(Exception, match="unknown concept"):
            generate(client, {name: 1.0})
        with pytest.raises(Exception, match="unknown concept|not in the list of choices"):
            client.predict(name, api_name="/download")


def test_uploading_a_non_safetensors_file_is_refused(served):
    client, _, _, root = served
    bad = root / "evil.pt"
    bad.write_bytes(b"\x80\x04not a concept")
    with pytest.raises(Exception, match="Invalid file type|Other file types are refused"):
        client.predict("demo", [handle_file(str(bad))], api_name="/upload")
    fake = root / "dsas_model.safetensors"
    fake.write_bytes(b"\x80\x04pickled, not safetensors")
    (root / "dsas_config.json").write_text("{}")
    with pytest.raises(Exception, match="not a valid dsas concept"):
        client.predict("demo", [handle_file(str(root / "dsas_config.json")), handle_file(str(fake))],
                       api_name="/upload")


def test_uploading_a_concept_for_another_model_is_refused(served, tmp_path):
    from tiny_diffusion import tiny_sd

    from dsas_diffusion import fit_concept

    things = ["cat", "dog", "house", "tree"]
    other = fit_concept(tiny_sd(), [f"a banana and a {t}" for t in things], [f"a pear and a {t}" for t in things],
                        [f"a photo of a {t}" for t in things], name="foreign", num_inference_steps=2, progress=False)
    other.save_pretrained(tmp_path / "foreign")
    files = [handle_file(str(tmp_path / "foreign" / n)) for n in ("dsas_config.json", "dsas_model.safetensors")]
    with pytest.raises(Exception, match="fit the concept again on this model|fitted on another model"):
        served[0].predict("demo", files, api_name="/upload")


def test_a_valid_upload_is_added_under_its_own_name(served, tmp_path):
    client, studio, (_, files), _ = served
    message = upload_renamed(client, files, "copy", tmp_path)
    assert message == "Added **copy**; its slider is on the Steer tab."
    assert "copy" in studio.registry.names()


def test_overlapping_requests_with_different_strengths_match_sequential_ones(served):
    client, studio, _, _ = served
    spans, lock = [], threading.Lock()
    original = studio._run

    def timed(pipe, req):
        steered = any(m._forward_hooks for m in pipe.unet.modules())  # this copy carries steering hooks now
        start = time.perf_counter()
        out = original(pipe, req)
        with lock:
            spans.append((start, time.perf_counter(), steered))
        return out

    studio._run = timed
    try:
        jobs = [client.submit("demo", PROMPT, "", 7, 12, 5.0, "DSAS", json.dumps({"red-to-blue": s}),
                              api_name="/generate") for s in (1.5, -1.0)]
        together = [job.result() for job in jobs]
    finally:
        studio._run = original
    steered = sorted((s for s in spans if s[2]), key=lambda s: s[0])
    assert len(steered) == 2 and steered[1][0] < steered[0][1]  # the second started before the first ended
    alone = [generate(client, {"red-to-blue": s}, seed=7) for s in (1.5, -1.0)]
    assert all(same(t[1], a[1]) for t, a in zip(together, alone))
    assert not same(together[0][1], together[1][1])


def test_an_empty_seed_is_refused_with_the_reason(served):
    with pytest.raises(Exception, match="the seed box is empty"):
        served[0].predict("demo", PROMPT, "", None, 12, 5.0, "DSAS", "{}", api_name="/generate")


def test_a_bundled_concept_name_is_refused_for_a_new_concept(tmp_path):
    from dsas_diffusion.studio import ConceptRegistry

    bundled = tmp_path / "bundled"
    (bundled / "taken").mkdir(parents=True)
    (bundled / "taken" / "dsas_config.json").write_text("{}")
    registry = ConceptRegistry([bundled], tmp_path / "user")
    assert registry.check_new_name("mine") is False
    with pytest.raises(Exception, match="'taken' is the name of a bundled example concept"):
        registry.check_new_name("taken")
    (tmp_path / "user" / "mine").mkdir()
    (tmp_path / "user" / "mine" / "dsas_config.json").write_text("{}")
    assert registry.check_new_name("mine") is True  # a user concept: saving replaces it


def test_prompt_words_name_their_concept(tmp_path):
    from dsas_core.paths import assets_dir
    from dsas_diffusion.studio import ConceptRegistry, Request, Studio

    studio = Studio({"demo": load_demo_pipeline}, ConceptRegistry([assets_dir() / "concepts"], tmp_path), workers=1)
    result = studio.steered(Request(model="demo", prompt=PROMPT, steps=4,
                                    strengths={"circles-on-black": 3.0, "no-green": 2.0}))
    assert [c for c, _, _ in result.words] == ["circles-on-black"] * 7 + ["no-green"] * 7  # both prompt scalers
    ours = {w.replace("</w>", ""): a for c, w, a in result.words if c == "circles-on-black"}
    assert max(ours, key=ours.get) == "circle" and ours["circle"] > 0.5


def test_an_image_evaluation_shows_dsas_keeping_the_control_images_plain_steering_changes(tmp_path):
    from app_widgets import bundled_prompts
    from dsas_core import DsasError
    from dsas_core.paths import assets_dir
    from dsas_diffusion.studio import ConceptRegistry, Studio

    studio = Studio({"demo": load_demo_pipeline}, ConceptRegistry([assets_dir() / "concepts"], tmp_path), workers=1)
    steer, control = (bundled_prompts(f"circles-on-black/eval_{k}.txt", 4) for k in ("steer", "control"))
    run = studio.evaluate("demo", "circles-on-black", steer, control, "0,3", steps=10, clip="demo",
                          oracle="background=black")
    oracle = run.curves["oracle"]
    # every steer image reaches the black background both ways; DSAS keeps 3 of 4 control images, plain none
    assert [(p["concept"], p["preservation"]) for p in oracle["dsas"]] == [(0.0, 1.0), (1.0, 0.75)]
    assert [(p["concept"], p["preservation"]) for p in oracle["plain"]] == [(0.0, 1.0), (1.0, 0.0)]
    assert run.verdicts[0] == ("[oracle] mean preservation gain at matched concept score: +0.750; DSAS reach at "
                               ">=95% preserved: 0.00 of plain's best concept score")
    assert run.verdicts[1].startswith("[clip] ")
    assert [f.rsplit("/", 1)[1] for f in run.files] == ["pareto.png", "grid.png", "results.csv", "results.json"]
    with pytest.raises(DsasError, match=r"scorer 'ViT-B-32:/tmp/weights.pt' is not offered here: choose one of "
                                        r"\['demo', 'ViT-L-14:openai'\]"):  # never a path a caller makes up
        studio.evaluate("demo", "circles-on-black", steer, control, "0,3", clip="ViT-B-32:/tmp/weights.pt")
    with pytest.raises(DsasError, match="nothing to score"):
        studio.evaluate("demo", "circles-on-black", steer, control, "0,3")
    with pytest.raises(DsasError, match="no control prompts"):
        studio.evaluate("demo", "circles-on-black", steer, "# none", "0,3", oracle="background=black")
    with pytest.raises(DsasError, match="fitted on a LlamaForCausalLM"):
        studio.evaluate("demo", "detox", steer, control, "0,3", oracle="background=black")


def test_the_api_evaluates_an_image_concept(served):
    client = served[0]
    steer, control = "a red circle on a white background\na red square on a black background", \
        "a green circle on a white background\na yellow square on a black background"
    verdict, plot, grid, table, files = client.predict("demo", "red-to-blue", steer, control, "0,8", 1, 4, "none",
                                                       "colour=blue", api_name="/evaluate")
    assert verdict.startswith("[oracle] mean preservation gain at matched concept score: ")
    assert plot.endswith(".png") and grid.endswith(".png")
    assert [r[:3] for r in table["data"]] == [["oracle", "dsas", 0], ["oracle", "dsas", 8], ["oracle", "plain", 0],
                                              ["oracle", "plain", 8]]
    assert [f.rsplit("/", 1)[1] for f in files] == ["pareto.png", "grid.png", "results.csv", "results.json"]


def test_a_strength_sweep_draws_dsas_above_plain_steering(tmp_path):
    import numpy as np

    from dsas_core import DsasError
    from dsas_core.paths import assets_dir
    from dsas_diffusion.studio import SWEEP_CELL, ConceptRegistry, Request, Studio

    studio = Studio({"demo": load_demo_pipeline}, ConceptRegistry([assets_dir() / "concepts"], tmp_path), workers=1)
    req = Request(model="demo", prompt="a blue square on a yellow background", steps=6,
                  strengths={"circles-on-black": 1.0, "no-green": 0.0})
    grid = np.asarray(studio.sweep(req, "2,0,1"), dtype=np.int16)
    band, margin = grid.shape[0] - 2 * SWEEP_CELL, grid.shape[1] - 3 * SWEEP_CELL
    assert band > 0 and margin > 0
    cells = [[grid[band + r * SWEEP_CELL: band + (r + 1) * SWEEP_CELL, margin + c * SWEEP_CELL:
                   margin + (c + 1) * SWEEP_CELL] for c in range(3)] for r in range(2)]
    unsteered = np.asarray(studio.unsteered(req).resize((SWEEP_CELL, SWEEP_CELL), Image.NEAREST), dtype=np.int16)
    assert np.array_equal(cells[0][0], unsteered) and np.array_equal(cells[1][0], unsteered)
    dsas = max(np.abs(cells[0][c] - unsteered).mean() for c in (1, 2))
    plain = min(np.abs(cells[1][c] - unsteered).mean() for c in (1, 2))
    assert plain > 4 * dsas  # a square: DSAS leaves it, plain steering paints the background over
    for strengths, values, said in (({"no-green": 0.0}, "0,1", "every strength is 0"),
                                    ({"circles-on-black": 9.0}, "0,2", "between -16 and 16, got 18"),
                                    ({"circles-on-black": 1.0}, "0", "holds no strength but 0")):
        with pytest.raises(DsasError, match=said):
            studio.sweep(Request(model="demo", prompt="a square", strengths=strengths), values)


def test_the_api_sweeps_strengths(served):
    client = served[0]
    grid = client.predict("demo", PROMPT, "", 0, 4, 5.0, "DSAS", json.dumps({"red-to-blue": 1.0}), "0,2",
                          api_name="/sweep")
    from dsas_diffusion.studio import SWEEP_CELL

    width, height = Image.open(grid).size
    assert width > 2 * SWEEP_CELL and height > 2 * SWEEP_CELL
    with pytest.raises(Exception, match="every strength is 0"):
        client.predict("demo", PROMPT, "", 0, 4, 5.0, "DSAS", json.dumps({"red-to-blue": 0}), "0,2",
                       api_name="/sweep")
